"""geoagent: predict where a photo was taken.

    from agent import GeoAgent
    agent = GeoAgent.from_settings(store="demo-store", model="gpt-4o", k=16)
    prediction = agent.locate("photo.jpg")
    print(prediction.latitude, prediction.longitude, prediction.country)

Errors (all under ``GeoagentError``) are drawn in ``rag_store.errors``.
"""

from rag_store.errors import (
    ConfigError,
    EncoderError,
    EncoderMismatch,
    EncoderUnavailable,
    GalleryNotFound,
    GeoagentError,
    ImageError,
    InputError,
    ModelAuthError,
    ModelError,
    ModelRateLimited,
    ModelResponseError,
    ModelTimeout,
    ModelUnavailable,
    SourceError,
    StoreError,
    StoreUnavailable,
)

from .api import GeoAgent
from .prediction import Candidate, Clue, Prediction
from .settings import Settings

__all__ = [
    "Candidate",
    "Clue",
    "ConfigError",
    "EncoderError",
    "EncoderMismatch",
    "EncoderUnavailable",
    "GalleryNotFound",
    "GeoAgent",
    "GeoagentError",
    "ImageError",
    "InputError",
    "ModelAuthError",
    "ModelError",
    "ModelRateLimited",
    "ModelResponseError",
    "ModelTimeout",
    "ModelUnavailable",
    "Prediction",
    "Settings",
    "SourceError",
    "StoreError",
    "StoreUnavailable",
]
