"""``geoagent index SOURCE``: build a gallery from a CSV + image folder, or a folder of EXIF-tagged photos.

Resumable and idempotent: ids already stored are never re-embedded, so a re-run
(or a run after a crash) adds only what is missing. Bad entries never abort the
run: each is skipped with a one-line reason, counted, and written to an errors
file. Decoding runs in worker processes, the encoder in this one, and Chroma
writes (in large batches) in a writer thread, so the encoder, the slowest stage,
is never left waiting.

Sources: a CSV + photo folder, a folder of EXIF-tagged photos (read here), and
webdataset tar shards (``rag_store.sources``). Precomputed vectors go through
``index_vectors``.
"""

from __future__ import annotations

import contextlib
import csv
import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

import numpy as np
import torch

from .encoders import Encoder
from .errors import EncoderMismatch, SourceError
from .preprocess import Decoded, decode, decode_many
from .sources import (
    ID_COLUMNS,
    LAT_COLUMNS,
    LON_COLUMNS,
    PLACE_COLUMNS,
    Record,
    Skip,
    VectorSource,
    _coordinate,
    _pick,
    iter_shards,
    shard_paths,
    shards_name,
)
from .store import Gallery

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")


@dataclass
class IndexSummary:
    total: int = 0
    added: int = 0
    already_stored: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors_file: Path | None = None
    seconds: float = 0.0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def lines(self) -> list[str]:
        rate = self.added / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"{self.total} entries in source: {self.added} added, {self.already_stored} already "
            f"stored, {self.skipped_total} skipped ({self.seconds:.1f} s, {rate:.1f} images/s)"
        ]
        out += [f"  skipped, {kind}: {n}" for kind, n in sorted(self.skipped.items())]
        if self.skipped_total and self.errors_file:
            out.append(f"  reasons per entry: {self.errors_file}")
        return out


def _resolve_image(images: Path, image_id: str) -> Path:
    path = images / image_id
    if path.suffix.lower() in IMAGE_SUFFIXES or path.exists():
        return path
    # OSV-5M and MP-16 ids carry no extension.
    for suffix in (".jpg", ".jpeg", ".png"):
        if (candidate := images / f"{image_id}{suffix}").exists():
            return candidate
    return path


