"""Small generated photos for the image, encoder and ingest tests (no sample photos copied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def noise_jpeg(path: Path, seed: int, size: tuple[int, int] = (96, 64)) -> Path:
    """A random-noise-plus-gradient RGB JPEG, different for every seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    gradient = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    tint = rng.uniform(0, 255, 3).astype(np.float32)[None, None, :]
    noise = rng.uniform(-60, 60, (h, w, 3)).astype(np.float32)
    arr = np.clip(0.4 * gradient + 0.6 * tint + noise, 0, 255).astype(np.uint8)
    Image.fromarray(arr, "RGB").save(path, "JPEG", quality=90)
    return path


def cmyk_jpeg(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A CMYK JPEG of pure red (C=0, M=100%, Y=100%, K=0)."""
    Image.new("CMYK", size, (0, 255, 255, 0)).save(path, "JPEG", quality=95)
    return path


def grey16_png(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A 16-bit greyscale PNG (mode I;16): a ramp over the full 0..65535 range."""
    w, h = size
    arr = np.linspace(0, 65535, w * h).reshape(h, w).astype(np.uint16)
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    im.save(path, "PNG")
    return path


def grey16_tiff_big_endian(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A 16-bit big-endian greyscale TIFF (mode I;16B), the same ramp as ``grey16_png``."""
    w, h = size
    arr = np.linspace(0, 65535, w * h).reshape(h, w).astype(">u2")
    Image.frombytes("I;16B", (w, h), arr.tobytes()).save(path, "TIFF")
    return path


def rgba_png(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """Left half opaque blue, right half fully transparent (colour underneath: black)."""
    w, h = size
    arr = np.zeros((h, w, 4), np.uint8)
    arr[:, : w // 2] = (0, 0, 255, 255)
    arr[:, w // 2 :] = (0, 0, 0, 0)
    Image.fromarray(arr, "RGBA").save(path, "PNG")
    return path


def bomb_png(path: Path, side: int = 10_000) -> Path:
    """A ``side`` x ``side`` black 'L' PNG: a few hundred KB on disk, side**2 pixels decoded."""
    Image.new("L", (side, side)).save(path, "PNG")
    return path


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = (value - degrees - minutes / 60) * 3600
    return IFDRational(degrees, 1), IFDRational(minutes, 1), IFDRational(round(seconds * 10000), 10000)


def gps_exif(lat: float, lon: float) -> Image.Exif:
    exif = Image.Exif()
    exif[GPS_IFD] = {
        1: "N" if lat >= 0 else "S",
        2: _dms(lat),
        3: "E" if lon >= 0 else "W",
        4: _dms(lon),
    }
    return exif


def gps_jpeg(path: Path, lat: float, lon: float, seed: int = 0) -> Path:
    """A noise JPEG whose EXIF GPS block says (lat, lon)."""
    noise_jpeg(path, seed)
    with Image.open(path) as im:
        im.load()
        im.save(path, "JPEG", quality=90, exif=gps_exif(lat, lon))
    return path


TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def tiny_clip_dir(path, projection_dim: int, seed: int = 0, image_size: int = 32, patch_size: int = 8):
    """save_pretrained() of a randomly initialised, tiny, full CLIPModel (text + vision).

    ``image_size=224, patch_size=14, projection_dim=768`` gives the shape GeoCLIP's head
    requires of ViT-L/14 (only the depth and width are tiny).
    """
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            TINY, vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(TINY, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )
    import torch

    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(path)
    return path


def scene_jpeg(path: Path, seed: int, size: tuple[int, int] = (160, 120)) -> Path:
    """A coarse random 'scene' (blocks of colour, stripes, a disc), different for every seed.

    Unlike ``noise_jpeg``, whose images all look alike to an image encoder (cosine ~0.98),
    two scenes are as far apart as two distinct real photos: a gallery of them has
    neighbours that are not near-copies.
    """
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    grid = rng.uniform(0, 255, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.uint8)
    im = Image.fromarray(grid, "RGB").resize(size, Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 8))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = int(rng.integers(0, w)), int(rng.integers(0, h))
        draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 12)))
    cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(8, 40))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    im.save(path, "JPEG", quality=90)
    return path
