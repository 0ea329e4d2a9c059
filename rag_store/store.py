"""The gallery store: one Chroma collection per gallery of geotagged images.

Embedded persistent Chroma (a directory) is the default; ``chroma_url`` selects
a Chroma server (``chroma run``) instead. Each collection records the encoder and
dimension that built it, and refuses vectors from any other encoder.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from .coords import check_latlon
from .errors import (
    ConfigError,
    EncoderMismatch,
    GalleryNotFound,
    StoreError,
    StoreUnavailable,
)

DEFAULT_COLLECTION = "gallery"
# HNSW settings, measured by bench/bench_store.py on 1M clustered 512-d vectors on the 2-core
# dev machine (bench/RESULTS.md, issue 2). max_neighbors (M) fixes how well the graph links
# clusters, and only at creation: with M=16 some queries' searches got stuck away from all
# of their true neighbours whatever ef_search, so recall@16 stalled at 0.94 / 0.95 / 0.96 /
# 0.97 for ef_search 128 / 192 / 256 / 384 while p50 grew 7 -> 11 ms. M=32 (fewer stuck
# searches: ~1 % of queries at 1M, none at 100K from ef_search 64) gives 0.97 / 0.98 / 0.99
# at ef_search 64 / 128 / 256 (p50 5-11 ms at 128, by machine load), for a build 1.6x slower
# (1M: ~770 vectors/s, 22 min) and a 6% larger index (2.3 GB at 1M). ef_search is the recall
# / latency knob (M=16: p50 7 -> 11.6 ms from 128 to 256). It can be changed on an existing
# gallery: collection.modify(configuration={"hnsw": {"ef_search": N}}) is stored at once and
# used when the index is next loaded (chromadb 1.5.9); M and ef_construction cannot. Existing
# galleries keep the settings they were created with.
HNSW = {"space": "cosine", "ef_construction": 128, "ef_search": 128, "max_neighbors": 32}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")


def default_store_dir() -> Path:
    """``$GEOAGENT_STORE``, else the user data dir (e.g. ~/.local/share/geoagent/store)."""
    env = os.environ.get("GEOAGENT_STORE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("geoagent")) / "store"


def open_client(store: str | Path | None = None, chroma_url: str | None = None, *, create: bool = True):
    """A Chroma client: a server at ``chroma_url``, else an embedded store in ``store``.

    With ``create=False`` (commands that only read: ``locate``, ``galleries``, ``chat``) a
    store directory that does not exist is ``GalleryNotFound``, and nothing is created.
    """
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if chroma_url:
        if store:
            raise ConfigError("give either --store (embedded) or --chroma-url (server), not both")
        url = urlparse(chroma_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(
                f"--chroma-url {chroma_url!r} is not an http(s)://HOST:PORT address"
            )
        try:
            client = chromadb.HttpClient(
                host=url.hostname,
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=settings,
            )
            client.heartbeat()
        except Exception as exc:  # chromadb raises bare ValueError/ConnectError variants
            raise StoreUnavailable(
                f"cannot reach the Chroma server at {chroma_url}: start it with "
                f"`chroma run --path DIR --port {url.port or 8000}` or check the address"
            ) from exc
        return client
    path = Path(store).expanduser() if store else default_store_dir()
    if path.exists() and not path.is_dir():
        raise StoreUnavailable(f"--store {path} exists and is not a directory")
    if not create and not path.exists():
        raise GalleryNotFound(f"no store at {path}: build a gallery with `geoagent index SOURCE`")
    try:
        path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(path), settings=settings)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreUnavailable(f"cannot open the Chroma store at {path}: {exc}") from exc


@dataclass(frozen=True)
class Neighbour:
    """One retrieved gallery entry and its cosine similarity to the query."""

    image_id: str
    lat: float
    lon: float
    similarity: float
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Retrieval:
    """Most similar (positives) and least similar (negatives) gallery entries of a query.

    ``self_matches``: entries that are the query photo itself (see ``SelfMatch``), most
    similar first; left out of ``positives`` / ``negatives`` when the query excluded them.
    """

    positives: list[Neighbour]
    negatives: list[Neighbour]
    self_matches: list[Neighbour] = field(default_factory=list)


def file_sha256(data: bytes) -> str:
    """The content hash recorded per gallery entry (metadata ``sha256``) and per query."""
    return hashlib.sha256(data).hexdigest()


# Cosine at or above which two embeddings are one photo. Measured with efficientnet-lite0 on
# the 990 Im2GPS3k dev photos (bench/bench_selfmatch.py, bench/RESULTS.md): a photo re-saved
# as JPEG q90 at full size keeps cosine >= 0.980 with itself, while the most similar pair of
# distinct photos reaches 0.843 (p99 of each photo's nearest other: 0.803). Downscaled copies
# fall to 0.70 (half size) and 0.46 (a third): those only the id or the file hash can catch.
DUPLICATE_COSINE = 0.95


@dataclass(frozen=True)
class SelfMatch:
    """What marks a gallery entry as the query photo itself.

    Same image id, same file content (``sha256`` recorded at index time; galleries built
    before have none and are matched by id), or an embedding at least ``min_cosine``
    similar to the query's (a copy under another name). A benchmark query must never
    retrieve itself: its neighbours would hand over the answer.
    """

    image_ids: frozenset[str] = frozenset()
    sha256: str | None = None
    min_cosine: float | None = DUPLICATE_COSINE

    def matches(self, image_id: str, meta: dict, similarity: float) -> bool:
        if image_id in self.image_ids:
            return True
        if self.sha256 and meta.get("sha256") == self.sha256:
            return True
        return self.min_cosine is not None and similarity >= self.min_cosine


@dataclass(frozen=True)
class _Hit:
    """One search result with its raw metadata (for self-match checks)."""

    image_id: str
    meta: dict
    similarity: float

    @property
    def source(self) -> str:
        return str(self.meta.get("source", ""))

    def neighbour(self) -> Neighbour:
        return Neighbour(
            image_id=self.image_id,
            lat=float(self.meta["lat"]),
            lon=float(self.meta["lon"]),
            similarity=self.similarity,
            source=self.source,
        )


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"collection name {name!r} must be 3-512 characters of letters, digits, '.', '_' "
            f"or '-', starting and ending with a letter or digit"
        )
    return name


class Gallery:
    """A Chroma collection of geotagged image vectors built by one encoder.

    Each vector's metadata holds ``lat``, ``lon``, ``image_id`` and ``source``; the
    collection's own metadata holds the ``encoder`` name and ``dim``.
    """

    def __init__(self, collection, encoder_name: str, dim: int):
        self.collection = collection
        self.name: str = collection.name
        self.encoder_name = encoder_name
        self.dim = dim

    @classmethod
    def open(
        cls,
        client,
        name: str = DEFAULT_COLLECTION,
        *,
        encoder_name: str | None = None,
        dim: int | None = None,
        create: bool = False,
        kind: str = "images",
    ) -> Gallery:
        """Open (or with ``create`` make) a gallery; check it was built by ``encoder_name``."""
        _check_name(name)
        existing = {c if isinstance(c, str) else c.name for c in client.list_collections()}
        if name not in existing:
            if not create:
                raise GalleryNotFound(
                    f"no gallery {name!r} in this store (have: {', '.join(sorted(existing)) or 'none'}); "
                    f"build it with `geoagent index SOURCE --collection {name}`"
                )
            if encoder_name is None or dim is None:
                raise ConfigError("a new gallery needs an encoder name and dimension")
            collection = client.create_collection(
                name,
                configuration={"hnsw": dict(HNSW)},
                metadata={"encoder": encoder_name, "dim": int(dim), "kind": kind},
                embedding_function=None,
            )
            return cls(collection, encoder_name, int(dim))
        collection = client.get_collection(name, embedding_function=None)
        meta = collection.metadata or {}
        built_by, built_dim = meta.get("encoder"), _dimension(meta.get("dim"))
        if not isinstance(built_by, str) or built_dim is None:
            raise StoreError(
                f"collection {name!r} was not made by geoagent, or its metadata is damaged "
                f"(encoder {meta.get('encoder')!r}, dim {meta.get('dim')!r}); use another --collection"
            )
        if encoder_name is not None and (
            built_by != encoder_name or (dim is not None and int(built_dim) != int(dim))
        ):
            raise EncoderMismatch(
                f"gallery {name!r} was built with encoder {built_by!r} ({built_dim}-d), not "
                f"{encoder_name!r} ({dim}-d): use --encoder {built_by}, or another --collection"
            )
        return cls(collection, built_by, int(built_dim))

    def count(self) -> int:
        return self.collection.count()

    def existing_ids(self, ids: Sequence[str], chunk: int = 5000) -> set[str]:
        """Which of ``ids`` are already stored."""
        found: set[str] = set()
        for i in range(0, len(ids), chunk):
            found.update(self.collection.get(ids=list(ids[i : i + chunk]), include=[])["ids"])
        return found

    def max_batch_size(self) -> int:
        """The most vectors one ``add`` may carry (Chroma's limit: 5461 embedded, per server)."""
        try:
            # The collection's own client: embedded or HTTP, it knows its limit.
            return int(self.collection._client.get_max_batch_size())
        except Exception:  # a client without it: the smallest limit Chroma has shipped
            return 5000

    def add(
        self,
        ids: Sequence[str],
        embeddings: np.ndarray,
        metadatas: Sequence[dict],
    ) -> None:
        """Upsert vectors; every vector must have this gallery's dimension."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise EncoderMismatch(
                f"gallery {self.name!r} holds {self.dim}-d vectors from {self.encoder_name!r}; "
                f"got shape {embeddings.shape}"
            )
        self.collection.upsert(ids=list(ids), embeddings=embeddings, metadatas=list(metadatas))

    def query(
        self,
        embedding: np.ndarray,
        k: int = 16,
        negatives: int | None = None,
        *,
        self_match: SelfMatch | None = None,
        exclude: bool = True,
    ) -> Retrieval:
        """Top-``k`` most similar entries and top-``negatives`` (default ``k``) least similar.

        Negatives are the nearest neighbours of the negated query: in cosine space
        they are the entries pointing most away from it (Img2Loc's "dissimilar" images).
        Entries that ``self_match`` recognises as the query photo go to ``self_matches``;
        with ``exclude`` they are left out of both lists (which still hold ``k`` entries).
        """
        q = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise EncoderMismatch(
                f"gallery {self.name!r} holds {self.dim}-d vectors from {self.encoder_name!r}; "
                f"the query is {q.shape[0]}-d: embed it with {self.encoder_name!r}"
            )
        n_neg = k if negatives is None else negatives
        k, n_neg = max(0, k), max(0, n_neg)
        signs = [sign for sign, n in ((1.0, k), (-1.0, n_neg)) if n > 0]
        if not signs and self_match is None:
            return Retrieval([], [])
        signs = signs or [1.0]
        # A few spare results so that ``k`` remain after leaving out the query's own copies.
        spare = 4 if self_match is not None else 0
        n = max(k, n_neg, 1) + spare
        while True:
            # One Chroma call for both searches, and no count() round trip: each call costs
            # ~1-2 ms of fixed overhead, more than the HNSW search itself (bench/bench_store.py).
            found = self._search(np.stack([sign * q for sign in signs]), n)
            lists = {sign: self._neighbours(f, sign) for sign, f in zip(signs, found, strict=True)}
            matched = [x for x in lists.get(1.0, []) if self_match and self_match.matches(x.image_id, x.meta, x.similarity)]
            # More copies than spare results (and the gallery may hold more): search deeper.
            if self_match is None or len(matched) < spare or len(found[0][0]) < n:
                break
            spare, n = spare * 4, n + spare * 3
        ids = {(m.image_id, m.source) for m in matched}
        if self_match is not None:
            ids |= {
                (x.image_id, x.source)
                for x in lists.get(-1.0, [])
                if self_match.matches(x.image_id, x.meta, -2.0)  # by id or hash only
            }

        def keep(xs: list[_Hit], count: int) -> list[Neighbour]:
            if exclude:
                xs = [x for x in xs if (x.image_id, x.source) not in ids]
            return [x.neighbour() for x in xs[:count]]

        return Retrieval(
            keep(lists.get(1.0, []), k),
            keep(lists.get(-1.0, []), n_neg),
            [m.neighbour() for m in matched],
        )

    def _search(self, queries: np.ndarray, n: int) -> list[tuple[list, list, list]]:
        """(ids, metadatas, distances) of the ``n`` nearest entries of each query row."""
        include = ["metadatas", "distances"]
        try:
            res = self.collection.query(query_embeddings=queries, n_results=n, include=include)
        except Exception:
            # Chroma 1.5 returns fewer results when the gallery holds fewer than ``n``; should
            # another build (e.g. a server of another version) refuse, retry capped at its size.
            total = self.count()
            if total >= n:
                raise
            if total == 0:
                return [([], [], [])] * len(queries)
            res = self.collection.query(query_embeddings=queries, n_results=total, include=include)
        return list(zip(res["ids"], res["metadatas"], res["distances"], strict=True))

    @staticmethod
    def _neighbours(found: tuple[list, list, list], sign: float) -> list[_Hit]:
        out = []
        for id_, meta, dist in zip(*found, strict=True):
            # Chroma's cosine distance is 1 - cos(x, query); for the negated query cos flips sign.
            meta = meta or {}
            point, _ = check_latlon(meta.get("lat"), meta.get("lon"))
            if point is None:
                continue  # an entry whose stored position was damaged is no evidence
            meta = {**meta, "lat": point.lat, "lon": point.lon}
            out.append(_Hit(str(meta.get("image_id", id_)), meta, sign * (1.0 - float(dist))))
        return out

    def metadatas(self, ids: Sequence[str] | None = None, batch: int = 10000) -> list[dict]:
        """The metadata of the entries ``ids`` (in that order; unknown ids left out), or of all."""
        if ids is not None:
            res = self.collection.get(ids=list(ids), include=["metadatas"]) if ids else {"ids": [], "metadatas": []}
            found = dict(zip(res["ids"], res["metadatas"], strict=True))
            return [found[i] for i in ids if i in found]
        out: list[dict] = []
        for offset in range(0, self.count(), batch):
            out.extend(self.collection.get(limit=batch, offset=offset, include=["metadatas"])["metadatas"])
        return out

    def all_embeddings(self, batch: int = 10000) -> tuple[list[str], np.ndarray, list[dict]]:
        """Every stored vector, in id order chunks (for caches that need the full matrix)."""
        ids: list[str] = []
        metas: list[dict] = []
        parts = []
        total = self.count()
        for offset in range(0, total, batch):
            res = self.collection.get(
                limit=batch, offset=offset, include=["embeddings", "metadatas"]
            )
            ids.extend(res["ids"])
            metas.extend(res["metadatas"])
            parts.append(np.asarray(res["embeddings"], dtype=np.float32))
        matrix = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
        return ids, matrix, metas


def _dimension(value: object) -> int | None:
    """A collection's recorded ``dim``, or None when it is not a positive whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        dim = value
    elif isinstance(value, float) and value.is_integer():
        dim = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        dim = int(value.strip())
    else:
        return None
    return dim if dim > 0 else None


def list_galleries(client) -> list[dict]:
    """Name, encoder, dimension and size of every geoagent collection in a store."""
    out = []
    for c in client.list_collections():
        col = client.get_collection(c if isinstance(c, str) else c.name, embedding_function=None)
        meta = col.metadata or {}
        if "encoder" in meta:
            out.append(
                {
                    "name": col.name,
                    "encoder": meta["encoder"],
                    "dim": _dimension(meta.get("dim")) or "?",
                    "kind": meta.get("kind", "images"),
                    "count": col.count(),
                }
            )
    return out

