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
import sys
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

from .coords import check_latlon
from .encoders import Encoder
from .errors import EncoderMismatch, OutputError, SourceError
from .images import IMAGE_SUFFIXES
from .outputs import open_output
from .preprocess import Decoded, decode, decode_many
from .sources import (
    Record,
    Skip,
    VectorSource,
    iter_shards,
    shard_paths,
    shards_name,
)
from .store import Gallery
from .tables import ID_COLUMNS, LAT_COLUMNS, LON_COLUMNS, PLACE_COLUMNS, read_csv


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


def _resolve_image(images: Path, image_id: str) -> Path | Skip:
    """The photo of ``image_id`` under ``images``, or a ``Skip`` when the id points outside it.

    An id is a path relative to ``--images``: an absolute path, a ``..`` part, or a symlink
    that resolves outside the folder would let a crafted CSV read any file on the machine.
    (String operations, not pathlib: this runs once per row, 4.7M times for MP-16.)
    """
    parts = image_id.replace("\\", "/").split("/")
    if image_id.startswith(("/", "\\")) or os.path.isabs(image_id) or ".." in parts:
        return Skip(image_id, "path outside --images", f"{image_id!r} is not a path inside --images")
    root = str(images)
    found = os.path.join(root, image_id)
    if os.path.splitext(found)[1].lower() not in IMAGE_SUFFIXES and not os.path.exists(found):
        # OSV-5M and MP-16 ids carry no extension.
        for suffix in (".jpg", ".jpeg", ".png"):
            if os.path.exists(found + suffix):
                found += suffix
                break
    if not _stays_inside(root, found):
        return Skip(image_id, "path outside --images", f"{image_id!r} resolves outside --images (a symlink?)")
    return Path(found)


def _stays_inside(root: str, path: str) -> bool:
    """Whether ``path`` (lexically under ``root``) still is once symlinks are followed.

    One ``lstat`` per part of the id: resolving every path (``realpath``) costs several
    times more; only a path through a symlink is resolved.
    """
    current = root
    for part in path[len(root) :].strip("/").split("/"):
        current = os.path.join(current, part)
        if os.path.islink(current):
            try:
                real, real_root = os.path.realpath(path), os.path.realpath(root)
            except (OSError, ValueError):  # a symlink loop
                return False
            return real == real_root or real.startswith(real_root.rstrip("/") + "/")
    return True


def read_csv_source(csv_path: Path, images: Path | None) -> tuple[list[Record], list[Skip]]:
    """Records of a CSV with an id and lat/lon columns; invalid rows become ``Skip``s."""
    table = read_csv(csv_path, "gallery source")  # first: a FIFO or a folder is refused unread
    if images is None:
        raise SourceError(f"{csv_path} is a CSV: pass the photo folder with --images DIR")
    if not images.is_dir():
        raise SourceError(f"--images {images} is not a folder")
    id_col = table.column(ID_COLUMNS, "id")
    lat_col = table.column(LAT_COLUMNS, "latitude")
    lon_col = table.column(LON_COLUMNS, "longitude")
    place_cols = {c: col for c in PLACE_COLUMNS if (col := table.column((c,), c, required=False))}
    records, skips, seen = [], [], set()
    for row in table.rows():
        image_id = row.get(id_col)
        if not image_id:
            skips.append(Skip(f"line {row.line}", "missing id", "empty id"))
            continue
        if image_id in seen:
            skips.append(Skip(image_id, "duplicate id", f"line {row.line} repeats it"))
            continue
        point, reason = check_latlon(row.get(lat_col), row.get(lon_col))
        if point is None:
            # A bad row does not take its id: a later valid row with the same id is kept.
            skips.append(Skip(image_id, "bad coordinates", f"line {row.line}: {reason}"))
            continue
        path = _resolve_image(images, image_id)
        if isinstance(path, Skip):
            skips.append(path)
            continue
        seen.add(image_id)
        places = tuple((c, row.get(col)) for c, col in place_cols.items() if row.get(col))
        records.append(Record(image_id, path, point.lat, point.lon, places))
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
    """Decoding processes: every core but one (the encoder's); none on 2 cores or fewer.

    On 2 cores a decoding process takes a core from the encoder's threads, which wait for
    each other at every layer: measured on 300 sample photos, efficientnet-lite0, idle 2-core
    machine, 1 worker process gave 0.62 x min(decode, encode) and decoding in a thread of
    the encoder's process gave more (bench/RESULTS.md). With more cores the processes win.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    return 0 if cores <= 2 else cores - 1


class _SkipLog:
    """Counts skipped entries in the summary and writes their reasons to the errors file.

    The file is opened at the first skip, not before: a clean run leaves none behind.
    """

    def __init__(self, summary: IndexSummary, errors_file: str | Path | None):
        self.summary = summary
        self.path = Path(errors_file) if errors_file else None
        self.outputs = contextlib.ExitStack()
        self.fh = None
        self.writer = None

    def skip(self, s: Skip) -> None:
        self.summary.skipped[s.kind] += 1
        if self.path is None:
            return
        if self.fh is None:
            self.fh = self.outputs.enter_context(open_output(self.path, what="errors file", newline=""))
            self.writer = csv.writer(self.fh)
            self.writer.writerow(["image_id", "reason", "detail"])
            self.summary.errors_file = self.path
        try:
            self.writer.writerow([s.image_id, s.kind, s.detail])
            self.fh.flush()
        except OSError as exc:  # e.g. the disk filled up
            raise OutputError(f"cannot write errors file {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        self.outputs.close()


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
    ``workers``: decoding processes (default ``default_workers()``; 0 decodes in a thread of this
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
    metas = [
        # sha256: self-match exclusion in benchmarks; path: few-shot example photos.
        {"lat": r.lat, "lon": r.lon, "image_id": r.image_id, "source": name, "sha256": r.sha256,
         **({"path": str(r.path.resolve())} if r.path is not None else {})}
        for r, _ in batch
    ]
    writer.put([r.image_id for r, _ in batch], vectors, metas)


def _yield_to_the_encoder() -> None:
    """Decoding runs at a lower priority than the encoder.

    The encoder is the slow stage, and on the CPU its intra-op threads wait for each
    other at every layer: a decoder that takes a core from one of them stalls them all.
    Niced, decoding still gets every idle cycle, and at 4-20 ms of CPU a photo it stays
    far ahead of encoding. Called in worker processes, and on Linux in the decoding thread
    too: there nice(2) sets the calling thread's priority only, while elsewhere it would
    lower the whole process, the encoder included.
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
        # One decoding thread, a few batches ahead: PIL releases the GIL while it decodes
        # and resizes, so decoding overlaps the encoder's forward passes.
        nice_thread = _yield_to_the_encoder if sys.platform.startswith("linux") else None
        with ThreadPoolExecutor(1, thread_name_prefix="decode", initializer=nice_thread) as pool:
            queue: deque[Future] = deque()
            it = iter(records)
            queue.extend(pool.submit(decode, r, transform) for r in islice(it, 64))
            try:
                while queue:
                    result = queue.popleft().result()
                    nxt = next(it, None)
                    if nxt is not None:
                        queue.append(pool.submit(decode, nxt, transform))
                    yield result
            finally:
                for future in queue:
                    future.cancel()
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
