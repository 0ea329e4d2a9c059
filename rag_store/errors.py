"""Every error geoagent raises on purpose, in one tree.

The tree lives in the lowest layer (``rag_store``) so that the gallery, the
encoders, the chain and the benchmark runner all raise the same classes;
``agent`` re-exports it. Each message names the failing input and the fix::

    GeoagentError
    ├── InputError                  bad input a user can correct
    │   ├── ImageError              unreadable / unsupported / too large photo or URL
    │   ├── SourceError             `geoagent index SOURCE` cannot be used
    │   └── ConfigError             unknown name, bad setting or settings file
    ├── EncoderError
    │   ├── EncoderUnavailable      weights not on disk (and no network)
    │   └── EncoderMismatch         gallery built by another encoder / dimension
    ├── StoreError
    │   ├── StoreUnavailable        Chroma directory or server cannot be opened
    │   └── GalleryNotFound         no such collection
    └── ModelError                  the vision-language model endpoint
        ├── ModelUnavailable        connection refused, no such host
        │   └── ModelTimeout        no answer within the timeout
        ├── ModelRateLimited        HTTP 429 (carries retry_after)
        ├── ModelAuthError          HTTP 401/403
        └── ModelResponseError      endpoint answered with something unusable
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GeoagentError(Exception):
    """Base class of every error geoagent raises on purpose."""


class InputError(GeoagentError, ValueError):
    """Input a user can correct."""


class ImageError(InputError):
    """A photo that cannot be read or is not allowed.

    ``kind`` names the reason in a word or two (``missing file``, ``not an image``,
    ``corrupt image``, ``decompression bomb``...), for counting skips.
    """

    def __init__(self, message: str, kind: str = "unreadable image"):
        super().__init__(message)
        self.kind = kind


class SourceError(InputError):
    """An index SOURCE (folder or CSV) that cannot be used."""


class ConfigError(InputError):
    """An unknown name, a bad setting or an unreadable settings file."""


class EncoderError(GeoagentError):
    """An image or location encoder that cannot be used."""


class EncoderUnavailable(EncoderError):
    """The encoder's weights are not on this machine."""


class EncoderMismatch(EncoderError):
    """A gallery was built by another encoder than the one in use."""


class StoreError(GeoagentError):
    """The Chroma store cannot be used."""


class StoreUnavailable(StoreError):
    """The Chroma directory or server cannot be opened or reached."""


class GalleryNotFound(StoreError):
    """No collection of that name in the store."""


class ModelError(GeoagentError):
    """The vision-language model endpoint failed."""


class ModelUnavailable(ModelError):
    """Connection refused, DNS failure or timeout."""


class ModelTimeout(ModelUnavailable):
    """The endpoint did not answer within the request timeout (after retries)."""


class ModelRateLimited(ModelError):
    """HTTP 429; ``retry_after`` is the server's hint in seconds, when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ModelAuthError(ModelError):
    """The endpoint refused the API key."""


class ModelResponseError(ModelError):
    """The endpoint answered, but with an error status or an unusable body."""


def unknown_name(kind: str, name: str, available: Iterable[str]) -> ConfigError:
    """``ConfigError`` for an unknown name, with a suggestion and the choices."""
    choices = sorted(available)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {kind} {name!r}.{hint} Available: {', '.join(choices)}")


__all__ = [
    "ConfigError",
    "EncoderError",
    "EncoderMismatch",
    "EncoderUnavailable",
    "GalleryNotFound",
    "GeoagentError",
    "ImageError",
    "InputError",
    "ModelAuthError",
    "ModelError",
    "ModelRateLimited",
    "ModelResponseError",
    "ModelTimeout",
    "ModelUnavailable",
    "SourceError",
    "StoreError",
    "StoreUnavailable",
    "unknown_name",
]
