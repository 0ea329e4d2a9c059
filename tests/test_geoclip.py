"""GeoCLIP's location encoder on its released weights, and the GPS gallery kept in Chroma."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rag_store.errors import EncoderMismatch, GalleryNotFound
from rag_store.geoclip import gps_gallery_coordinates, load_location_encoder, logit_scale
from rag_store.gps_gallery import (
    GPS_COLLECTION,
    LOCATION_ENCODER,
    GpsGallery,
    build_gps_gallery,
    location_similarity,
)
from rag_store.store import Gallery, list_galleries, open_client

CITIES = {
    "Paris": (48.8566, 2.3522),
    "New York": (40.7128, -74.0060),
    "Tokyo": (35.6762, 139.6503),
    "Sydney": (-33.8688, 151.2093),
    "Nairobi": (-1.2921, 36.8219),
    "Rio de Janeiro": (-22.9068, -43.1729),
}
GALLERY_SIZE = 3000


def haversine_km(a, b) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def destination(lat: float, lon: float, bearing_deg: float, km: float) -> tuple[float, float]:
    """The point ``km`` away from (lat, lon) on a great circle with initial ``bearing_deg``."""
    d, b = km / 6371.0, math.radians(bearing_deg)
    la, lo = math.radians(lat), math.radians(lon)
    la2 = math.asin(math.sin(la) * math.cos(d) + math.cos(la) * math.sin(d) * math.cos(b))
    lo2 = lo + math.atan2(math.sin(b) * math.sin(d) * math.cos(la), math.cos(d) - math.sin(la) * math.sin(la2))
    return math.degrees(la2), (math.degrees(lo2) + 540.0) % 360.0 - 180.0


@pytest.fixture(scope="module")
def location_encoder():
    return load_location_encoder()


# ------------------------------------------------------------------ location encoder


def test_location_embeddings_shape_and_norm(location_encoder):
    vectors = location_encoder.embed(list(CITIES.values()))
    assert vectors.shape == (len(CITIES), 512)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert location_encoder.embed(np.zeros((0, 2))).shape == (0, 512)


def test_location_embeddings_are_deterministic_and_batch_independent(location_encoder):
    coords = np.asarray(list(CITIES.values()), dtype=np.float32)
    a = location_encoder.embed(coords)
    b = location_encoder.embed(coords, batch_size=2)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(a, location_encoder.embed(coords))


def test_the_encoder_is_loaded_once(location_encoder):
    assert load_location_encoder() is location_encoder


def test_geographic_distance_orders_location_similarity(location_encoder):
    """Per city: 10 km away embeds closer than 250 km away, which is closer than 2500 km away."""
    means = {}
    for city, (lat, lon) in CITIES.items():
        centre = location_encoder.embed([(lat, lon)])[0]
        per_radius = []
        for km in (10, 250, 2500):
            ring = [destination(lat, lon, bearing, km) for bearing in range(0, 360, 45)]
            assert all(abs(haversine_km((lat, lon), p) - km) < 1 for p in ring)
            per_radius.append(float((location_encoder.embed(ring) @ centre).mean()))
        near, mid, far = per_radius
        assert near > mid > far, (city, per_radius)
        means[city] = per_radius
    near, mid, far = np.mean(list(means.values()), axis=0)
    # measured on the released weights: ~0.58, ~0.21, ~0.06
    assert near > 0.4
    assert near - mid > 0.2
    assert mid - far > 0.05
    assert far < 0.2


def test_a_city_is_most_similar_to_itself(location_encoder):
    vectors = location_encoder.embed(list(CITIES.values()))
    sims = vectors @ vectors.T
    assert (np.argmax(sims, axis=1) == np.arange(len(CITIES))).all()


def test_location_similarity_ranks_near_above_far():
    image_like = load_location_encoder().embed([CITIES["Tokyo"]])[0]
    near = destination(*CITIES["Tokyo"], 90, 20)
    far = CITIES["Paris"]
    sims = location_similarity(image_like, [near, far, CITIES["Tokyo"]])
    assert sims.shape == (3,)
    assert sims[2] == pytest.approx(1.0, abs=1e-5)
    assert sims[2] > sims[0] > sims[1]
    assert location_similarity(image_like, []).shape == (0,)


def test_logit_scale_is_a_positive_temperature():
    scale = logit_scale()
    assert 1.0 < scale <= 100.0  # CLIP-style learned scale, clamped at 100


# ------------------------------------------------------------------ GPS gallery


@pytest.fixture(scope="module")
def gps_client(tmp_path_factory):
    client = open_client(tmp_path_factory.mktemp("gps-store"))
    build_gps_gallery(client, limit=GALLERY_SIZE)
    return client


@pytest.fixture(scope="module")
def gps(gps_client):
    return GpsGallery.open(gps_client)


def test_gps_gallery_holds_the_first_coordinates(gps_client, gps):
    coords = gps_gallery_coordinates()
    assert coords.shape == (100_000, 2)
    assert len(gps) == GALLERY_SIZE
    # the stored coordinates are the file's first GALLERY_SIZE, each once
    stored = {(round(float(a), 4), round(float(b), 4)) for a, b in gps.coords}
    expected = {(round(float(a), 4), round(float(b), 4)) for a, b in coords[:GALLERY_SIZE]}
    assert stored == expected
    [row] = [g for g in list_galleries(gps_client) if g["name"] == GPS_COLLECTION]
    assert row["kind"] == "gps" and row["dim"] == 512 and row["count"] == GALLERY_SIZE
    assert row["encoder"] == LOCATION_ENCODER


def test_gps_gallery_vectors_are_the_location_embeddings(gps, location_encoder):
    # every stored vector belongs to the coordinate stored beside it
    rows = np.random.default_rng(0).choice(len(gps), 50, replace=False)
    expected = location_encoder.embed(gps.coords[rows])
    np.testing.assert_allclose(gps.embeddings[rows], expected, atol=1e-4)


def test_building_again_adds_nothing(gps_client):
    again = build_gps_gallery(gps_client, limit=GALLERY_SIZE)
    assert again.count() == GALLERY_SIZE


def test_building_again_rewrites_nothing(tmp_path):
    client = open_client(tmp_path / "store")
    gallery = build_gps_gallery(client, limit=100)
    # Overwrite one stored vector: a rebuild that re-embedded it would restore it.
    marker = np.zeros(512, np.float32)
    marker[0] = 1.0
    gallery.collection.update(ids=["gps-7"], embeddings=[marker])
    build_gps_gallery(client, limit=100)
    assert gallery.count() == 100
    after = gallery.collection.get(ids=["gps-7"], include=["embeddings"])["embeddings"][0]
    np.testing.assert_allclose(np.asarray(after), marker, atol=1e-6)


def test_building_resumes_what_is_missing(tmp_path):
    client = open_client(tmp_path / "store")
    build_gps_gallery(client, limit=200, batch_size=64)
    gallery = Gallery.open(client, GPS_COLLECTION)
    gallery.collection.delete(ids=[f"gps-{i}" for i in range(50, 60)])
    assert gallery.count() == 190
    seen = []
    build_gps_gallery(client, limit=260, batch_size=64, progress=lambda done, total: seen.append((done, total)))
    assert gallery.count() == 260
    assert seen[-1] == (260, 260)
    restored = gallery.collection.get(ids=["gps-55"], include=["metadatas"])["metadatas"][0]
    lat, lon = gps_gallery_coordinates()[55]
    assert restored["lat"] == pytest.approx(float(lat), abs=1e-4)
    assert restored["lon"] == pytest.approx(float(lon), abs=1e-4)


def test_candidates_are_a_ranked_distribution(gps, location_encoder):
    query = location_encoder.embed([CITIES["Paris"]])[0]
    cands = gps.candidates(query, k=5)
    assert len(cands) == 5
    probs = [c.probability for c in cands]
    assert probs == sorted(probs, reverse=True)
    assert 0.0 < probs[0] <= 1.0
    assert all(0.0 <= p <= 1.0 for p in probs)  # float32 softmax: far tails may underflow to 0
    assert sum(probs) <= 1.0 + 1e-5
    for c in cands:
        assert -90 <= c.lat <= 90 and -180 <= c.lon <= 180
        assert set(c.to_dict()) == {"lat", "lon", "probability"}


def test_candidates_k_larger_than_the_gallery(tmp_path):
    client = open_client(tmp_path / "small")
    build_gps_gallery(client, name="tiny-gps", limit=4)
    small = GpsGallery(Gallery.open(client, "tiny-gps"))
    cands = small.candidates(load_location_encoder().embed([(0.0, 0.0)])[0], k=10)
    assert len(cands) == 4
    assert sum(c.probability for c in cands) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("row", [0, 10, 1234, GALLERY_SIZE - 1])
def test_a_gallery_coordinate_finds_itself(gps, location_encoder, row):
    lat, lon = gps_gallery_coordinates()[row]
    top = gps.candidates(location_encoder.embed([(lat, lon)])[0], k=5)[0]
    assert haversine_km((lat, lon), (top.lat, top.lon)) < 50


def test_a_nearby_point_finds_a_nearby_gallery_coordinate(gps, location_encoder):
    lat, lon = gps_gallery_coordinates()[1234]
    query = location_encoder.embed([destination(float(lat), float(lon), 45, 5)])[0]
    top = gps.candidates(query, k=1)[0]
    assert haversine_km((lat, lon), (top.lat, top.lon)) < 100


def test_open_a_missing_gps_gallery(tmp_path):
    client = open_client(tmp_path / "empty")
    with pytest.raises(GalleryNotFound) as info:
        GpsGallery.open(client)
    assert "--gps-gallery" in str(info.value)


def test_an_image_gallery_is_not_a_gps_gallery(tmp_path):
    client = open_client(tmp_path / "images")
    Gallery.open(client, "not-gps", encoder_name="efficientnet-lite0", dim=1280, create=True)
    with pytest.raises(EncoderMismatch):
        GpsGallery.open(client, "not-gps")
