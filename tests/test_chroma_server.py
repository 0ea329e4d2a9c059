"""A real `chroma run` server: `geoagent index --chroma-url` writes to it, Gallery reads it back."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from rag_store.encoders import create_encoder
from rag_store.errors import ConfigError, EncoderMismatch
from rag_store.images import load_image
from rag_store.store import Gallery, list_galleries, open_client

BIN = Path(sys.executable).parent
N_PHOTOS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory):
    chroma = BIN / "chroma"
    if not chroma.is_file():
        pytest.skip(f"the chroma server binary is not installed at {chroma}")
    root = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(root / "data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"chroma run exited with {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"chroma run did not answer within 30 s: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def subset(sample_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A CSV of the first N_PHOTOS sample photos; the photos stay where they are."""
    with (sample_dir / "im2gps3k-dev.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:N_PHOTOS]
    path = tmp_path_factory.mktemp("subset") / "subset.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["IMG_ID", "LAT", "LON"])
        writer.writeheader()
        writer.writerows(rows)
    return path, rows


@pytest.fixture(scope="module")
def indexed(chroma_url, subset, sample_dir, tmp_path_factory):
    """`geoagent index` (the installed console script) into the server, twice."""
    csv_path, _ = subset
    cwd = tmp_path_factory.mktemp("index-run")
    runs = [
        subprocess.run(
            [str(BIN / "geoagent"), "index", str(csv_path), "--images", str(sample_dir / "images"),
             "--chroma-url", chroma_url, "--collection", "server-gallery"],
            capture_output=True, text=True, timeout=600, cwd=cwd,
        )
        for _ in range(2)
    ]
    return runs


def test_index_into_the_server(indexed):
    first, second = indexed
    assert first.returncode == 0, first.stderr
    assert f"{N_PHOTOS} entries in source: {N_PHOTOS} added, 0 already stored, 0 skipped" in " ".join(first.stdout.split())
    assert second.returncode == 0, second.stderr
    assert f"0 added, {N_PHOTOS} already stored" in " ".join(second.stdout.split())


def test_query_the_server_gallery(indexed, chroma_url, subset, sample_dir):
    _, rows = subset
    client = open_client(chroma_url=chroma_url)
    encoder = create_encoder("efficientnet-lite0")
    gallery = Gallery.open(client, "server-gallery", encoder_name=encoder.name, dim=encoder.dim)
    assert gallery.count() == N_PHOTOS
    for row in rows[:3]:
        query = encoder.embed([load_image(sample_dir / "images" / row["IMG_ID"])])[0]
        result = gallery.query(query, k=5, negatives=3)
        top = result.positives[0]
        assert top.image_id == row["IMG_ID"]
        assert top.similarity == pytest.approx(1.0, abs=1e-3)
        assert (top.lat, top.lon) == pytest.approx((float(row["LAT"]), float(row["LON"])))
        assert len(result.positives) == 5 and len(result.negatives) == 3
        assert max(n.similarity for n in result.negatives) < min(n.similarity for n in result.positives)
    listed = {g["name"]: g for g in list_galleries(client)}
    assert listed["server-gallery"]["count"] == N_PHOTOS
    assert listed["server-gallery"]["encoder"] == "efficientnet-lite0"


def test_galleries_command_on_the_server(indexed, chroma_url, tmp_path):
    proc = subprocess.run(
        [str(BIN / "geoagent"), "galleries", "--chroma-url", chroma_url],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "server-gallery" in proc.stdout and f"{N_PHOTOS} entries" in proc.stdout


def test_server_gallery_checks_the_encoder(indexed, chroma_url):
    client = open_client(chroma_url=chroma_url)
    with pytest.raises(EncoderMismatch):
        Gallery.open(client, "server-gallery", encoder_name="clip:other", dim=768)
    gallery = Gallery.open(client, "server-gallery")
    with pytest.raises(EncoderMismatch):
        gallery.add(["x"], np.ones((1, 5), np.float32), [{"lat": 0.0, "lon": 0.0}])
    assert gallery.count() == N_PHOTOS


def test_store_and_server_together_are_refused(chroma_url, tmp_path):
    with pytest.raises(ConfigError):
        open_client(tmp_path / "store", chroma_url)
