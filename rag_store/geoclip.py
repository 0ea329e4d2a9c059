"""GeoCLIP (Vivanco et al., NeurIPS 2023) in our own code, on the weights of the geoclip wheel.

The ``geoclip`` package is never imported: its ``__init__`` imports torchvision,
which has no CPU build here. Its files (weights and the 100K GPS gallery) are
found through ``importlib.metadata`` instead.

- Location encoder: lat/lon -> Equal Earth projection -> three random-Fourier-
  feature capsules (sigma 2^0, 2^4, 2^8) whose outputs are summed -> 512-d.
- Image head: CLIP ViT-L/14 image embedding (768-d) -> MLP -> 512-d (the ``geoclip``
  encoder of ``rag_store.encoders`` puts it on the CLIP tower of ``rag_store.clip``).
- Image-location similarity: ``logit_scale * cos(image, location)``.
"""

from __future__ import annotations

import csv
import importlib.metadata as md
import math
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import EncoderUnavailable

GEOCLIP_DIST = "geoclip"
GEOCLIP_VERSION = "1.3.0"

# Equal Earth projection constants, as GeoCLIP uses them.
A1, A2, A3, A4 = 1.340264, -0.081106, 0.000893, 0.003796
SF = 66.50336


def geoclip_file(relative: str) -> Path:
    """Path of a file shipped in the installed geoclip wheel, e.g. 'model/weights/...'."""
    try:
        dist = md.distribution(GEOCLIP_DIST)
    except md.PackageNotFoundError as exc:
        raise EncoderUnavailable(
            f"GeoCLIP's weights come from the geoclip wheel, which is not installed: "
            f"pip install --no-deps geoclip=={GEOCLIP_VERSION}"
        ) from exc
    path = Path(dist.locate_file(f"geoclip/{relative}"))
    if not path.is_file():
        raise EncoderUnavailable(
            f"{path} is missing from the installed geoclip wheel: "
            f"pip install --force-reinstall --no-deps geoclip=={GEOCLIP_VERSION}"
        )
    return path


def equal_earth_projection(latlon: torch.Tensor) -> torch.Tensor:
    lat = torch.deg2rad(latlon[:, 0])
    lon = torch.deg2rad(latlon[:, 1])
    theta = torch.asin(math.sqrt(3.0) / 2 * torch.sin(lat))
    denominator = 3 * (9 * A4 * theta**8 + 7 * A3 * theta**6 + 3 * A2 * theta**2 + A1)
    x = (2 * math.sqrt(3.0) * lon * torch.cos(theta)) / denominator
    y = A4 * theta**9 + A3 * theta**7 + A2 * theta**3 + A1 * theta
    return torch.stack((x, y), dim=1) * SF / 180


class _GaussianEncoding(nn.Module):
    """Random Fourier features: (cos 2*pi*Bv, sin 2*pi*Bv); B is loaded, not sampled."""

    def __init__(self, encoded_size: int = 256, input_size: int = 2):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(encoded_size, input_size), requires_grad=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        vp = 2 * math.pi * v @ self.b.T
        return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)


class _Capsule(nn.Module):
    def __init__(self):
        super().__init__()
        self.capsule = nn.Sequential(
            _GaussianEncoding(),
            nn.Linear(512, 1024),
            nn.ReLU(),
            nn.Linear(1024, 1024),
            nn.ReLU(),
            nn.Linear(1024, 1024),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(1024, 512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.capsule(x))


class LocationEncoder(nn.Module):
    """GeoCLIP's location encoder: (n, 2) degrees lat/lon -> (n, 512)."""

    SIGMAS = (2**0, 2**4, 2**8)

    def __init__(self):
        super().__init__()
        # Module names match the released state dict (LocEnc0..2).
        for i in range(len(self.SIGMAS)):
            self.add_module(f"LocEnc{i}", _Capsule())

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        x = equal_earth_projection(latlon)
        return sum(self._modules[f"LocEnc{i}"](x) for i in range(len(self.SIGMAS)))

    @torch.inference_mode()
    def embed(self, latlon: np.ndarray | list, batch_size: int = 4096) -> np.ndarray:
        """(n, 2) lat/lon in degrees -> float32 (n, 512), L2-normalised."""
        arr = torch.as_tensor(np.asarray(latlon, dtype=np.float32).reshape(-1, 2))
        parts = [
            nn.functional.normalize(self(arr[i : i + batch_size]), dim=-1)
            for i in range(0, len(arr), batch_size)
        ]
        if not parts:
            return np.zeros((0, 512), np.float32)
        return torch.cat(parts).numpy().astype(np.float32, copy=False)


def _load(relative: str):
    return torch.load(geoclip_file(relative), map_location="cpu", weights_only=True)


@cache
def load_location_encoder() -> LocationEncoder:
    """GeoCLIP's location encoder with the released weights (fully offline)."""
    model = LocationEncoder()
    model.load_state_dict(_load("model/weights/location_encoder_weights.pth"), strict=True)
    return model.eval()


@cache
def logit_scale() -> float:
    """exp(learned logit scale): the temperature of GeoCLIP's image-location softmax."""
    return float(torch.as_tensor(_load("model/weights/logit_scale_weights.pth")).exp())


def load_image_head() -> nn.Module:
    """GeoCLIP's image head: CLIP ViT-L/14's 768-d image embedding -> 512-d (released weights).

    ``rag_store.encoders`` puts it on top of the CLIP tower (``geoclip`` encoder), after
    ``rag_store.clip.check_geoclip_backbone`` has checked that tower.
    """
    mlp = nn.Sequential(nn.Linear(768, 768), nn.ReLU(), nn.Linear(768, 512))
    mlp.load_state_dict(_load("model/weights/image_encoder_mlp_weights.pth"), strict=True)
    return mlp.eval()


def gps_gallery_coordinates() -> np.ndarray:
    """GeoCLIP's 100K gallery coordinates, float32 (n, 2) lat/lon, in file order."""
    with geoclip_file("model/gps_gallery/coordinates_100K.csv").open(newline="") as fh:
        rows = [(float(r["LAT"]), float(r["LON"])) for r in csv.DictReader(fh)]
    return np.asarray(rows, dtype=np.float32)
