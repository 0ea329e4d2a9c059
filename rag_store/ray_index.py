"""``geoagent index SOURCE --ray ADDRESS``: build a gallery on a Ray cluster (``pip install 'geoagent[ray]'``).

The same sources, skips and resumability as ``rag_store.ingest.index_source``, spread
over a cluster with Ray Data::

    read      shards: one task per tar shard (rag_store.sources.iter_shard);
              CSV / photo folder: the records read here, photos on a shared filesystem
    unstored  drop ids the gallery already holds (one Chroma lookup per block),
              before any photo is decoded
    decode    CPU tasks: rag_store.preprocess.decode -> uint8 crops
    embed     an actor pool: one actor per GPU (float16), else one per 2 CPU slots;
              each loads the encoder once and adds its vectors to the Chroma server
    driver    counts what was added and skipped, writes the errors file

Every worker reaches the gallery through the Chroma server at ``--chroma-url``. A run
that stops part-way is resumed by running it again: stored ids are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import ConfigError, SourceError
from .sources import Record, Skip

_COLUMNS = ("image_id", "path", "data", "lat", "lon", "kind", "detail", "sha256")


def _row(item: Record | Skip) -> dict:
    if isinstance(item, Skip):
        return {"image_id": item.image_id, "path": "", "data": None, "lat": float("nan"),
                "lon": float("nan"), "kind": item.kind, "detail": item.detail, "sha256": ""}
    return {"image_id": item.image_id, "path": str(item.path), "data": item.data,
            "lat": float("nan") if item.lat is None else item.lat,
            "lon": float("nan") if item.lon is None else item.lon, "kind": "", "detail": "", "sha256": ""}


def _record(row: dict) -> Record:
    lat, lon = float(row["lat"]), float(row["lon"])
    return Record(
        str(row["image_id"]), Path(str(row["path"])),
        None if np.isnan(lat) else lat, None if np.isnan(lon) else lon,
        data=row["data"] if isinstance(row["data"], bytes) else None,
    )


def _rows(batch: dict) -> Iterator[dict]:
    n = len(batch["image_id"])
    for i in range(n):
        yield {k: (batch[k][i] if k in batch else None) for k in _COLUMNS}


def _batch(rows: list[dict], extra: dict | None = None) -> dict:
    out = {k: np.array([r[k] for r in rows], dtype=object) for k in _COLUMNS}
    for k in ("lat", "lon"):
        out[k] = out[k].astype(np.float64)
    out.update(extra or {})
    return out


def _read_shard(row: dict) -> list[dict]:
    from .sources import iter_shard

    return [_row(item) for item in iter_shard(Path(row["shard"]))]


class _Unstored:
    """Marks rows whose id the gallery already holds, so that nothing decodes them again."""

    def __init__(self, chroma_url: str, collection: str):
        from .store import Gallery, open_client

        self.gallery = Gallery.open(open_client(None, chroma_url), collection)

    def __call__(self, batch: dict) -> dict:
        rows = list(_rows(batch))
        todo = list(dict.fromkeys(r["image_id"] for r in rows if not r["kind"]))
        stored = self.gallery.existing_ids(todo) if todo else set()
        for r in rows:
            if not r["kind"] and r["image_id"] in stored:
                r["kind"], r["detail"] = "already stored", ""
        return _batch(rows)


def _decode(batch: dict, size: int, transform) -> dict:
    from .preprocess import decode

    rows, pixels = [], []
    for r in _rows(batch):
        crop = np.zeros((size, size, 3), np.uint8)
        if not r["kind"]:
            out = decode(_record(r), transform)
            if isinstance(out, Skip):
                r["kind"], r["detail"] = out.kind, out.detail
            else:
                r["lat"], r["lon"], r["sha256"] = out[0].lat, out[0].lon, out[0].sha256
                crop = out[1]
        r["data"] = None  # the bytes are not needed past this point
        rows.append(r)
        pixels.append(crop)
    return _batch(rows, {"pixels": np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)})


class _EmbedAndStore:
    """An actor: loads the encoder once, embeds its batches and adds them to the gallery."""

    def __init__(self, encoder_name: str, device: str, chroma_url: str, collection: str, source: str):
        import torch

        from .encoders import create_encoder
        from .store import Gallery, open_client

        if device == "auto" and not torch.cuda.is_available():
            device = "cpu"
        self.encoder = create_encoder(encoder_name, device=device)
        self.gallery = Gallery.open(
            open_client(None, chroma_url), collection, encoder_name=self.encoder.name, dim=self.encoder.dim
        )
        self.source = source

    def __call__(self, batch: dict) -> dict:
        import torch

        rows = list(_rows(batch))
        good = [i for i, r in enumerate(rows) if not r["kind"]]
        if good:
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][good]))
            vectors = self.encoder.forward(pixels)
            ids = [str(rows[i]["image_id"]) for i in good]
            metas = [
                # sha256: self-match exclusion in benchmarks (as ingest records it).
                {"lat": float(rows[i]["lat"]), "lon": float(rows[i]["lon"]), "image_id": ids[j], "source": self.source,
                 "sha256": str(rows[i]["sha256"] or "")}
                for j, i in enumerate(good)
            ]
            self.gallery.add(ids, vectors, metas)
            for i in good:
                rows[i]["kind"] = "added"
        return {
            "image_id": np.array([r["image_id"] for r in rows], dtype=object),
            "kind": np.array([r["kind"] for r in rows], dtype=object),
            "detail": np.array([r["detail"] for r in rows], dtype=object),
        }


def connect(address: str, num_cpus: int | None = None) -> None:
    """Join (or for ``local``, start) the Ray cluster at ``address``."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: pip install 'geoagent[ray]'") from exc
    if ray.is_initialized():
        return
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"--ray {address}: cannot join the Ray cluster: {str(exc).splitlines()[0]}") from exc


