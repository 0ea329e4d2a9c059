"""Benchmark datasets: the photos to locate and their true coordinates.

- ``csv``: Im2GPS3k / YFCC4k (``IMG_ID,LAT,LON``), MP-16 or OSV-5M (``id,latitude,
  longitude,country,region,city``) CSV plus an image folder. Read by the same code as
  ``geoagent index`` so that both accept the same files.
- ``llmgeo``: LLMGeo's street-view folder, coordinates in the file names
  (``<lon>_<lat>_...jpg``); its task is country level.
- ``exif``: a folder of photos carrying EXIF GPS.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from rag_store.coords import check_latlon
from rag_store.errors import SourceError
from rag_store.images import read_exif_gps
from rag_store.ingest import IMAGE_SUFFIXES, Skip, read_csv_source, read_folder_source

_LLMGEO_NAME = re.compile(r"^(-?\d+(?:\.\d+)?)_(-?\d+(?:\.\d+)?)(?:_|\.)")


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    lat: float
    lon: float
    places: tuple[tuple[str, str], ...] = ()  # truth country / region / city, when given

    def target(self) -> dict:
        return {"lat": self.lat, "lon": self.lon, **dict(self.places)}


@dataclass
class Dataset:
    name: str
    kind: str  # csv | llmgeo | exif
    samples: list[Sample]
    skipped: list[Skip] = field(default_factory=list)
    total: int = 0  # entries in the source before --limit / --sample

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "size": len(self.samples), "source_size": self.total}


def _llmgeo_samples(folder: Path) -> tuple[list[Sample], list[Skip]]:
    samples, skips = [], []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        m = _LLMGEO_NAME.match(path.name)
        point, reason = check_latlon(m.group(2), m.group(1)) if m else (None, "file name is not <lon>_<lat>_...")
        if point is None:
            skips.append(Skip(path.name, "bad coordinates", reason))
            continue
        samples.append(Sample(path.relative_to(folder).as_posix(), path, point.lat, point.lon))
    return samples, skips


def _exif_samples(folder: Path) -> tuple[list[Sample], list[Skip]]:
    samples, skips = [], []
    for record in read_folder_source(folder):
        gps = read_exif_gps(record.path)
        if gps is None:
            skips.append(Skip(record.image_id, "no EXIF GPS", f"{record.path} has no usable GPS"))
        else:
            samples.append(Sample(record.image_id, record.path, gps[0], gps[1]))
    return samples, skips


def detect_kind(source: Path) -> str:
    if not source.is_dir():
        return "csv"  # read_csv refuses a FIFO or device with one line
    names = [p.name for p in list(source.iterdir())[:50] if p.suffix.lower() in IMAGE_SUFFIXES]
    if names and all(_LLMGEO_NAME.match(n) for n in names):
        return "llmgeo"
    return "exif"


def load_dataset(
    source: str | Path,
    *,
    images: str | Path | None = None,
    name: str | None = None,
    kind: str | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Read a benchmark set; ``limit`` keeps the first N, ``sample`` N at random (``seed``)."""
    source = Path(source)
    if not source.exists():
        raise SourceError(f"dataset {source} does not exist: give a CSV (with --images DIR) or a photo folder")
    kind = kind or detect_kind(source)
    if kind == "csv":
        records, skips = read_csv_source(source, Path(images) if images else None)
        samples = [Sample(r.image_id, r.path, r.lat, r.lon, r.places) for r in records]  # type: ignore[arg-type]
    elif kind == "llmgeo":
        samples, skips = _llmgeo_samples(source)
    elif kind == "exif":
        samples, skips = _exif_samples(source)
    else:
        raise SourceError(f"unknown dataset kind {kind!r}: csv, llmgeo or exif")
    total = len(samples)
    if limit is not None and sample is not None:
        raise SourceError("give --limit or --sample, not both")
    if sample is not None:
        if sample < 1:
            raise SourceError(f"--sample must be at least 1, got {sample}")
        samples = sorted(random.Random(seed).sample(samples, min(sample, total)), key=lambda s: s.id)
    elif limit is not None:
        if limit < 1:
            raise SourceError(f"--limit must be at least 1, got {limit}")
        samples = samples[:limit]
    if not samples:
        raise SourceError(f"dataset {source} holds no usable items ({len(skips)} skipped)")
    return Dataset(name or source.stem, kind, samples, skips, total)
