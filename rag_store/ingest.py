"""``geoagent index SOURCE``: build a gallery from a CSV + image folder, or a folder of EXIF-tagged photos.

Resumable and idempotent: ids already stored are never re-embedded, so a re-run
(or a run after a crash) adds only what is missing. Bad entries never abort the
run: each is skipped with a one-line reason, counted, and written to an errors
file. Decoding runs in worker threads and Chroma writes in a writer thread, so
the encoder, the slowest stage, is never left waiting.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .encoders import Encoder
from .errors import ImageError, SourceError
from .images import load_image, read_exif_gps
from .store import Gallery, file_sha256

# Column names accepted for each field (lower-cased): Im2GPS3k / YFCC4k use IMG_ID,LAT,LON;
# MP-16 uses IMG_ID,AUTHOR,LAT,LON; OSV-5M uses id,latitude,longitude.
ID_COLUMNS = ("img_id", "image_id", "id", "photo_id", "img", "image")
LAT_COLUMNS = ("lat", "latitude", "gps_lat")
LON_COLUMNS = ("lon", "lng", "long", "longitude", "gps_lon")
PLACE_COLUMNS = ("country", "region", "city")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")


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


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def _coordinate(text: str | None, lo: float, hi: float) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and lo <= value <= hi else None


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

    def skip(s: Skip) -> None:
        summary.skipped[s.kind] += 1
        if errors_path is None:
            return
        if not errors:
            errors_path.parent.mkdir(parents=True, exist_ok=True)
            errors["fh"] = errors_path.open("w", newline="", encoding="utf-8")
            errors["csv"] = csv.writer(errors["fh"])
            errors["csv"].writerow(["image_id", "reason", "detail"])
            summary.errors_file = errors_path
        errors["csv"].writerow([s.image_id, s.kind, s.detail])
        errors["fh"].flush()

    for s in skips:
        skip(s)
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
        if errors:
            errors["fh"].close()
    summary.seconds = time.perf_counter() - started
    return summary
