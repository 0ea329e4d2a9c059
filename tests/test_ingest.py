"""`geoagent index`: bad entries are skipped with a reason, runs are resumable and idempotent,
bad SOURCEs fail cleanly, and the full Im2GPS3k sample indexes end to end."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli import app
from rag_store.encoders import create_encoder
from rag_store.images import load_image
from rag_store.ingest import index_source, read_source
from rag_store.store import Gallery, list_galleries, open_client
from tests.imagegen import bomb_png, cmyk_jpeg, gps_jpeg, grey16_png, noise_jpeg, rgba_png

GEOAGENT = Path(sys.executable).parent / "geoagent"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # Run from a temporary folder: nothing may land in the working directory by default.
    monkeypatch.chdir(tmp_path)


def geoagent(*args: str | Path):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def read_errors(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def stored(store: Path, collection: str = "gallery") -> dict[str, dict]:
    gallery = Gallery.open(open_client(store), collection)
    res = gallery.collection.get(include=["metadatas"])
    assert len(res["ids"]) == len(set(res["ids"])) == gallery.count()
    return dict(zip(res["ids"], res["metadatas"], strict=True))


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------ a source full of bad entries

GOOD = {  # id -> (lat, lon); all of these must be indexed
    "good0.jpg": (10.5, 20.25),
    "good1.jpg": (-33.9, 151.2),
    "good2.jpg": (64.1, -21.9),
    "good3.jpg": (-0.5, -78.4),
    "cmyk.jpg": (1.0, 2.0),
    "grey16.png": (3.0, 4.0),
    "rgba.png": (5.0, 6.0),
}
SKIPPED = {  # id -> reason
    "bomb.png": "decompression bomb",
    "corrupt.jpg": "corrupt image",
    "notes.jpg": "not an image",
    "missing.jpg": "missing file",
    "nolat.jpg": "bad coordinates",
    "lat95.jpg": "bad coordinates",
    "lon-200.jpg": "bad coordinates",
    "nonnumeric.jpg": "bad coordinates",
    "nanlat.jpg": "bad coordinates",
}


@pytest.fixture(scope="module")
def bad_source(tmp_path_factory) -> tuple[Path, Path, list[list]]:
    root = tmp_path_factory.mktemp("bad-source")
    images = root / "images"
    images.mkdir()
    for i in range(4):
        noise_jpeg(images / f"good{i}.jpg", seed=i)
    cmyk_jpeg(images / "cmyk.jpg")
    grey16_png(images / "grey16.png")
    rgba_png(images / "rgba.png")
    bomb_png(images / "bomb.png")
    whole = noise_jpeg(root / "whole.jpg", seed=99, size=(128, 128)).read_bytes()
    (images / "corrupt.jpg").write_bytes(whole[: len(whole) // 2])
    (images / "notes.jpg").write_text("a text file, not a photo\n")
    for name in ("nolat.jpg", "lat95.jpg", "lon-200.jpg", "nonnumeric.jpg", "nanlat.jpg"):
        noise_jpeg(images / name, seed=len(name))  # the photos are fine: the coordinates are not
    rows = [[image_id, lat, lon] for image_id, (lat, lon) in GOOD.items()]
    rows += [
        ["bomb.png", 7, 8],
        ["corrupt.jpg", 9, 10],
        ["notes.jpg", 11, 12],
        ["missing.jpg", 13, 14],
        ["nolat.jpg", "", 5],
        ["lat95.jpg", 95, 5],
        ["lon-200.jpg", 5, -200],
        ["nonnumeric.jpg", "abc", 5],
        ["nanlat.jpg", "nan", 5],
        ["good0.jpg", 0, 0],  # duplicate id: the first row wins
    ]
    csv_path = write_csv(root / "source.csv", ["IMG_ID", "LAT", "LON"], rows)
    return csv_path, images, rows


@pytest.fixture(scope="module")
def indexed_bad(bad_source, tmp_path_factory):
    """One `geoagent index` run over the bad source: (result, store, errors file)."""
    csv_path, images, _ = bad_source
    root = tmp_path_factory.mktemp("indexed-bad")
    store, errors = root / "store", root / "errors.csv"
    result = geoagent("index", csv_path, "--images", images, "--store", store, "--errors", errors)
    return result, store, errors


def test_bad_entries_are_skipped_with_reasons(bad_source, indexed_bad):
    _, _, rows = bad_source
    result, store, errors = indexed_bad
    assert result.exit_code == 0, result.output
    out = flat(result.stdout)
    n_skipped = len(SKIPPED) + 1  # + the duplicate
    assert f"{len(rows)} entries in source: {len(GOOD)} added, 0 already stored, {n_skipped} skipped" in out
    assert "skipped, bad coordinates: 5" in out
    assert "skipped, duplicate id: 1" in out
    for reason in ("decompression bomb", "corrupt image", "not an image", "missing file"):
        assert f"skipped, {reason}: 1" in out
    assert f"gallery 'gallery': {len(GOOD)} entries" in out

    # one row per skipped entry, with its reason
    skipped = read_errors(errors)
    assert len(skipped) == n_skipped
    reasons = {row["image_id"]: row["reason"] for row in skipped if row["reason"] != "duplicate id"}
    assert reasons == SKIPPED
    assert [row["image_id"] for row in skipped if row["reason"] == "duplicate id"] == ["good0.jpg"]
    assert all(row["detail"] for row in skipped)

    # exactly the good entries are stored, CMYK / 16-bit / RGBA included, with their coordinates
    entries = stored(store)
    assert set(entries) == set(GOOD)
    for image_id, (lat, lon) in GOOD.items():
        meta = entries[image_id]
        assert (meta["lat"], meta["lon"]) == pytest.approx((lat, lon))
        assert meta["image_id"] == image_id
        assert meta["source"] == "source"


def test_a_second_run_adds_nothing_and_rewrites_nothing(bad_source, tmp_path):
    csv_path, images, rows = bad_source
    store, errors = tmp_path / "store", tmp_path / "errors.csv"
    assert geoagent("index", csv_path, "--images", images, "--store", store, "--errors", errors).exit_code == 0
    gallery = Gallery.open(open_client(store), "gallery")
    # Overwrite one stored vector: a second run that re-embedded it would restore it.
    marker = np.zeros(gallery.dim, np.float32)
    marker[0] = 1.0
    gallery.collection.update(ids=["good2.jpg"], embeddings=[marker])

    again = geoagent("index", csv_path, "--images", images, "--store", store, "--errors", errors)
    assert again.exit_code == 0, again.output
    assert f"{len(rows)} entries in source: 0 added, {len(GOOD)} already stored" in flat(again.stdout)
    assert set(stored(store)) == set(GOOD)
    vector = gallery.collection.get(ids=["good2.jpg"], include=["embeddings"])["embeddings"][0]
    np.testing.assert_array_equal(np.asarray(vector, np.float32), marker)
    # the skipped entries are reported again, once each
    assert len(read_errors(errors)) == len(SKIPPED) + 1


def test_indexed_vectors_are_what_a_query_embeds(bad_source, indexed_bad):
    """Ingest and query must preprocess the same way: each photo finds itself at similarity ~1."""
    _, images, _ = bad_source
    result, store, _ = indexed_bad
    assert result.exit_code == 0, result.output
    encoder = create_encoder("efficientnet-lite0")
    gallery = Gallery.open(open_client(store), "gallery", encoder_name=encoder.name, dim=encoder.dim)
    for image_id, (lat, lon) in GOOD.items():
        [top] = gallery.query(encoder.embed([load_image(images / image_id)])[0], k=1).positives
        assert top.image_id == image_id
        assert top.similarity == pytest.approx(1.0, abs=1e-3)
        assert (top.lat, top.lon) == pytest.approx((lat, lon))


def test_resume_after_a_crash(bad_source, tmp_path):
    """A run that stopped half way: the next run adds only what is missing."""
    csv_path, images, rows = bad_source
    store = tmp_path / "store"
    half = write_csv(tmp_path / "half.csv", ["IMG_ID", "LAT", "LON"], rows[:4])
    first = geoagent("index", half, "--images", images, "--store", store, "--errors", tmp_path / "e1.csv")
    assert first.exit_code == 0, first.output
    assert set(stored(store)) == {r[0] for r in rows[:4]}

    second = geoagent("index", csv_path, "--images", images, "--store", store, "--errors", tmp_path / "e2.csv", "--batch-size", "2")
    assert second.exit_code == 0, second.output
    assert f"{len(GOOD) - 4} added, 4 already stored" in flat(second.stdout)
    entries = stored(store)  # also checks that no id is stored twice
    assert set(entries) == set(GOOD)
    assert Gallery.open(open_client(store), "gallery").count() == len(GOOD)


def test_small_batches_and_progress_through_the_api(bad_source, tmp_path):
    csv_path, images, _ = bad_source
    encoder = create_encoder()
    gallery = Gallery.open(open_client(tmp_path / "store"), "api", encoder_name=encoder.name, dim=encoder.dim, create=True)
    seen: list[tuple[int, int]] = []
    summary = index_source(csv_path, gallery, encoder, images=images, batch_size=2, workers=3, progress=lambda d, t: seen.append((d, t)))
    assert summary.added == len(GOOD) and summary.already_stored == 0
    assert summary.skipped_total == len(SKIPPED) + 1
    assert summary.errors_file is None
    n_todo = len(GOOD) + 4  # bomb, corrupt, text, missing: only found bad when read
    assert seen[0] == (0, n_todo) and seen[-1] == (n_todo, n_todo)
    assert [d for d, _ in seen] == list(range(n_todo + 1))
    assert gallery.count() == len(GOOD)


def test_default_errors_file_is_per_collection(bad_source, tmp_path):
    csv_path, images, _ = bad_source
    result = geoagent("index", csv_path, "--images", images, "--store", tmp_path / "store", "--collection", "my-gallery")
    assert result.exit_code == 0, result.output
    # Beside the gallery, in the store folder, not in the working directory.
    errors = tmp_path / "store" / "my-gallery-index-errors.csv"
    assert len(read_errors(errors)) == len(SKIPPED) + 1
    assert str(errors.name) in flat(result.stdout)
    assert not (tmp_path / "my-gallery-index-errors.csv").exists()


# ------------------------------------------------------------------ wrong SOURCE


@pytest.fixture
def populated_store(tmp_path) -> Path:
    """A store holding an efficientnet-lite0 gallery of three entries."""
    store = tmp_path / "store"
    gallery = Gallery.open(open_client(store), "gallery", encoder_name="efficientnet-lite0", dim=1280, create=True)
    vectors = np.random.default_rng(0).standard_normal((3, 1280)).astype(np.float32)
    gallery.add(["a.jpg", "b.jpg", "c.jpg"], vectors, [{"lat": 1.0, "lon": 2.0, "image_id": i} for i in "abc"])
    return store


def assert_failed_cleanly(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.output


def test_missing_source(populated_store, tmp_path):
    before = list_galleries(open_client(populated_store))
    result = geoagent("index", tmp_path / "nope.csv", "--images", tmp_path, "--store", populated_store)
    assert_failed_cleanly(result, "nope.csv", "does not exist")
    assert list_galleries(open_client(populated_store)) == before


def test_csv_without_coordinate_columns(populated_store, tmp_path):
    before = list_galleries(open_client(populated_store))
    source = write_csv(tmp_path / "cols.csv", ["filename", "city", "country"], [["good0.jpg", "Paris", "FR"]])
    result = geoagent("index", source, "--images", tmp_path, "--store", populated_store)
    assert_failed_cleanly(result, "cols.csv", "filename", "city", "country")
    assert list_galleries(open_client(populated_store)) == before


def test_csv_without_images_option(populated_store, bad_source):
    csv_path, _, _ = bad_source
    before = list_galleries(open_client(populated_store))
    result = geoagent("index", csv_path, "--store", populated_store)
    assert_failed_cleanly(result, "--images")
    assert list_galleries(open_client(populated_store)) == before


def test_images_option_that_is_not_a_folder(populated_store, bad_source, tmp_path):
    csv_path, _, _ = bad_source
    before = list_galleries(open_client(populated_store))
    result = geoagent("index", csv_path, "--images", tmp_path / "no-such-folder", "--store", populated_store)
    assert_failed_cleanly(result, "no-such-folder")
    assert list_galleries(open_client(populated_store)) == before


def test_a_photo_given_as_source(populated_store, bad_source):
    _, images, _ = bad_source
    before = list_galleries(open_client(populated_store))
    result = geoagent("index", images / "good1.jpg", "--images", images, "--store", populated_store)
    assert_failed_cleanly(result, "good1.jpg", "CSV")
    assert list_galleries(open_client(populated_store)) == before


def test_csv_that_is_not_utf8(populated_store, bad_source, tmp_path):
    _, images, _ = bad_source
    source = tmp_path / "latin1.csv"
    source.write_bytes("IMG_ID,LAT,LON\ngood0.jpg,1,2\ncaf\xe9.jpg,3,4\n".encode("latin-1"))
    before = list_galleries(open_client(populated_store))
    result = geoagent("index", source, "--images", images, "--store", populated_store)
    assert_failed_cleanly(result, "latin1.csv")
    assert list_galleries(open_client(populated_store)) == before


def test_gallery_of_another_encoder_is_not_extended(bad_source, tmp_path):
    csv_path, images, _ = bad_source
    store = tmp_path / "store"
    Gallery.open(open_client(store), "gallery", encoder_name="clip:some-other", dim=16, create=True)
    result = geoagent("index", csv_path, "--images", images, "--store", store)
    assert_failed_cleanly(result, "clip:some-other", "efficientnet-lite0")
    assert Gallery.open(open_client(store), "gallery").count() == 0


def test_unknown_encoder_on_the_command_line(bad_source, tmp_path):
    csv_path, images, _ = bad_source
    result = geoagent("index", csv_path, "--images", images, "--store", tmp_path / "store", "--encoder", "efficientnet-lite")
    assert_failed_cleanly(result, "Did you mean 'efficientnet-lite0'")


def test_wrong_source_in_a_real_process(populated_store, tmp_path):
    """The installed console script: exit status 2, one `error:` line, nothing stored."""
    before = list_galleries(open_client(populated_store))
    proc = subprocess.run(
        [str(GEOAGENT), "index", str(tmp_path / "nope.csv"), "--images", str(tmp_path), "--store", str(populated_store)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nope.csv" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert list_galleries(open_client(populated_store)) == before


def test_wrong_source_creates_no_gallery(tmp_path):
    store = tmp_path / "fresh-store"
    result = geoagent("index", tmp_path / "nope.csv", "--images", tmp_path, "--store", store)
    assert result.exit_code == 2
    assert not store.exists() or list_galleries(open_client(store)) == []


def test_summary_lines_are_not_wrapped_when_piped(bad_source, tmp_path, monkeypatch):
    csv_path, images, _ = bad_source
    monkeypatch.delenv("COLUMNS", raising=False)
    name = "a-gallery-with-a-rather-long-but-perfectly-valid-name-2024"
    result = geoagent("index", csv_path, "--images", images, "--store", tmp_path / "s", "--collection", name)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("gallery ") and line.endswith("1280-d)") for line in lines), lines


# ------------------------------------------------------------------ other SOURCE shapes


def test_folder_of_exif_tagged_photos(tmp_path):
    folder = tmp_path / "trip"
    (folder / "day2").mkdir(parents=True)
    places = {
        "eiffel.jpg": (48.8584, 2.2945),
        "day2/opera.jpg": (-33.8568, 151.2153),
        "day2/liberty.jpg": (40.6892, -74.0445),
    }
    for i, (name, (lat, lon)) in enumerate(places.items()):
        gps_jpeg(folder / name, lat, lon, seed=i)
    noise_jpeg(folder / "no-gps.jpg", seed=7)
    (folder / "README.txt").write_text("holiday photos\n")
    (folder / ".hidden").mkdir()
    gps_jpeg(folder / ".hidden" / "thumb.jpg", 1.0, 1.0)  # hidden: not part of the source

    store, errors = tmp_path / "store", tmp_path / "errors.csv"
    result = geoagent("index", folder, "--store", store, "--errors", errors)
    assert result.exit_code == 0, result.output
    assert "5 entries in source: 3 added, 0 already stored, 2 skipped" in flat(result.stdout)
    entries = stored(store)
    assert set(entries) == set(places)
    for name, (lat, lon) in places.items():
        assert (entries[name]["lat"], entries[name]["lon"]) == pytest.approx((lat, lon), abs=1e-4)
        assert entries[name]["source"] == "trip"
    reasons = {row["image_id"]: row["reason"] for row in read_errors(errors)}
    assert reasons == {"no-gps.jpg": "no EXIF GPS", "README.txt": "not an image"}


def test_folder_source_refuses_images_option(tmp_path):
    (tmp_path / "photos").mkdir()
    result = geoagent("index", tmp_path / "photos", "--images", tmp_path, "--store", tmp_path / "store")
    assert_failed_cleanly(result, "--images")


def test_mp16_style_columns(tmp_path):
    images = tmp_path / "mp16"
    (images / "3f" / "0a").mkdir(parents=True)
    rows = [
        ["3f/0a/111.jpg", "alice", 51.5007, -0.1246],
        ["3f/0a/222.jpg", "bob", 35.6586, 139.7454],
        ["333.jpg", "carol", -22.9519, -43.2105],
    ]
    for i, row in enumerate(rows):
        noise_jpeg(images / row[0], seed=20 + i)
    source = write_csv(tmp_path / "mp16.csv", ["IMG_ID", "AUTHOR", "LAT", "LON"], rows)
    result = geoagent("index", source, "--images", images, "--store", tmp_path / "store", "--errors", tmp_path / "e.csv")
    assert result.exit_code == 0, result.output
    entries = stored(tmp_path / "store")
    assert set(entries) == {r[0] for r in rows}
    for image_id, _, lat, lon in rows:
        assert (entries[image_id]["lat"], entries[image_id]["lon"]) == pytest.approx((lat, lon))


def test_osv5m_style_columns_and_ids_without_extension(tmp_path):
    images = tmp_path / "osv"
    images.mkdir()
    rows = [["100001", 45.4642, 9.19, "IT"], ["100002", -1.2921, 36.8219, "KE"], ["100003", 19.4326, -99.1332, "MX"]]
    for i, row in enumerate(rows):
        noise_jpeg(images / f"{row[0]}.jpg", seed=30 + i)
    # OSV-5M's train.csv has many more columns; a UTF-8 BOM must not hide the first one.
    source = tmp_path / "osv.csv"
    write_csv(source, ["id", "latitude", "longitude", "country"], rows)
    source.write_bytes(b"\xef\xbb\xbf" + source.read_bytes())
    result = geoagent("index", source, "--images", images, "--store", tmp_path / "store", "--errors", tmp_path / "e.csv")
    assert result.exit_code == 0, result.output
    assert "3 added" in flat(result.stdout)
    entries = stored(tmp_path / "store")
    assert set(entries) == {"100001", "100002", "100003"}
    assert (entries["100002"]["lat"], entries["100002"]["lon"]) == pytest.approx((-1.2921, 36.8219))
    # the country column is kept on the records (benchmark truth), the photo path resolved
    records, skips = read_source(source, images)
    assert skips == []
    by_id = {r.image_id: r for r in records}
    assert by_id["100002"].path == images / "100002.jpg"
    assert dict(by_id["100002"].places) == {"country": "KE"}


def test_read_source_reports_bad_rows_without_reading_photos(bad_source):
    csv_path, images, rows = bad_source
    records, skips = read_source(csv_path, images)
    assert len(records) + len(skips) == len(rows)
    assert {r.image_id for r in records} == set(GOOD) | {"bomb.png", "corrupt.jpg", "notes.jpg", "missing.jpg"}
    assert {s.image_id: s.kind for s in skips} == {
        "nolat.jpg": "bad coordinates",
        "lat95.jpg": "bad coordinates",
        "lon-200.jpg": "bad coordinates",
        "nonnumeric.jpg": "bad coordinates",
        "nanlat.jpg": "bad coordinates",
        "good0.jpg": "duplicate id",
    }


# ------------------------------------------------------------------ the real sample, end to end


@pytest.fixture(scope="module")
def sample_store(sample_dir, tmp_path_factory):
    """The 990-photo Im2GPS3k dev sample indexed once (about a minute on two cores)."""
    root = tmp_path_factory.mktemp("sample")
    store = root / "store"
    runs = []
    for i in range(2):
        result = runner.invoke(
            app,
            ["index", str(sample_dir / "im2gps3k-dev.csv"), "--images", str(sample_dir / "images"),
             "--store", str(store), "--errors", str(root / f"errors{i}.csv")],
        )
        runs.append(result)
    return store, root, runs


def test_full_sample_indexes_everything_once(sample_store, sample_dir):
    store, root, (first, second) = sample_store
    with (sample_dir / "im2gps3k-dev.csv").open(newline="") as fh:
        expected = {row["IMG_ID"]: (float(row["LAT"]), float(row["LON"])) for row in csv.DictReader(fh)}
    assert len(expected) == 990
    assert first.exit_code == 0, first.output
    assert "990 entries in source: 990 added, 0 already stored, 0 skipped" in flat(first.stdout)
    assert second.exit_code == 0, second.output
    assert "990 entries in source: 0 added, 990 already stored, 0 skipped" in flat(second.stdout)
    entries = stored(store)
    assert len(entries) == 990
    assert set(entries) == set(expected)
    for image_id in list(expected)[::97]:
        assert (entries[image_id]["lat"], entries[image_id]["lon"]) == pytest.approx(expected[image_id])
    assert not (root / "errors0.csv").exists()  # nothing skipped: no errors file
    rows = list_galleries(open_client(store))
    assert rows == [{"name": "gallery", "encoder": "efficientnet-lite0", "dim": 1280, "kind": "images", "count": 990}]


def test_query_the_sample_gallery(sample_store, sample_dir):
    store, _, _ = sample_store
    with (sample_dir / "im2gps3k-dev.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    encoder = create_encoder()
    gallery = Gallery.open(open_client(store), "gallery")
    for row in rows[::330]:
        photo = sample_dir / "images" / row["IMG_ID"]
        result = gallery.query(encoder.embed([load_image(photo)])[0], k=5)
        assert len(result.positives) == 5 and len(result.negatives) == 5
        first = result.positives[0]
        assert first.image_id == row["IMG_ID"]
        assert first.similarity == pytest.approx(1.0, abs=1e-3)
        assert (first.lat, first.lon) == pytest.approx((float(row["LAT"]), float(row["LON"])))
        sims = [n.similarity for n in result.positives]
        assert sims == sorted(sims, reverse=True)
        assert max(n.similarity for n in result.negatives) < min(sims)
        for n in result.positives + result.negatives:
            assert -90 <= n.lat <= 90 and -180 <= n.lon <= 180
            assert n.source == "im2gps3k-dev"


def test_galleries_command_lists_the_sample(sample_store):
    store, _, _ = sample_store
    result = geoagent("galleries", "--store", store)
    assert result.exit_code == 0, result.output
    assert "gallery" in result.stdout and "990 entries" in result.stdout and "1280-d" in result.stdout


def test_galleries_of_an_empty_store(tmp_path):
    result = geoagent("galleries", "--store", tmp_path / "empty")
    assert result.exit_code == 0
    assert "no galleries" in result.stdout

