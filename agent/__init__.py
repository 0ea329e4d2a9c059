"""geoagent: predict where a photo was taken.

    from agent import GeoAgent
    agent = GeoAgent.from_settings(store="demo-store", model="gpt-4o", k=16)
    prediction = agent.locate("photo.jpg")
    print(prediction.latitude, prediction.longitude, prediction.country)

Errors (all under ``GeoagentError``), flat: the tree is drawn in ``agent.errors``.
"""

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
    ModelAuthError,
    ModelError,
    ModelRateLimited,
    ModelResponseError,
    ModelTimeout,
    ModelUnavailable,
    OutputError,
    SourceError,
    StoreError,
    StoreUnavailable,
)
from .prediction import Candidate, Clue, Prediction
from .settings import Settings

if TYPE_CHECKING:
    from .api import GeoAgent


def __getattr__(name: str) -> Any:
    # GeoAgent pulls in torch and chromadb: import it on first use, so that commands
    # and modules that need only geography or metrics start fast.
    if name == "GeoAgent":
        from .api import GeoAgent

        globals()["GeoAgent"] = GeoAgent
        return GeoAgent
    raise AttributeError(f"module 'agent' has no attribute {name!r}")

__all__ = [
    "Candidate",
    "Clue",
    "ConfigError",
    "CoordinateError",
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
    "OutputError",
    "Prediction",
    "Settings",
    "SourceError",
    "StoreError",
    "StoreUnavailable",
]
