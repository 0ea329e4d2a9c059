"""``geoagent index SOURCE``: build a gallery from a CSV + image folder, or a folder of EXIF-tagged photos.

Resumable and idempotent: ids already stored are never re-embedded, so a re-run
(or a run after a crash) adds only what is missing. Bad entries never abort the
run: each is skipped with a one-line reason, counted, and written to an errors
file. Decoding runs in worker threads and Chroma writes in a writer thread, so
the encoder, the slowest stage, is never left waiting.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .coords import check_latlon
from .encoders import Encoder
from .errors import ImageError, OutputError, SourceError
from .images import IMAGE_SUFFIXES, load_image, read_exif_gps
from .outputs import open_output
from .store import Gallery, file_sha256
from .tables import ID_COLUMNS, LAT_COLUMNS, LON_COLUMNS, PLACE_COLUMNS, read_csv


@dataclass(frozen=True)
class Record:
    """One gallery candidate: an id, its photo, and (for CSV sources) its coordinates."""

    image_id: str
    path: Path
    lat: float | None = None
    lon: float | None = None
    # country / region / city when the CSV gives them (OSV-5M): benchmark truth, not stored.
    places: tuple[tuple[str, str], ...] = ()
    sha256: str = ""  # of the file, stored so that a benchmark can tell a query's own photo


@dataclass(frozen=True)
class Skip:
    image_id: str
    kind: str
    detail: str


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


def read_source(source: str | Path, images: str | Path | None = None) -> tuple[list[Record], list[Skip]]:
    source = Path(source)
    if not source.exists():
        raise SourceError(f"SOURCE {source} does not exist: give a CSV (with --images DIR) or a photo folder")
    if source.is_dir():
        if images is not None:
            raise SourceError("--images goes with a CSV SOURCE; a folder SOURCE holds the photos itself")
        return read_folder_source(source), []
    return read_csv_source(source, Path(images) if images is not None else None)


def _prepare(record: Record, encoder: Encoder) -> tuple[Record, torch.Tensor] | Skip:
    try:
        image = load_image(record.path)
    except ImageError as exc:
        return Skip(record.image_id, exc.kind, str(exc))
    if record.lat is None:
        gps = read_exif_gps(record.path)
        if gps is None:
            return Skip(record.image_id, "no EXIF GPS", f"{record.path} has no usable GPS in its EXIF")
        record = Record(record.image_id, record.path, gps[0], gps[1], record.places)
    record = dataclasses.replace(record, sha256=file_sha256(record.path.read_bytes()))
    return record, encoder.preprocess(image)


def index_source(
    source: str | Path,
    gallery: Gallery,
    encoder: Encoder,
    *,
    images: str | Path | None = None,
    batch_size: int = 32,
    workers: int = 2,
    errors_file: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    prepared: tuple[list[Record], list[Skip]] | None = None,
) -> IndexSummary:
    """Embed every photo of ``source`` not yet in ``gallery``; see the module doc.

    ``prepared`` is ``read_source(source, images)`` when the caller has already read it
    (the CLI does, to refuse a bad SOURCE before it creates a gallery).
    """
    if batch_size < 1:
        raise SourceError(f"--batch-size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    records, skips = prepared if prepared is not None else read_source(source, images)
    source_name = Path(source).stem
    summary = IndexSummary(total=len(records) + len(skips))
    stored = gallery.existing_ids([r.image_id for r in records])
    todo = [r for r in records if r.image_id not in stored]
    summary.already_stored = len(records) - len(todo)

    errors_path = Path(errors_file) if errors_file else None
    errors: dict = {}  # the errors file is opened at the first skip, not before
    outputs = contextlib.ExitStack()

    def skip(s: Skip) -> None:
        summary.skipped[s.kind] += 1
        if errors_path is None:
            return
        if not errors:
            errors["fh"] = outputs.enter_context(open_output(errors_path, what="errors file", newline=""))
            errors["csv"] = csv.writer(errors["fh"])
            errors["csv"].writerow(["image_id", "reason", "detail"])
            summary.errors_file = errors_path
        try:
            errors["csv"].writerow([s.image_id, s.kind, s.detail])
            errors["fh"].flush()
        except OSError as exc:  # e.g. the disk filled up
            raise OutputError(f"cannot write errors file {errors_path}: {exc.strerror or exc}") from None

    try:
        for s in skips:
            skip(s)
    except BaseException:
        outputs.close()
        raise
    done = 0
    if progress:
        progress(0, len(todo))
    pending_write: Future | None = None
    batch: list[tuple[Record, torch.Tensor]] = []

    def flush(writer: ThreadPoolExecutor) -> Future | None:
        ids = [r.image_id for r, _ in batch]
        vectors = encoder.forward(torch.stack([t for _, t in batch]))
        metas = [
            # sha256: self-match exclusion in benchmarks; path: few-shot example photos.
            {"lat": r.lat, "lon": r.lon, "image_id": r.image_id, "source": source_name,
             "sha256": r.sha256, "path": str(r.path.resolve())}
            for r, _ in batch
        ]
        if pending_write is not None:
            pending_write.result()  # one write in flight at a time; re-raises a failed write
        return writer.submit(gallery.add, ids, vectors, metas)

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool, ThreadPoolExecutor(1) as writer:
            queue: deque[Future] = deque()
            feed: Iterator[Record] = iter(todo)
            lookahead = batch_size * 3
            for record in feed:
                queue.append(pool.submit(_prepare, record, encoder))
                if len(queue) >= lookahead:
                    break
            while queue:
                result = queue.popleft().result()
                nxt = next(feed, None)
                if nxt is not None:
                    queue.append(pool.submit(_prepare, nxt, encoder))
                if isinstance(result, Skip):
                    skip(result)
                else:
                    batch.append(result)
                    if len(batch) >= batch_size:
                        pending_write = flush(writer)
                        summary.added += len(batch)
                        batch = []
                done += 1
                if progress:
                    progress(done, len(todo))
            if batch:
                pending_write = flush(writer)
                summary.added += len(batch)
                batch = []
            if pending_write is not None:
                pending_write.result()
    finally:
        outputs.close()
    summary.seconds = time.perf_counter() - started
    return summary
