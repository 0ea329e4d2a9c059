"""Errors of the vision-language model endpoint; with ``rag_store.errors``, geoagent's error tree.

``agent`` raises these and ``rag_store`` never does, so they live here, under the same
root (``GeoagentError``)::

    GeoagentError                       (rag_store.errors)
    ├── InputError ...                  (rag_store.errors)
    ├── EncoderError ...                (rag_store.errors)
    ├── StoreError ...                  (rag_store.errors)
    └── ModelError                      the vision-language model endpoint
        ├── ModelUnavailable            connection refused, no such host
        │   └── ModelTimeout            no complete answer within the timeout (every attempt)
        ├── ModelRateLimited            HTTP 429 (carries retry_after)
        ├── ModelAuthError              HTTP 401/403
        └── ModelResponseError          answered with something unusable: an error status,
                                        a body that is not a chat completion, too large,
                                        too deeply nested, or a broken stream

Everything is re-exported flat by ``agent``: ``from agent import ModelTimeout, ImageError``.
"""

from __future__ import annotations

from rag_store.errors import *  # noqa: F403 - the whole tree, flat, from one module
from rag_store.errors import GeoagentError
from rag_store.errors import __all__ as _store_errors


class ModelError(GeoagentError):
    """The vision-language model endpoint failed."""


class ModelUnavailable(ModelError):
    """Connection refused, DNS failure or timeout: a configuration problem for a whole run."""


class ModelTimeout(ModelUnavailable):
    """The endpoint did not finish answering within the request timeout (after retries)."""


class ModelRateLimited(ModelError):
    """HTTP 429; ``retry_after`` is the server's hint in seconds, when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ModelAuthError(ModelError):
    """The endpoint refused the API key."""


class ModelResponseError(ModelError):
    """The endpoint answered, but with an error status or an unusable body."""


__all__ = [
    *_store_errors,
    "ModelAuthError",
    "ModelError",
    "ModelRateLimited",
    "ModelResponseError",
    "ModelTimeout",
    "ModelUnavailable",
]