def read_csv_source(csv_path: Path, images: Path | None) -> tuple[list[Record], list[Skip]]:
    """Records of a CSV with an id and lat/lon columns; invalid rows become ``Skip``s."""
    if images is None:
        raise SourceError(f"{csv_path} is a CSV: pass the photo folder with --images DIR")
    if not images.is_dir():
        raise SourceError(f"--images {images} is not a folder")
    try:
        fh = csv_path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise SourceError(f"cannot read {csv_path}: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.DictReader(fh)
        try:
            columns = reader.fieldnames or []
        except (csv.Error, UnicodeDecodeError) as exc:
            # e.g. a photo or a non-UTF-8 file given as SOURCE
            raise SourceError(f"{csv_path} is not a readable UTF-8 CSV: {exc}") from exc
        id_col, lat_col, lon_col = (_pick(columns, n) for n in (ID_COLUMNS, LAT_COLUMNS, LON_COLUMNS))
        if not (id_col and lat_col and lon_col):
            raise SourceError(
                f"{csv_path} needs an id, a latitude and a longitude column "
                f"(e.g. IMG_ID,LAT,LON or id,latitude,longitude); it has: {', '.join(columns) or 'none'}"
            )
        place_cols = {c: col for c in PLACE_COLUMNS if (col := _pick(columns, (c,)))}
        records, skips, seen = [], [], set()
        try:
            for row in reader:
                image_id = (row.get(id_col) or "").strip()
                if not image_id:
                    skips.append(Skip(f"line {reader.line_num}", "missing id", "empty id"))
                    continue
                if image_id in seen:
                    skips.append(Skip(image_id, "duplicate id", f"line {reader.line_num} repeats it"))
                    continue
                seen.add(image_id)
                lat = _coordinate(row.get(lat_col), -90.0, 90.0)
                lon = _coordinate(row.get(lon_col), -180.0, 180.0)
                if lat is None or lon is None:
                    skips.append(
                        Skip(image_id, "bad coordinates",
                             f"lat={row.get(lat_col)!r} lon={row.get(lon_col)!r} missing or out of range")
                    )
                    continue
                places = tuple((c, row[place_cols[c]].strip()) for c in place_cols if row.get(place_cols[c]))
                records.append(Record(image_id, _resolve_image(images, image_id), lat, lon, places))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise SourceError(f"{csv_path} is not a readable CSV (line {reader.line_num}): {exc}") from exc
    return records, skips


def read_folder_source(folder: Path) -> list[Record]:
    """Every non-hidden file under ``folder``; coordinates come from EXIF when each is read."""
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return [Record(p.relative_to(folder).as_posix(), p) for p in files]


def read_source(
    source: str | Path, images: str | Path | None = None
) -> tuple[list[Record] | Iterable[Record | Skip], list[Skip]]:
    """The records of SOURCE and the entries already known to be bad.

    A CSV or a photo folder gives a list of records. Webdataset shards (a brace pattern
    such as ``shards/{00000..00099}.tar``, a folder of ``.tar`` files, or one ``.tar``)
    give a lazy stream of records and skips, read as the index run goes.
    """
    shards = shard_paths(source)
    if shards is not None:
        if images is not None:
            raise SourceError("--images goes with a CSV SOURCE; tar shards hold the photos themselves")
        return iter_shards(shards), []
    source = Path(source)
    if not source.exists():
        raise SourceError(
            f"SOURCE {source} does not exist: give a CSV (with --images DIR), a photo folder, "
            f"or webdataset shards (shards/{{00000..00099}}.tar)"
        )
    if source.is_dir():
        if images is not None:
            raise SourceError("--images goes with a CSV SOURCE; a folder SOURCE holds the photos itself")
        return read_folder_source(source), []
    return read_csv_source(source, Path(images) if images is not None else None)


def source_name(source: str | Path) -> str:
    """The ``source`` recorded with each vector: the CSV's or folder's stem, or the shards' pattern."""
    return shards_name(source) if shard_paths(source) is not None else Path(source).stem


def default_workers() -> int:
    """Decoding processes: every core but one (the encoder's), at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    return max(1, cores - 1)


class _SkipLog:
    """Counts skipped entries in the summary and writes their reasons to the errors file.

    The file is opened at the first skip, not before: a clean run leaves none behind.
    """

    def __init__(self, summary: IndexSummary, errors_file: str | Path | None):
        self.summary = summary
        self.path = Path(errors_file) if errors_file else None
        self.fh = None
        self.writer = None

    def skip(self, s: Skip) -> None:
        self.summary.skipped[s.kind] += 1
        if self.path is None:
            return
        if self.fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = self.path.open("w", newline="", encoding="utf-8")
            self.writer = csv.writer(self.fh)
            self.writer.writerow(["image_id", "reason", "detail"])
            self.summary.errors_file = self.path
        self.writer.writerow([s.image_id, s.kind, s.detail])
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


class _Writer:
    """Adds vectors to the gallery in large batches, in its own thread, one add at a time.

    HNSW insertion costs the same per vector whatever the batch, but each Chroma call has
    a fixed cost (a transaction, a log flush): ``write_batch`` vectors per call, up to
    Chroma's maximum batch, amortise it. At most one add is in flight and one batch
    filling, so memory stays bounded; a failed add is re-raised at the next ``put``.
    """

    def __init__(self, gallery: Gallery, write_batch: int):
        self.gallery = gallery
        self.write_batch = max(1, min(write_batch, gallery.max_batch_size()))
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="gallery-writer")
        self.pending: Future | None = None
        self.ids: list[str] = []
        self.vectors: list[np.ndarray] = []
        self.metas: list[dict] = []

    def put(self, ids: list[str], vectors: np.ndarray, metas: list[dict]) -> None:
        self.ids += ids
        self.vectors.append(vectors)
        self.metas += metas
        if len(self.ids) >= self.write_batch:
            self._submit()

    def _submit(self) -> None:
        if self.pending is not None:
            self.pending.result()
        ids, vectors, metas = self.ids, np.concatenate(self.vectors), self.metas
        self.ids, self.vectors, self.metas = [], [], []
        self.pending = self.pool.submit(self.gallery.add, ids, vectors, metas)

    def close(self) -> None:
        try:
            if self.ids:
                self._submit()
            if self.pending is not None:
                self.pending.result()
        finally:
            self.pool.shutdown(wait=True)

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an error, what was embedded is still written (a resumed run skips it); should
        # that last write fail too, the first error is the one reported.
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise


def _unstored(
    items: Iterable[Record | Skip], gallery: Gallery, summary: IndexSummary, skip: Callable[[Skip], None],
    chunk: int = 2000,
) -> Iterator[Record]:
    """The records not yet in ``gallery``, checked ``chunk`` ids at a time, as ``items`` stream in."""
    for group in _batched(items, chunk):
        records = []
        for item in group:
            summary.total += 1
            if isinstance(item, Skip):
                skip(item)
            else:
                records.append(item)
        stored = gallery.existing_ids([r.image_id for r in records]) if records else set()
        summary.already_stored += len(stored)
        yield from (r for r in records if r.image_id not in stored)


def _batched(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while group := list(islice(it, n)):
        yield group


def index_source(
    source: str | Path,
    gallery: Gallery,
    encoder: Encoder,
    *,
    images: str | Path | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    write_batch: int = 4096,
    errors_file: str | Path | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    prepared: tuple[list[Record] | Iterable[Record | Skip], list[Skip]] | None = None,
) -> IndexSummary:
    """Embed every photo of ``source`` not yet in ``gallery``; see the module doc.

    ``batch_size``: photos per forward pass (default: the encoder's, per device).
    ``workers``: decoding processes (default ``default_workers()``; 0 decodes in this
    process, for debugging). ``write_batch``: vectors per Chroma add.
    ``prepared`` is ``read_source(source, images)`` when the caller has already read it
    (the CLI does, to refuse a bad SOURCE before it creates a gallery).
    ``progress(done, total)``: ``total`` is None for a streamed source (tar shards).
    """
    batch_size = encoder.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise SourceError(f"--batch-size must be at least 1, got {batch_size}")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise SourceError(f"--workers must be 0 or more, got {workers}")
    started = time.perf_counter()
    records, skips = prepared if prepared is not None else read_source(source, images)
    name = source_name(source)
    summary = IndexSummary()

    log = _SkipLog(summary, errors_file)
    skip = log.skip

    total: int | None = None
    if isinstance(records, list):  # a known list: check it all first, for an exact progress total
        summary.total = len(records) + len(skips)
        for s in skips:
            skip(s)
        stored = gallery.existing_ids([r.image_id for r in records])
        todo: Iterable[Record] = [r for r in records if r.image_id not in stored]
        summary.already_stored = len(records) - len(todo)
        total = len(todo)
    else:
        todo = _unstored(chain(skips, records), gallery, summary, skip)
    if progress:
        progress(0, total)

    done = 0
    try:
        with _Writer(gallery, write_batch) as writer:
            batch: list[tuple[Record, np.ndarray]] = []
            for result in _decoded(todo, encoder, workers):
                if isinstance(result, Skip):
                    skip(result)
                else:
                    batch.append(result)
                    if len(batch) >= batch_size:
                        _embed(batch, encoder, writer, name)
                        summary.added += len(batch)
                        batch = []
                done += 1
                if progress:
                    progress(done, total)
            if batch:
                _embed(batch, encoder, writer, name)
                summary.added += len(batch)
    finally:
        log.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _embed(batch: list[tuple[Record, np.ndarray]], encoder: Encoder, writer: _Writer, name: str) -> None:
    vectors = encoder.forward(torch.from_numpy(np.stack([pixels for _, pixels in batch])))
    metas = [{"lat": r.lat, "lon": r.lon, "image_id": r.image_id, "source": name} for r, _ in batch]
    writer.put([r.image_id for r, _ in batch], vectors, metas)


def _yield_to_the_encoder() -> None:
    """Decoding workers run at a lower priority than the encoder's process.

    The encoder is the slow stage, and on the CPU its intra-op threads wait for each
    other at every layer: a decoding process that takes a core from one of them stalls
    them all. Niced, the workers still use every idle cycle, and decoding (10-20 ms of
    CPU a photo) stays far ahead of encoding.
    """
    with contextlib.suppress(OSError):  # not permitted here: run at the same priority
        os.nice(5)


def _decoded(records: Iterable[Record], encoder: Encoder, workers: int) -> Iterator[Decoded | Skip]:
    """``preprocess.decode`` of each record, in order, by ``workers`` processes (0: here).

    Records go to the workers in chunks (fewer round trips), with enough chunks in flight
    to keep every worker busy while the encoder works through what came back. Workers
    are spawned, not forked: this process has torch's thread pools, which a fork would
    copy in an unusable state, and the workers need neither torch nor the model.
    """
    transform = encoder.transform
    if workers == 0:
        for record in records:
            yield decode(record, transform)
        return
    chunk = 16
    ahead = workers * 4
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_yield_to_the_encoder) as pool:
        queue: deque[Future] = deque()
        groups = _batched(records, chunk)
        try:
            for group in groups:
                queue.append(pool.submit(decode_many, group, transform))
                if len(queue) >= ahead:
                    break
            while queue:
                try:
                    results = queue.popleft().result()
                except BrokenProcessPool as exc:
                    raise SourceError(
                        "a decoding worker process died (out of memory?); run the same command "
                        "again to resume, with fewer --workers"
                    ) from exc
                group = next(groups, None)
                if group is not None:
                    queue.append(pool.submit(decode_many, group, transform))
                yield from results
        finally:
            for future in queue:
                future.cancel()


def index_vectors(
    vectors: VectorSource,
    gallery: Gallery,
    *,
    source: str | None = None,
    write_batch: int = 4096,
    errors_file: str | Path | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> IndexSummary:
    """Add precomputed vectors (``rag_store.sources.read_vectors``) not yet in ``gallery``.

    Same rules as ``index_source``: resumable, idempotent, bad rows skipped with reasons.
    The dimension is checked against the gallery before anything is written; vectors are
    stored L2-normalised, as the encoders give them.
    """
    if vectors.dim != gallery.dim:
        raise EncoderMismatch(
            f"{vectors.path} holds {vectors.dim}-d vectors; gallery {gallery.name!r} holds "
            f"{gallery.dim}-d vectors from {gallery.encoder_name!r}"
        )
    started = time.perf_counter()
    summary = IndexSummary(total=vectors.total)
    log = _SkipLog(summary, errors_file)
    name = source or vectors.path.stem
    seen: set[str] = set()
    done = 0
    if progress:
        progress(0, vectors.total)
    try:
        with _Writer(gallery, write_batch) as writer:
            for item in vectors.batches:
                if isinstance(item, Skip):
                    log.skip(item)
                    done += 1
                    continue
                stored = gallery.existing_ids(list(dict.fromkeys(item.ids)))  # Chroma refuses repeats
                keep = []
                for i, id_ in enumerate(item.ids):
                    if id_ in seen:
                        log.skip(Skip(id_, "duplicate id", f"{vectors.path}: the id repeats an earlier row"))
                    elif id_ in stored:
                        summary.already_stored += 1
                    else:
                        keep.append(i)
                    seen.add(id_)
                if keep:
                    matrix = item.vectors[keep]
                    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
                    metas = [
                        {"lat": item.lat[i], "lon": item.lon[i], "image_id": item.ids[i], "source": name}
                        for i in keep
                    ]
                    writer.put([item.ids[i] for i in keep], matrix, metas)
                    summary.added += len(keep)
                done += len(item.ids)
                if progress:
                    progress(done, vectors.total)
    finally:
        log.close()
    summary.seconds = time.perf_counter() - started
    return summary
