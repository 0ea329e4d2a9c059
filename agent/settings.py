"""Settings of a ``GeoAgent``: arguments override the environment, which overrides a TOML file.

Environment: ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``GEOAGENT_MODEL``,
``GEOAGENT_STORE``, ``GEOAGENT_CHROMA_URL``, ``GEOAGENT_CONFIG`` (the TOML file).
A TOML file holds the same keys as ``Settings`` at top level, e.g.::

    model = "gpt-4o-mini"
    k = 16
    variants = [0, 5, 10, 15]
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rag_store.errors import ConfigError, unknown_name
from rag_store.store import DUPLICATE_COSINE

ENV = {
    "api_key": "OPENAI_API_KEY",
    "base_url": "OPENAI_BASE_URL",
    "model": "GEOAGENT_MODEL",
    "store": "GEOAGENT_STORE",
    "chroma_url": "GEOAGENT_CHROMA_URL",
}
VERIFICATIONS = ("auto", "geoclip", "neighbours", "none")
FALLBACKS = ("retrieval", "none")
POOL_SOURCES = ("neighbours", "gps-gallery")
REFERENCES = ("gallery", "gps-gallery")
ANSWERS = ("coordinates", "country")
FEW_SHOT = ("none", "static", "dynamic")


@dataclass
class Settings:
    # The vision-language model (any OpenAI-compatible endpoint); None = retrieval only.
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    # Seconds per attempt, connect to last byte; with 3 retries a silent server is given up
    # after ~2 minutes (4 x 30 s + backoff). Streamed chat answers get 4x as long.
    timeout: float = 30.0
    max_retries: int = 3  # on 429, 5xx, timeouts and connection errors, with exponential backoff
    concurrency: int = 4  # requests in flight per agent
    rate_limit: float | None = None  # model requests per second, per endpoint; None = no limit
    # Retrieval.
    store: str | None = None
    chroma_url: str | None = None
    collection: str = "gallery"
    encoder: str | None = None  # default: the encoder that built the gallery
    gps_collection: str = "geoclip-gps-100k"
    use_gps_gallery: bool = True  # when the store has it and the encoder is geoclip
    use_gallery: bool = True  # retrieve image neighbours (False: GPS gallery or model only)
    k: int = 16  # similar and dissimilar neighbours retrieved
    gps_k: int = 5  # GeoCLIP GPS-gallery candidates
    # Benchmarks: leave out gallery entries that are the query photo itself (same id, same
    # file hash, or an embedding at least duplicate_cosine similar); `eval run` turns it on.
    exclude_self_matches: bool = False
    duplicate_cosine: float | None = DUPLICATE_COSINE
    # Prompting (G3-style diversification: one prompt variant per neighbour count).
    prompt: str = "img2loc"
    references: str = "gallery"  # gallery: neighbours' coordinates; gps-gallery: GeoCLIP's top-k
    answer: str = "coordinates"  # coordinates | country (LLMGeo: the model names a country)
    few_shot: str = "none"  # none | static | dynamic: example photos with their countries
    few_shot_k: int = 5  # example photos per request
    few_shot_seed: int = 0  # picks the static examples
    variants: tuple[int, ...] = (0, 5, 10, 15)
    samples: int = 1  # samples per variant, drawn with `n` in one request
    keep: int | None = None  # the first `keep` samples of each variant are used; None = all
    temperature: float = 0.7
    max_tokens: int | None = None  # per reply; sent as max_tokens or max_completion_tokens
    max_side: int = 512  # longest side of the image sent to the model
    json_mode: bool = True  # ask for response_format=json_object
    # Verification and answer. The pool is the model's candidates plus the top `pool_k`
    # coordinates of each retrieval source named in `pool` (neighbours, gps-gallery).
    pool: tuple[str, ...] = ("neighbours", "gps-gallery")
    pool_k: int = 5
    verification: str = "auto"
    fallback: str = "retrieval"
    ignore_exif: bool = False
    cache_dir: str | None = None  # model replies cached here (SQLite); None = no cache
    # Fetching images by URL, and Nominatim.
    url_max_bytes: int = 20_000_000
    url_timeout: float = 20.0
    allow_network: bool = False

    def __post_init__(self) -> None:
        self.variants = tuple(int(v) for v in self.variants)
        self.pool = tuple(self.pool)
        for name, value, allowed in (
            ("verification", self.verification, VERIFICATIONS),
            ("fallback", self.fallback, FALLBACKS),
            ("references", self.references, REFERENCES),
            ("answer", self.answer, ANSWERS),
            ("few_shot", self.few_shot, FEW_SHOT),
            *(("pool source", p, POOL_SOURCES) for p in self.pool),
        ):
            if value not in allowed:
                raise unknown_name(name, value, allowed)
        checks = [
            (self.k >= 0, "k must be >= 0"),
            (self.samples >= 1, "samples must be >= 1"),
            (self.keep is None or self.keep >= 1, "keep must be >= 1"),
            (self.pool_k >= 0, "pool_k must be >= 0"),
            (self.few_shot_k >= 1, "few_shot_k must be >= 1"),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be >= 1"),
            (self.duplicate_cosine is None or -1.0 <= self.duplicate_cosine <= 1.0,
             "duplicate_cosine must be within -1..1"),
            (self.variants and all(v >= 0 for v in self.variants), "variants must be neighbour counts >= 0"),
            (0.0 <= self.temperature <= 2.0, "temperature must be within 0..2"),
            (self.max_side >= 32, "max_side must be >= 32"),
            (self.timeout > 0, "timeout must be > 0"),
            (self.max_retries >= 0, "max_retries must be >= 0"),
            (self.concurrency >= 1, "concurrency must be >= 1"),
            (self.rate_limit is None or self.rate_limit > 0, "rate_limit must be > 0 requests/s"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid setting: {message}")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def public_dict(self) -> dict:
        """The settings without the API key, for logs, run records and cache keys."""
        data = dataclasses.asdict(self)
        data.pop("api_key")
        return data

    @classmethod
    def load(cls, config: str | Path | None = None, **overrides: Any) -> Settings:
        """Defaults < TOML file (``config`` or $GEOAGENT_CONFIG) < environment < ``overrides``."""
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        path = config or os.environ.get("GEOAGENT_CONFIG")
        if path:
            values.update(read_toml(Path(path), names))
        for name, var in ENV.items():
            if os.environ.get(var):
                values[name] = os.environ[var]
        for name, value in overrides.items():
            if name not in names:
                raise unknown_name("setting", name, names)
            if value is not None:
                values[name] = value
        return cls(**values)


def read_toml(path: Path, names: set[str]) -> dict:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"settings file not found: {path}") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc}") from exc
    for key in data:
        if key not in names:
            raise unknown_name(f"setting in {path}", key, names)
    return data
