"""Shared fixtures: the sample data beside the project, and offline Hugging Face."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

# Nothing in the tests may download weights or data.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path(os.environ.get("GEOAGENT_SAMPLE", ROOT.parent / "shared" / "data" / "im2gps3k-dev"))


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The Im2GPS3k dev sample (990 photos); tests that need it skip when it is absent."""
    if not (SAMPLE / "im2gps3k-dev.csv").is_file():
        pytest.skip(f"sample data not found at {SAMPLE} (set GEOAGENT_SAMPLE)")
    return SAMPLE


N_GALLERY = 40  # sample photos in the shared test gallery


@pytest.fixture(scope="session")
def store(sample_dir: Path, tmp_path_factory) -> Path:
    """An embedded store with a gallery of the first 40 sample photos (efficientnet-lite0)."""
    from rag_store import Gallery, create_encoder, index_source, open_client

    root = tmp_path_factory.mktemp("gallery")
    rows = list(csv.reader((sample_dir / "im2gps3k-dev.csv").open()))
    subset = root / "subset.csv"
    with subset.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows[: N_GALLERY + 1])
    encoder = create_encoder()
    store = root / "store"
    gallery = Gallery.open(open_client(store), "gallery", encoder_name=encoder.name, dim=encoder.dim, create=True)
    summary = index_source(subset, gallery, encoder, images=sample_dir / "images")
    assert summary.added == N_GALLERY
    return store


@pytest.fixture(scope="session")
def query_photo(sample_dir: Path) -> Path:
    """A sample photo that is not in the 40-photo gallery."""
    name = list(csv.reader((sample_dir / "im2gps3k-dev.csv").open()))[N_GALLERY + 5][0]
    return sample_dir / "images" / name
