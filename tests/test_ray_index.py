"""`geoagent index SOURCE --ray local`: Ray Data reads tar shards, decodes and embeds on an actor
pool of a local two-CPU Ray cluster on 127.0.0.1, and writes to a real `chroma run` server; a
second run embeds nothing already stored."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli import app
from rag_store.encoders import create_encoder
from rag_store.images import load_image
from rag_store.store import Gallery, open_client
from tests.imagegen import noise_jpeg
from tests.test_chroma_server import chroma_url  # noqa: F401  (the `chroma run` server fixture)
from tests.test_sources import write_tar

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'geoagent[ray]'")
runner = CliRunner()
N_GOOD = 6


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(
        num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
        object_store_memory=150 * 1024 * 1024, log_to_driver=False, configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ray-shards")
    truth = {}
    for s in range(2):
        members = []
        for i in range(N_GOOD // 2):
            image_id = f"s{s}-{i}"
            truth[image_id] = (10.0 * s + i, 20.0 + i)
            photo = noise_jpeg(root / f"{image_id}.jpg", seed=10 * s + i)
            members += [(f"{i:04d}.jpg", photo.read_bytes()),
                        (f"{i:04d}.json", json.dumps({"id": image_id, "lat": truth[image_id][0], "lon": truth[image_id][1]}).encode())]
        members += [("bad.jpg", b"not a photo"), ("bad.json", json.dumps({"id": f"bad{s}", "lat": 1, "lon": 1}).encode())]
        write_tar(root / f"{s:05d}.tar", members)
    return root, truth


def geoagent(*args):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_ray_index_into_a_chroma_server_and_resume(ray_cluster, chroma_url, shards, tmp_path):  # noqa: F811
    root, truth = shards
    errors = tmp_path / "errors.csv"
    # First only shard 0 (a run that stopped part-way), then both.
    first = geoagent("index", f"{root}/00000.tar", "--ray", "local", "--chroma-url", chroma_url,
                     "--collection", "ray-gallery", "--errors", errors)
    assert first.exit_code == 0, first.output
    gallery = Gallery.open(open_client(None, chroma_url), "ray-gallery")
    assert gallery.count() == N_GOOD // 2

    second = geoagent("index", f"{root}/{{00000..00001}}.tar", "--ray", "local", "--chroma-url", chroma_url,
                      "--collection", "ray-gallery", "--errors", errors)
    assert second.exit_code == 0, second.output
    text = " ".join(second.stdout.split())
    assert f"{N_GOOD // 2} added, {N_GOOD // 2} already stored, 2 skipped" in text
    with errors.open(newline="") as fh:
        assert {r["image_id"]: r["reason"] for r in csv.DictReader(fh)} == {"bad0": "not an image", "bad1": "not an image"}

    res = gallery.collection.get(include=["metadatas", "embeddings"])
    assert sorted(res["ids"]) == sorted(truth)
    encoder = create_encoder()
    for image_id, meta, vector in zip(res["ids"], res["metadatas"], res["embeddings"], strict=True):
        assert (meta["lat"], meta["lon"]) == pytest.approx(truth[image_id])
        # The vector the actors stored is what the encoder gives the same photo here.
        expected = encoder.embed([load_image(root / f"{image_id}.jpg")])[0]
        assert float(np.dot(vector, expected)) == pytest.approx(1.0, abs=1e-4)


def test_ray_needs_a_chroma_server(shards, tmp_path):
    root, _ = shards
    result = geoagent("index", f"{root}/00000.tar", "--ray", "local", "--store", tmp_path / "store")
    assert result.exit_code == 2
    assert "--chroma-url" in " ".join(result.output.split())
