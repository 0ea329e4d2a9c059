"""The root of geoagent's error tree and the errors of the lowest layer (``rag_store``).

Each layer defines the errors it raises: photos, inputs, encoders and the store here;
the model endpoint's in ``agent.errors``. ``agent`` re-exports the whole tree flat
(``from agent import ModelTimeout, ImageError``). Each message names the failing
input and the fix::

    GeoagentError
    ├── InputError                  bad input a user can correct
    │   ├── ImageError              unreadable / unsupported / too large photo or URL
    │   ├── SourceError             an index SOURCE, dataset, truth or predictions file
    │   ├── CoordinateError         not a usable (lat, lon); (0, 0) counts as missing
    │   ├── OutputError             an output file cannot be written
    │   └── ConfigError             unknown name, bad setting or settings file
    ├── EncoderError
    │   ├── EncoderUnavailable      weights not on disk (and no network)
    │   └── EncoderMismatch         gallery built by another encoder / dimension
    ├── StoreError
    │   ├── StoreUnavailable        Chroma directory or server cannot be opened
    │   └── GalleryNotFound         no such collection
    └── ModelError                  the vision-language model endpoint   (agent.errors)
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
    """An input file or folder (index SOURCE, dataset, truth, predictions) that cannot be used."""


class CoordinateError(InputError):
    """A latitude / longitude pair that is not a usable point (see ``rag_store.coords``).

    ``kind`` is ``bad coordinates`` or ``missing coordinates`` (blank, or exactly (0, 0)).
    """

    def __init__(self, message: str, kind: str = "bad coordinates"):
        super().__init__(message)
        self.kind = kind


class OutputError(InputError):
    """An output file (map, report, transcript, errors CSV) that cannot be written."""


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


def unknown_name(kind: str, name: str, available: Iterable[str]) -> ConfigError:
    """``ConfigError`` for an unknown name, with a suggestion and the choices."""
    choices = sorted(available)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {kind} {name!r}.{hint} Available: {', '.join(choices)}")


__all__ = [
    "ConfigError",
    "CoordinateError",
    "EncoderError",
    "EncoderMismatch",
    "EncoderUnavailable",
    "GalleryNotFound",
    "GeoagentError",
    "ImageError",
    "InputError",
    "OutputError",
    "SourceError",
    "StoreError",
    "StoreUnavailable",
    "unknown_name",
]
