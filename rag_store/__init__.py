"""rag_store: image encoders, the Chroma gallery of geotagged images, and its ingest.

Names are imported on first use (PEP 562), so that ``import rag_store.errors`` or a
CLI command that needs no encoder does not pay for importing torch and chromadb.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    CoordinateError,
    EncoderError,
    EncoderMismatch,
    EncoderUnavailable,
    GalleryNotFound,
    GeoagentError,
    ImageError,
    InputError,
    OutputError,
    SourceError,
    StoreError,
    StoreUnavailable,
)

# OpenMP threads that have finished their share of a torch op sleep instead of spinning.
# Spinning (the default) only pays on idle, dedicated cores: on a shared 2-core machine, or
# in ingest where photo-decoding threads run beside the encoder, a spinning thread burns the
# core its partner needs: on the busy 2-core dev machine efficientnet-lite0 with 2 threads
# took 3x the CPU and 2-3x the wall time per image (bench/RESULTS.md, issue 2). libgomp reads
# this once, when torch loads: it only takes effect when rag_store is imported before torch
# (as in the geoagent CLI); an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_LAZY = {
    "rag_store.encoders": ["DEFAULT_ENCODER", "ENCODERS", "Encoder", "EncoderSpec", "Transform", "create_encoder", "list_encoders"],
    "rag_store.gps_gallery": ["GPS_COLLECTION", "GpsCandidate", "GpsGallery", "build_gps_gallery", "location_similarity"],
    "rag_store.images": ["load_image", "read_exif_gps"],
    "rag_store.ingest": ["IndexSummary", "index_source", "read_source"],
    "rag_store.store": ["DEFAULT_COLLECTION", "Gallery", "Neighbour", "Retrieval", "default_store_dir", "list_galleries", "open_client"],
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

if TYPE_CHECKING:
    from .encoders import (
        DEFAULT_ENCODER,
        ENCODERS,
        Encoder,
        EncoderSpec,
        Transform,
        create_encoder,
        list_encoders,
    )
    from .gps_gallery import (
        GPS_COLLECTION,
        GpsCandidate,
        GpsGallery,
        build_gps_gallery,
        location_similarity,
    )
    from .images import load_image, read_exif_gps
    from .ingest import IndexSummary, index_source, read_source
    from .store import (
        DEFAULT_COLLECTION,
        Gallery,
        Neighbour,
        Retrieval,
        default_store_dir,
        list_galleries,
        open_client,
    )


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rag_store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEFAULT_COLLECTION",
    "DEFAULT_ENCODER",
    "ENCODERS",
    "GPS_COLLECTION",
    "ConfigError",
    "CoordinateError",
    "Encoder",
    "EncoderError",
    "EncoderMismatch",
    "EncoderSpec",
    "EncoderUnavailable",
    "Gallery",
    "GalleryNotFound",
    "GeoagentError",
    "GpsCandidate",
    "GpsGallery",
    "ImageError",
    "IndexSummary",
    "InputError",
    "OutputError",
    "Neighbour",
    "Retrieval",
    "SourceError",
    "StoreError",
    "StoreUnavailable",
    "Transform",
    "build_gps_gallery",
    "create_encoder",
    "default_store_dir",
    "index_source",
    "list_encoders",
    "list_galleries",
    "load_image",
    "location_similarity",
    "open_client",
    "read_exif_gps",
    "read_source",
]
