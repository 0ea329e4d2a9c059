"""The Chroma gallery (embedded): what query returns, and every way opening it can go wrong."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from rag_store.errors import (
    ConfigError,
    EncoderMismatch,
    GalleryNotFound,
    StoreError,
    StoreUnavailable,
)
from rag_store.store import Gallery, Neighbour, default_store_dir, list_galleries, open_client

N, DIM = 200, 24


def metadata(i: int) -> dict:
    return {"lat": -80.0 + 0.8 * i, "lon": -170.0 + 1.7 * i, "image_id": f"photo-{i}.jpg", "source": "unit"}


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(42).standard_normal((N, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def filled(tmp_path_factory, vectors):
    path = tmp_path_factory.mktemp("store")
    client = open_client(path)
    gallery = Gallery.open(client, "unit-gallery", encoder_name="enc-a", dim=DIM, create=True)
    gallery.add([f"id-{i}" for i in range(N)], vectors, [metadata(i) for i in range(N)])
    return path, client, gallery


def cosine(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))


def by_image_id(neighbours: list[Neighbour]) -> list[int]:
    return [int(n.image_id.removeprefix("photo-").removesuffix(".jpg")) for n in neighbours]


# ------------------------------------------------------------------ create, add, query


def test_new_gallery_records_its_encoder(filled):
    _, client, gallery = filled
    assert gallery.count() == N
    assert (gallery.encoder_name, gallery.dim, gallery.name) == ("enc-a", DIM, "unit-gallery")
    rows = list_galleries(client)
    assert {"name": "unit-gallery", "encoder": "enc-a", "dim": DIM, "kind": "images", "count": N} in rows


@pytest.mark.parametrize("seed", range(5))
def test_query_matches_brute_force_cosine(filled, vectors, seed):
    _, _, gallery = filled
    q = np.random.default_rng(100 + seed).standard_normal(DIM).astype(np.float32)
    sims = cosine(vectors, q)
    order = np.argsort(-sims)
    result = gallery.query(q, k=8, negatives=6)
    assert len(result.positives) == 8 and len(result.negatives) == 6

    assert by_image_id(result.positives) == list(order[:8])
    pos_sims = [n.similarity for n in result.positives]
    assert pos_sims == sorted(pos_sims, reverse=True)
    np.testing.assert_allclose(pos_sims, sims[order[:8]], atol=1e-4)

    # negatives: the least similar, least similar first
    assert by_image_id(result.negatives) == list(order[::-1][:6])
    neg_sims = [n.similarity for n in result.negatives]
    assert neg_sims == sorted(neg_sims)
    np.testing.assert_allclose(neg_sims, sims[order[::-1][:6]], atol=1e-4)
    assert max(neg_sims) < min(pos_sims)


def test_query_returns_the_stored_coordinates(filled, vectors):
    _, _, gallery = filled
    result = gallery.query(vectors[17], k=1)
    [top] = result.positives
    assert top.image_id == "photo-17.jpg"
    assert top.similarity == pytest.approx(1.0, abs=1e-4)
    assert (top.lat, top.lon) == pytest.approx((metadata(17)["lat"], metadata(17)["lon"]))
    assert top.source == "unit"
    assert top.to_dict() == {
        "image_id": "photo-17.jpg", "lat": pytest.approx(metadata(17)["lat"]), "lon": pytest.approx(metadata(17)["lon"]),
        "similarity": pytest.approx(1.0, abs=1e-4), "source": "unit",
    }
    for n in result.positives + gallery.query(vectors[3], k=5).negatives:
        i = int(n.image_id.removeprefix("photo-").removesuffix(".jpg"))
        assert (n.lat, n.lon) == pytest.approx((metadata(i)["lat"], metadata(i)["lon"]))


def test_query_scale_does_not_matter(filled, vectors):
    _, _, gallery = filled
    a = gallery.query(vectors[5], k=5)
    b = gallery.query(vectors[5] * 37.0, k=5)
    assert by_image_id(a.positives) == by_image_id(b.positives)
    assert by_image_id(a.negatives) == by_image_id(b.negatives)


def test_k_larger_than_the_gallery(tmp_path):
    gallery = Gallery.open(open_client(tmp_path), "small", encoder_name="e", dim=3, create=True)
    gallery.add(["a", "b"], np.eye(3, dtype=np.float32)[:2], [metadata(0), metadata(1)])
    result = gallery.query(np.array([1, 0, 0], np.float32), k=10)
    assert len(result.positives) == 2 and len(result.negatives) == 2
    assert result.positives[0].image_id == "photo-0.jpg"
    assert result.negatives[0].image_id == "photo-1.jpg"  # orthogonal: the least similar


def test_query_of_an_empty_gallery(tmp_path):
    gallery = Gallery.open(open_client(tmp_path), "empty", encoder_name="e", dim=4, create=True)
    result = gallery.query(np.ones(4, np.float32), k=5)
    assert result.positives == [] and result.negatives == []


def test_no_negatives_when_asked_for_none(filled, vectors):
    _, _, gallery = filled
    result = gallery.query(vectors[0], k=3, negatives=0)
    assert len(result.positives) == 3 and result.negatives == []


def test_query_of_the_wrong_dimension(filled):
    _, _, gallery = filled
    with pytest.raises(EncoderMismatch) as info:
        gallery.query(np.ones(DIM + 1, np.float32))
    assert "enc-a" in str(info.value)


def test_add_is_an_upsert(tmp_path):
    gallery = Gallery.open(open_client(tmp_path), "upserts", encoder_name="e", dim=2, create=True)
    gallery.add(["x"], np.array([[1.0, 0.0]], np.float32), [metadata(1)])
    gallery.add(["x"], np.array([[0.0, 1.0]], np.float32), [metadata(2)])
    assert gallery.count() == 1
    [top] = gallery.query(np.array([0.0, 1.0], np.float32), k=1).positives
    assert top.image_id == "photo-2.jpg" and top.similarity == pytest.approx(1.0, abs=1e-5)


def test_existing_ids(filled):
    _, _, gallery = filled
    asked = ["id-0", "id-199", "id-200", "nope"]
    assert gallery.existing_ids(asked) == {"id-0", "id-199"}
    assert gallery.existing_ids([f"id-{i}" for i in range(N)], chunk=7) == {f"id-{i}" for i in range(N)}


def test_all_embeddings_pages_through_everything(filled, vectors):
    _, _, gallery = filled
    ids, matrix, metas = gallery.all_embeddings(batch=33)
    assert len(ids) == len(set(ids)) == N
    assert matrix.shape == (N, DIM) and matrix.dtype == np.float32
    for id_, row, meta in zip(ids, matrix, metas, strict=True):
        i = int(id_.removeprefix("id-"))
        assert meta["image_id"] == f"photo-{i}.jpg"
        np.testing.assert_allclose(row, vectors[i], rtol=1e-5, atol=1e-6)


def test_gallery_survives_reopening_the_store(filled, vectors):
    path, _, _ = filled
    gallery = Gallery.open(open_client(path), "unit-gallery", encoder_name="enc-a", dim=DIM)
    assert gallery.count() == N
    assert gallery.query(vectors[9], k=1).positives[0].image_id == "photo-9.jpg"
    # opening without naming an encoder takes the recorded one
    anyone = Gallery.open(open_client(path), "unit-gallery")
    assert (anyone.encoder_name, anyone.dim) == ("enc-a", DIM)


# ------------------------------------------------------------------ mismatches


def test_reopening_with_another_encoder(filled):
    _, client, _ = filled
    with pytest.raises(EncoderMismatch) as info:
        Gallery.open(client, "unit-gallery", encoder_name="enc-b", dim=DIM, create=True)
    assert "enc-a" in str(info.value) and "enc-b" in str(info.value)


def test_reopening_with_another_dimension(filled):
    _, client, _ = filled
    with pytest.raises(EncoderMismatch) as info:
        Gallery.open(client, "unit-gallery", encoder_name="enc-a", dim=DIM * 2)
    assert str(DIM) in str(info.value) and str(DIM * 2) in str(info.value)


def test_adding_vectors_of_the_wrong_dimension_stores_nothing(filled):
    _, _, gallery = filled
    before = gallery.count()
    for bad in (np.ones((2, DIM + 3), np.float32), np.ones(DIM, np.float32), np.ones((2, 1, DIM), np.float32)):
        with pytest.raises(EncoderMismatch) as info:
            gallery.add(["w1", "w2"], bad, [metadata(1), metadata(2)])
        assert "enc-a" in str(info.value)
    assert gallery.count() == before
    assert gallery.existing_ids(["w1", "w2"]) == set()


def test_a_collection_not_made_by_geoagent(tmp_path):
    client = open_client(tmp_path)
    client.create_collection("foreign", embedding_function=None)
    with pytest.raises(StoreError) as info:
        Gallery.open(client, "foreign", encoder_name="e", dim=3)
    assert "foreign" in str(info.value)
    assert list_galleries(client) == []


# ------------------------------------------------------------------ names and stores


@pytest.mark.parametrize("name", ["x", "ab", "-bad-start", "bad/slash", "has space", "end.", ""])
def test_bad_collection_name(tmp_path, name):
    with pytest.raises(ConfigError) as info:
        Gallery.open(open_client(tmp_path), name, encoder_name="e", dim=3, create=True)
    assert repr(name) in str(info.value)


def test_missing_gallery_without_create(filled):
    _, client, _ = filled
    with pytest.raises(GalleryNotFound) as info:
        Gallery.open(client, "no-such-gallery", encoder_name="enc-a", dim=DIM)
    message = str(info.value)
    assert "no-such-gallery" in message and "unit-gallery" in message  # what there is instead
    assert "geoagent index" in message
    assert "no-such-gallery" not in [g["name"] for g in list_galleries(client)]


def test_new_gallery_needs_encoder_and_dim(tmp_path):
    with pytest.raises(ConfigError):
        Gallery.open(open_client(tmp_path), "new-one", create=True)


def test_store_and_url_together(tmp_path):
    with pytest.raises(ConfigError) as info:
        open_client(tmp_path, "http://127.0.0.1:8000")
    assert "--store" in str(info.value) and "--chroma-url" in str(info.value)


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://host:21", "http://"])
def test_malformed_chroma_url(url):
    with pytest.raises(ConfigError) as info:
        open_client(chroma_url=url)
    assert url in str(info.value)


def test_store_path_that_is_a_file(tmp_path):
    path = tmp_path / "store.txt"
    path.write_text("not a directory")
    with pytest.raises(StoreUnavailable) as info:
        open_client(path)
    assert str(path) in str(info.value)
    assert path.read_text() == "not a directory"


def test_store_under_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreUnavailable):
        open_client(blocker / "store")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_chroma_server():
    port = free_port()
    with pytest.raises(StoreUnavailable) as info:
        open_client(chroma_url=f"http://127.0.0.1:{port}")
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "chroma run" in message


def test_store_directory_is_created(tmp_path):
    path = tmp_path / "a" / "b" / "store"
    client = open_client(path)
    Gallery.open(client, "made", encoder_name="e", dim=2, create=True)
    assert path.is_dir()
    assert any(path.iterdir())


def test_default_store_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOAGENT_STORE", str(tmp_path / "env-store"))
    assert default_store_dir() == tmp_path / "env-store"
    monkeypatch.delenv("GEOAGENT_STORE")
    assert "geoagent" in str(default_store_dir())
