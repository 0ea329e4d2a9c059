"""Gallery sources at scale: webdataset tar shards and precomputed vectors (Parquet, .npy + CSV),
through `geoagent index`, with bad samples skipped with reasons and runs resumable."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from rag_store.encoders import create_encoder
from rag_store.images import load_image
from rag_store.ingest import index_source
from rag_store.sources import expand_braces
from rag_store.store import Gallery, open_client
from tests.imagegen import noise_jpeg
from tests.test_ingest import flat, geoagent, stored


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def read_errors(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["image_id"]: row["reason"] for row in csv.DictReader(fh)}


def jpeg_bytes(tmp: Path, seed: int) -> bytes:
    return noise_jpeg(tmp / f"p{seed}.jpg", seed=seed).read_bytes()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def js(obj) -> bytes:
    return json.dumps(obj).encode()


# ------------------------------------------------------------------ brace patterns


def test_brace_patterns_expand_like_webdataset():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{a,b}-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


# ------------------------------------------------------------------ webdataset shards

GOOD = {  # id -> (lat, lon): every one must be stored
    "mp16-1": (48.8584, 2.2945),  # MP-16 field names: IMG_ID, LAT, LON
    "osv-1": (-33.8568, 151.2153),  # OSV-5M: id, latitude, longitude
    "000000007": (35.6586, 139.7454),  # img2dataset: "key" + additional columns, caption .txt
    "sub/txtonly": (40.6892, -74.0445),  # a .txt of two numbers, no .json; the key keeps its folder
    "png-1": (-22.9519, -43.2105),
    "late-1": (51.5007, -0.1246),  # second shard
}
BAD = {  # id -> reason
    "nocoords": "bad coordinates",
    "lat95": "bad coordinates",
    "e": "bad metadata",  # unreadable .json: the sample key names it
    "noimage": "no image",
    "broken": "corrupt image",
    "mp16-1": None,  # repeated in shard 2: "duplicate id" (the first is stored)
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    tmp = root / "tmp"
    tmp.mkdir()
    png = io.BytesIO()
    load_image(jpeg_bytes(tmp, 5)).save(png, "PNG")
    write_tar(root / "00000.tar", [
        ("a.jpg", jpeg_bytes(tmp, 1)), ("a.json", js({"IMG_ID": "mp16-1", "AUTHOR": "x", "LAT": 48.8584, "LON": 2.2945})),
        ("b.jpg", jpeg_bytes(tmp, 2)), ("b.json", js({"id": "osv-1", "latitude": "-33.8568", "longitude": "151.2153"})),
        ("000000007.jpg", jpeg_bytes(tmp, 3)), ("000000007.txt", b"a caption, not coordinates"),
        ("000000007.json", js({"key": "000000007", "url": "http://x/y.jpg", "caption": "c", "LAT": 35.6586, "LON": 139.7454})),
        ("sub/txtonly.jpg", jpeg_bytes(tmp, 4)), ("sub/txtonly.txt", b"40.6892,-74.0445\n"),
        ("p.png", png.getvalue()), ("p.json", js({"id": "png-1", "lat": -22.9519, "lon": -43.2105})),
        ("c.jpg", jpeg_bytes(tmp, 6)), ("c.json", js({"id": "nocoords", "caption": "no place"})),
        ("d.jpg", jpeg_bytes(tmp, 7)), ("d.json", js({"id": "lat95", "lat": 95, "lon": 10})),
        ("e.jpg", jpeg_bytes(tmp, 8)), ("e.json", b"{not json"),
        ("f.json", js({"id": "noimage", "lat": 1, "lon": 2})),
        ("g.jpg", jpeg_bytes(tmp, 9)[:300]), ("g.json", js({"id": "broken", "lat": 1, "lon": 2})),
    ])
    write_tar(root / "00001.tar", [
        ("h.jpg", jpeg_bytes(tmp, 10)), ("h.json", js({"id": "late-1", "lat": 51.5007, "lon": -0.1246})),
        ("i.jpg", jpeg_bytes(tmp, 11)), ("i.json", js({"IMG_ID": "mp16-1", "LAT": 0.5, "LON": 0.5})),
    ])
    # A download cut short: a valid sample, then the archive ends mid-member.
    whole = write_tar(tmp / "cut.tar", [
        ("j.jpg", jpeg_bytes(tmp, 12)), ("j.json", js({"id": "cut-1", "lat": 10, "lon": 10})),
        ("k.jpg", jpeg_bytes(tmp, 13) * 4), ("k.json", js({"id": "cut-2", "lat": 11, "lon": 11})),
    ]).read_bytes()
    (root / "00002.tar").write_bytes(whole[:2600])
    return root


@pytest.fixture(scope="module")
def indexed_shards(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("indexed")
    store, errors = out / "store", out / "errors.csv"
    result = geoagent("index", f"{shards}/{{00000..00002}}.tar", "--store", store, "--errors", errors, "--workers", "2")
    return result, store, errors


def test_shards_index_every_good_sample(indexed_shards):
    result, store, _ = indexed_shards
    assert result.exit_code == 0, result.output
    entries = stored(store)
    assert set(GOOD) <= set(entries)
    for image_id, (lat, lon) in GOOD.items():
        assert (entries[image_id]["lat"], entries[image_id]["lon"]) == pytest.approx((lat, lon))
    assert entries["mp16-1"]["lat"] == pytest.approx(48.8584)  # the first of a repeated id wins


def test_shards_skip_bad_samples_with_reasons(indexed_shards, shards):
    result, store, errors = indexed_shards
    reasons = read_errors(errors)
    for image_id, reason in BAD.items():
        if reason:
            assert reasons[image_id] == reason, (image_id, reasons)
    assert reasons["mp16-1"] == "duplicate id"
    assert reasons[str(shards / "00002.tar")] == "corrupt shard"
    assert "skipped, corrupt shard: 1" in flat(result.stdout)
    entries = stored(store)
    assert not set(BAD) - {"mp16-1"} & set(entries)


def test_shards_resume_and_add_nothing_twice(indexed_shards, shards, tmp_path):
    _, store, _ = indexed_shards
    before = stored(store)
    again = geoagent("index", shards, "--store", store, "--errors", tmp_path / "e.csv", "--workers", "1")  # the folder of .tar
    assert again.exit_code == 0, again.output
    assert f"0 added, {len(before)} already stored" in flat(again.stdout)
    assert stored(store) == before


def test_shard_vectors_are_what_a_query_embeds(indexed_shards, shards, tmp_path):
    _, store, _ = indexed_shards
    encoder = create_encoder()
    gallery = Gallery.open(open_client(store), "gallery")
    photo = load_image(jpeg_bytes(tmp_path, 10))  # the photo of late-1
    hit = gallery.query(encoder.embed([photo])[0], k=1).positives[0]
    assert hit.image_id == "late-1" and hit.similarity == pytest.approx(1.0, abs=1e-4)


def test_no_shard_of_the_pattern_exists(tmp_path):
    result = geoagent("index", f"{tmp_path}/nothing-{{0..3}}.tar", "--store", tmp_path / "store")
    assert result.exit_code == 2
    assert "error: none of the 4 shards" in flat(result.output)
    assert not (tmp_path / "store").exists() or not stored_any(tmp_path / "store")


def stored_any(store: Path) -> bool:
    return bool(open_client(store).list_collections())


def test_workers_do_not_change_the_vectors(shards, tmp_path):
    encoder = create_encoder()
    got = {}
    for workers in (0, 2):
        gallery = Gallery.open(open_client(tmp_path / f"s{workers}"), "g-w", encoder_name=encoder.name, dim=encoder.dim, create=True)
        summary = index_source(f"{shards}/0000{{0,1}}.tar", gallery, encoder, workers=workers, batch_size=3)
        assert summary.added == len(GOOD)
        ids, matrix, _ = gallery.all_embeddings()
        got[workers] = dict(zip(ids, matrix, strict=True))
    assert got[0].keys() == got[2].keys()
    for image_id in got[0]:
        np.testing.assert_array_equal(got[0][image_id], got[2][image_id])


# ------------------------------------------------------------------ precomputed vectors


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory) -> tuple[Path, np.ndarray]:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    vectors = unit_rows(6, 768)
    rows = [list(map(float, v)) for v in vectors]
    rows[3] = [float("nan")] * 768
    rows[4] = rows[4][:10]  # wrong length
    table = pa.table({
        "id": ["v0", "v1", "v2", "v3", "v4", "v1"],
        "lat": [10.0, 20.0, 95.0, 30.0, 40.0, 50.0],
        "lon": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "vector": rows,
    })
    path = tmp_path_factory.mktemp("parquet") / "gallery.parquet"
    pq.write_table(table, path, row_group_size=2)
    return path, vectors


def test_parquet_vectors_are_imported_with_bad_rows_skipped(parquet_file, tmp_path):
    path, vectors = parquet_file
    store, errors = tmp_path / "store", tmp_path / "errors.csv"
    result = geoagent("index", "--vectors", path, "--encoder", "clip", "--store", store, "--errors", errors)
    assert result.exit_code == 0, result.output
    entries = stored(store)
    assert set(entries) == {"v0", "v1"}
    assert (entries["v1"]["lat"], entries["v1"]["lon"]) == (20.0, 2.0)
    assert read_errors(errors) == {"v2": "bad coordinates", "v3": "bad vector", "v4": "bad vector", "v1": "duplicate id"}
    gallery = Gallery.open(open_client(store), "gallery")
    assert (gallery.encoder_name, gallery.dim) == ("clip:openai/clip-vit-large-patch14", 768)
    hit = gallery.query(vectors[0], k=1).positives[0]
    assert hit.image_id == "v0" and hit.similarity == pytest.approx(1.0, abs=1e-5)

    again = geoagent("index", "--vectors", path, "--encoder", "clip", "--store", store, "--errors", errors)
    assert again.exit_code == 0 and "0 added, 2 already stored" in flat(again.stdout)


def test_vectors_of_another_size_than_the_encoder_gives(parquet_file, tmp_path):
    path, _ = parquet_file
    result = geoagent("index", "--vectors", path, "--store", tmp_path / "store")  # efficientnet-lite0: 1280-d
    assert result.exit_code == 2
    assert "768-d" in flat(result.output) and "1280-d" in flat(result.output)
    assert not stored_any(tmp_path / "store")


def test_npy_vectors_with_a_csv_of_ids(tmp_path):
    vectors = unit_rows(3, 16, seed=1)
    np.save(tmp_path / "v.npy", vectors * 3.0)  # stored normalised
    (tmp_path / "ids.csv").write_text("id,lat,lon\na,1,2\nb,3,4\nc,5,6\n")
    folder = tmp_path / "clip16"
    store = tmp_path / "store"
    # An encoder of unknown size (a CLIP folder): the gallery takes the file's dimension.
    result = geoagent("index", tmp_path / "ids.csv", "--vectors", tmp_path / "v.npy", "--encoder", f"clip:{folder}", "--store", store)
    assert result.exit_code == 0, result.output
    gallery = Gallery.open(open_client(store), "gallery")
    assert gallery.dim == 16 and gallery.count() == 3
    ids, matrix, metas = gallery.all_embeddings()
    by_id = dict(zip(ids, matrix, strict=True))
    np.testing.assert_allclose(by_id["b"], vectors[1], atol=1e-6)
    assert {m["image_id"]: (m["lat"], m["lon"]) for m in metas}["c"] == (5.0, 6.0)
    # The same file into a gallery of another dimension is refused before anything is written.
    np.save(tmp_path / "w.npy", unit_rows(3, 8))
    refused = geoagent("index", tmp_path / "ids.csv", "--vectors", tmp_path / "w.npy", "--encoder", f"clip:{folder}", "--store", store)
    assert refused.exit_code == 2 and "16" in flat(refused.output) and "8" in flat(refused.output)
    assert gallery.count() == 3


def test_npy_rows_must_match_the_csv(tmp_path):
    np.save(tmp_path / "v.npy", unit_rows(2, 16))
    (tmp_path / "ids.csv").write_text("id,lat,lon\na,1,2\n")
    result = geoagent("index", tmp_path / "ids.csv", "--vectors", tmp_path / "v.npy", "--encoder", "clip:x", "--store", tmp_path / "s")
    assert result.exit_code == 2
    assert "1 rows" in flat(result.output) and "2 vectors" in flat(result.output)
