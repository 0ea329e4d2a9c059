"""Decoding and cropping photos for an encoder, without torch: what ingest's worker processes run.

A ``Transform`` is split in two so that the expensive, per-photo half (decode, resize,
crop) runs in worker processes on 8-bit pixels, and the cheap, per-batch half (scale
and normalise) runs on the encoder's device::

    pixels = transform.crop(image)          # uint8 (size, size, 3), in a worker
    batch = transform.normalise(uint8_nhwc)  # float (n, 3, size, size), on the device

``transform(image)`` does both for one photo. This module imports numpy and PIL only
(torch lazily, in ``normalise``): a spawned worker starts in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import ImageError
from .images import bound_aspect, load_image, read_exif_gps
from .sources import Record, Skip
from .store import file_sha256


@dataclass(frozen=True)
class Transform:
    """Resize the shorter side to ``resize``, centre-crop ``size``, scale to [0,1], normalise."""

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def crop(self, image: Image.Image) -> np.ndarray:
        """Resized, centre-cropped 8-bit RGB pixels: uint8 (size, size, 3)."""
        # Any aspect ratio in bounded memory, also for a PIL image that bypassed load_image.
        image = bound_aspect(image)
        w, h = image.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        # Resize only the source region that the centre crop keeps: the same pixels as
        # resizing the whole photo to (nw, nh) and cropping (at most 1 level apart, from
        # rounding), for about half the work (decoding 512x384 photos: 3.1 -> 1.8 ms).
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy)
        image = image if image.mode == "RGB" else image.convert("RGB")
        image = image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
        return np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy takes it as is

    def normalise(self, pixels):
        """uint8 (n, size, size, 3) torch tensor, on any device -> float32 (n, 3, size, size)."""
        import torch

        x = pixels.to(torch.float32) / 255.0
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device)
        return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()

    def __call__(self, image: Image.Image):
        """One photo -> float32 (3, size, size) torch tensor, ready for the encoder."""
        import torch

        return self.normalise(torch.from_numpy(self.crop(image))[None])[0]


Decoded = tuple[Record, np.ndarray]


def decode(record: Record, transform: Transform) -> Decoded | Skip:
    """Read, decode and crop one gallery photo (and its EXIF GPS when it has no coordinates).

    The record comes back without its bytes (they are not needed past this point).
    """
    src = record.data if record.data is not None else record.path
    try:
        image = load_image(src)
    except ImageError as exc:
        detail = f"{record.path}: {exc}" if record.data is not None else str(exc)
        return Skip(record.image_id, exc.kind, detail)
    lat, lon = record.lat, record.lon
    if lat is None or lon is None:
        gps = read_exif_gps(src)
        if gps is None:
            return Skip(record.image_id, "no EXIF GPS", f"{record.path} has no usable GPS in its EXIF")
        lat, lon = gps
    try:
        pixels = transform.crop(image)
        sha256 = file_sha256(record.data if record.data is not None else record.path.read_bytes())
    except (OSError, ValueError) as exc:  # e.g. a 1-pixel-wide photo
        return Skip(record.image_id, "corrupt image", f"{record.path}: cannot read or resize: {exc}")
    # A photo read from a file keeps its path (few-shot examples are shown from it); one read
    # from a container (a tar shard) has no path of its own to show later.
    path = record.path if record.data is None else None
    return Record(record.image_id, path, lat, lon, record.places, sha256=sha256), pixels


def decode_many(records: Sequence[Record], transform: Transform) -> list[Decoded | Skip]:
    """``decode`` each record: the unit of work sent to a worker process (fewer round trips)."""
    return [decode(r, transform) for r in records]
