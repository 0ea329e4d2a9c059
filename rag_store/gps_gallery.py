"""GeoCLIP's GPS gallery: 100K coordinates embedded once by the location encoder, kept in Chroma.

GeoCLIP predicts by comparing an image embedding with every gallery location
(``softmax(logit_scale * cos)``). Its released code re-embeds the 100K
coordinates at every call; here they are embedded once, stored as a Chroma
collection, and read back into memory once per process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .errors import GalleryNotFound
from .geoclip import gps_gallery_coordinates, load_location_encoder, logit_scale
from .store import Gallery

GPS_COLLECTION = "geoclip-gps-100k"
LOCATION_ENCODER = "geoclip-location"


@dataclass(frozen=True)
class GpsCandidate:
    lat: float
    lon: float
    probability: float

    def to_dict(self) -> dict:
        return asdict(self)


def build_gps_gallery(
    client,
    *,
    name: str = GPS_COLLECTION,
    limit: int | None = None,
    batch_size: int = 5000,
    progress: Callable[[int, int], None] | None = None,
) -> Gallery:
    """Embed GeoCLIP's gallery coordinates into ``name``; resumable, adds only what is missing."""
    coords = gps_gallery_coordinates()
    if limit is not None:
        coords = coords[:limit]
    gallery = Gallery.open(client, name, encoder_name=LOCATION_ENCODER, dim=512, create=True, kind="gps")
    encoder = load_location_encoder()
    total = len(coords)
    for start in range(0, total, batch_size):
        ids = [f"gps-{i}" for i in range(start, min(start + batch_size, total))]
        stored = gallery.existing_ids(ids)
        missing = [i for i, id_ in enumerate(ids) if id_ not in stored]
        if missing:
            chunk = coords[start : start + batch_size][missing]
            gallery.add(
                [ids[i] for i in missing],
                encoder.embed(chunk),
                [
                    {"lat": float(lat), "lon": float(lon), "image_id": ids[i], "source": "geoclip-gps"}
                    for i, (lat, lon) in zip(missing, chunk, strict=True)
                ],
            )
        if progress:
            progress(min(start + batch_size, total), total)
    return gallery


class GpsGallery:
    """Top-k GeoCLIP coordinates for an image embedding, with GeoCLIP's probabilities."""

    def __init__(self, gallery: Gallery):
        self.gallery = gallery
        _, self.embeddings, metas = gallery.all_embeddings()
        self.coords = np.asarray([(m["lat"], m["lon"]) for m in metas], dtype=np.float32)
        self.scale = logit_scale()

    @classmethod
    def open(cls, client, name: str = GPS_COLLECTION) -> GpsGallery:
        try:
            gallery = Gallery.open(client, name, encoder_name=LOCATION_ENCODER, dim=512)
        except GalleryNotFound as exc:
            raise GalleryNotFound(
                f"no GeoCLIP GPS gallery {name!r} in this store: build it once with "
                f"`geoagent index --gps-gallery`"
            ) from exc
        return cls(gallery)

    def __len__(self) -> int:
        return len(self.coords)

    def candidates(self, image_embedding: np.ndarray, k: int = 5) -> list[GpsCandidate]:
        """GeoCLIP's ``predict``: softmax over every gallery location, top ``k``."""
        q = np.asarray(image_embedding, dtype=np.float32).reshape(-1)
        logits = self.scale * (self.embeddings @ q)
        logits -= logits.max()
        probs = np.exp(logits)
        probs /= probs.sum()
        k = min(k, len(probs))
        top = np.argpartition(-probs, k - 1)[:k]
        top = top[np.argsort(-probs[top])]
        return [
            GpsCandidate(float(self.coords[i, 0]), float(self.coords[i, 1]), float(probs[i]))
            for i in top
        ]


def location_similarity(image_embedding: np.ndarray, coords: np.ndarray | list) -> np.ndarray:
    """Cosine between a GeoCLIP image embedding and each (lat, lon): G3's geo-verification."""
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    loc = load_location_encoder().embed(coords)
    return loc @ np.asarray(image_embedding, dtype=np.float32).reshape(-1)
