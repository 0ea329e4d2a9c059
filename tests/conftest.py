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


N_GALLERY = 40  # generated photos in the shared test gallery
# Where the generated gallery photos are "taken": towns on land, so that a retrieval
# answer always reverse-geocodes to a country.
GALLERY_PLACES = [
    (48.8566, 2.3522), (51.5074, -0.1278), (40.4168, -3.7038), (41.9028, 12.4964),
    (52.52, 13.405), (35.6762, 139.6503), (-33.8688, 151.2093), (40.7128, -74.006),
    (-23.5505, -46.6333), (19.4326, -99.1332), (30.0444, 31.2357), (-1.2921, 36.8219),
    (28.6139, 77.209), (39.9042, 116.4074), (55.7558, 37.6173), (59.3293, 18.0686),
    (-34.6037, -58.3816), (43.6532, -79.3832), (1.3521, 103.8198), (-36.8485, 174.7633),
]


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """An embedded store with a gallery of 40 generated photos (efficientnet-lite0).

    Generated (``tests/imagegen.py``), so that the chain, chat and CLI tests run in a clone
    without the sample data; tests that need real photos take ``sample_dir``.
    """
    from rag_store import Gallery, create_encoder, index_source, open_client
    from tests.imagegen import noise_jpeg

    root = tmp_path_factory.mktemp("gallery")
    images = root / "images"
    images.mkdir()
    rows = [["IMG_ID", "LAT", "LON"]]
    for i in range(N_GALLERY):
        noise_jpeg(images / f"g{i:02d}.jpg", seed=i, size=(160, 120))
        lat, lon = GALLERY_PLACES[i % len(GALLERY_PLACES)]
        rows.append([f"g{i:02d}.jpg", f"{lat + 0.01 * (i // len(GALLERY_PLACES))}", f"{lon}"])
    source = root / "gallery.csv"
    with source.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    encoder = create_encoder()
    store = root / "store"
    gallery = Gallery.open(open_client(store), "gallery", encoder_name=encoder.name, dim=encoder.dim, create=True)
    summary = index_source(source, gallery, encoder, images=images)
    assert summary.added == N_GALLERY
    return store


@pytest.fixture(scope="session")
def query_photo(tmp_path_factory) -> Path:
    """A generated photo that is not in the gallery."""
    from tests.imagegen import noise_jpeg

    return noise_jpeg(tmp_path_factory.mktemp("query") / "query.jpg", seed=1000, size=(160, 120))