def index_with_ray(
    source: str | Path,
    *,
    address: str,
    chroma_url: str,
    collection: str = "gallery",
    encoder_name: str = "efficientnet-lite0",
    images: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    actors: int | None = None,
    errors_file: str | Path | None = None,
):
    """Index SOURCE on the Ray cluster at ``address`` into the gallery at ``chroma_url``.

    Returns an ``IndexSummary`` with ``encoder_name``, ``dim`` and ``gallery_count`` set.
    """
    from .encoders import create_encoder
    from .ingest import IndexSummary, _SkipLog, read_source, source_name
    from .sources import shard_paths
    from .store import Gallery, open_client

    started = time.perf_counter()
    shards = shard_paths(source)
    records, skips = ([], []) if shards is not None else read_source(source, images)
    # The driver loads the encoder once, on its CPU, for its name, dimension and
    # preprocessing geometry (a Transform is a few numbers: it travels to the tasks).
    local = create_encoder(encoder_name, device="cpu")
    name, dim, transform = local.name, local.dim, local.transform
    gallery = Gallery.open(open_client(None, chroma_url), collection, encoder_name=name, dim=dim, create=True)

    connect(address)
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if actors is None:
        actors = gpus or max(1, int(resources.get("CPU", 1)) // 2)
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device.startswith("cuda") and not gpus:
        raise ConfigError(f"--device {device}: the Ray cluster at {address} has no GPU")
    per_batch = batch_size or (256 if device.startswith("cuda") else 32)

    if shards is not None:
        ds = ray.data.from_items([{"shard": str(p)} for p in shards]).flat_map(_read_shard)
    else:
        ds = ray.data.from_items([_row(r) for r in records] or [_row(Skip("", "empty", ""))])
    ds = ds.map_batches(_Unstored, fn_constructor_args=(chroma_url, collection), concurrency=1,
                        batch_size=2000, batch_format="numpy", num_cpus=0)
    ds = ds.map_batches(_decode, fn_args=(transform.size, transform), batch_size=per_batch,
                        batch_format="numpy", num_cpus=1)
    ds = ds.map_batches(
        _EmbedAndStore,
        fn_constructor_args=(encoder_name, device, chroma_url, collection, source_name(source)),
        concurrency=actors, batch_size=per_batch, batch_format="numpy",
        num_gpus=1 if device.startswith("cuda") else 0, num_cpus=0 if device.startswith("cuda") else 1,
    )

    summary = IndexSummary()
    log = _SkipLog(summary, errors_file)
    try:
        for s in skips:
            summary.total += 1
            log.skip(s)
        for row in ds.iter_rows():
            kind = str(row["kind"])
            if kind == "empty":
                continue
            summary.total += 1
            if kind == "added":
                summary.added += 1
            elif kind == "already stored":
                summary.already_stored += 1
            else:
                log.skip(Skip(str(row["image_id"]), kind, str(row["detail"])))
    except Exception as exc:
        if type(exc).__module__.startswith("ray"):
            raise SourceError(f"the Ray run failed: {str(exc).splitlines()[0]}") from exc
        raise
    finally:
        log.close()
    summary.seconds = time.perf_counter() - started
    summary.encoder_name, summary.dim, summary.gallery_count = name, dim, gallery.count()
    return summary
