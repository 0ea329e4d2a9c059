"""The gallery store: one Chroma collection per gallery of geotagged images.

Embedded persistent Chroma (a directory) is the default; ``chroma_url`` selects
a Chroma server (``chroma run``) instead. Each collection records the encoder and
dimension that built it, and refuses vectors from any other encoder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

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


def open_client(store: str | Path | None = None, chroma_url: str | None = None):
    """A Chroma client: a server at ``chroma_url``, else an embedded store in ``store``."""
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
    """Most similar (positives) and least similar (negatives) gallery entries of a query."""

    positives: list[Neighbour]
    negatives: list[Neighbour]


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
        built_by, built_dim = meta.get("encoder"), meta.get("dim")
        if built_by is None or built_dim is None:
            raise StoreError(
                f"collection {name!r} was not made by geoagent (no encoder recorded); "
                f"use another --collection"
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

    def query(self, embedding: np.ndarray, k: int = 16, negatives: int | None = None) -> Retrieval:
        """Top-``k`` most similar entries and top-``negatives`` (default ``k``) least similar.

        Negatives are the nearest neighbours of the negated query: in cosine space
        they are the entries pointing most away from it (Img2Loc's "dissimilar" images).
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
        if not signs:
            return Retrieval([], [])
        # One Chroma call for both searches, and no count() round trip: each call costs
        # ~1-2 ms of fixed overhead, more than the HNSW search itself (bench/bench_store.py).
        found = self._search(np.stack([sign * q for sign in signs]), max(k, n_neg))
        lists = dict(zip(signs, found, strict=True))
        pos = self._neighbours(lists[1.0], k, 1.0) if k else []
        neg = self._neighbours(lists[-1.0], n_neg, -1.0) if n_neg else []
        return Retrieval(pos, neg)

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
    def _neighbours(found: tuple[list, list, list], n: int, sign: float) -> list[Neighbour]:
        out = []
        for id_, meta, dist in list(zip(*found, strict=True))[:n]:
            # Chroma's cosine distance is 1 - cos(x, query); for the negated query cos flips sign.
            similarity = sign * (1.0 - float(dist))
            out.append(
                Neighbour(
                    image_id=str(meta.get("image_id", id_)),
                    lat=float(meta["lat"]),
                    lon=float(meta["lon"]),
                    similarity=similarity,
                    source=str(meta.get("source", "")),
                )
            )
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
                    "dim": meta.get("dim"),
                    "kind": meta.get("kind", "images"),
                    "count": col.count(),
                }
            )
    return out

