"""Benchmark runs: results written as they finish, resumable after SIGKILL, cached, scored."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.datasets import load_dataset
from eval.systems import load_system
from rag_store import Gallery, create_encoder, index_source, open_client
from rag_store.errors import ConfigError
from tests.conftest import GALLERY_PLACES
from tests.imagegen import noise_jpeg
from tests.openai_server import OpenAIServer, Reply

ANSWER = json.dumps({"clues": ["c"], "candidates": [{"latitude": 48.85, "longitude": 2.35, "place": "Paris", "confidence": 0.6}], "reasoning": "r"})
CLI = [sys.executable, "-m", "agent.cli"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    """A 40-photo gallery and a 12-photo test CSV, all generated (no sample data needed)."""
    root = tmp_path_factory.mktemp("evalrun")
    images = root / "images"
    images.mkdir()
    places = GALLERY_PLACES
    gallery_rows, test_rows = [["IMG_ID", "LAT", "LON"]], [["IMG_ID", "LAT", "LON"]]
    for i in range(40):
        noise_jpeg(images / f"g{i:02d}.jpg", seed=500 + i, size=(128, 96))
        gallery_rows.append([f"g{i:02d}.jpg", *places[i % len(places)]])
    for i in range(12):
        noise_jpeg(images / f"t{i:02d}.jpg", seed=900 + i, size=(128, 96))
        lat, lon = places[(3 * i + 1) % len(places)]
        test_rows.append([f"t{i:02d}.jpg", lat + 0.05, lon])
    gallery_csv, test_csv = root / "gallery.csv", root / "test.csv"
    with gallery_csv.open("w", newline="") as fh:
        csv.writer(fh).writerows(gallery_rows)
    with test_csv.open("w", newline="") as fh:
        csv.writer(fh).writerows(test_rows)
    encoder = create_encoder()
    store = root / "store"
    gallery = Gallery.open(open_client(store), "gallery", encoder_name=encoder.name, dim=encoder.dim, create=True)
    index_source(gallery_csv, gallery, encoder, images=images)
    return {"store": store, "csv": test_csv, "images": images, "root": root}


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GEOAGENT_"))}
    return {**env, "COLUMNS": "200", **extra}


def eval_run(bench: dict, run_dir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    cmd = [*CLI, "eval", "run", "--dataset", str(bench["csv"]), "--images", str(bench["images"]),
           "--store", str(bench["store"]), "--run-dir", str(run_dir), "--name", "im2gps3k", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(), **kwargs)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_retrieval_and_model_configs_write_results_metrics_and_report(bench, tmp_path):
    run_dir = tmp_path / "run"
    with OpenAIServer(default=ANSWER) as srv:
        run = eval_run(bench, run_dir, "--config", "retrieval-only", "--config", "zero-shot",
                       "--model", "test-vlm", "--base-url", srv.base_url, "--no-cache")
        assert run.returncode == 0, run.stderr
        assert len(srv.requests) == 12  # zero-shot: one call per photo; retrieval-only: none
    recs = records(run_dir)
    assert sorted((r["config"], r["id"]) for r in recs) == sorted(
        (c, row[0]) for c in ("retrieval-only", "zero-shot") for row in list(csv.reader(bench["csv"].open()))[1:]
    )
    zero = [r for r in recs if r["config"] == "zero-shot"]
    assert all(r["output"]["source"] == "llm" and r["output"]["latitude"] == 48.85 for r in zero)
    assert all(r["status"] == "ok" and "distance_km" in r["scores"] for r in recs)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"retrieval-only", "zero-shot"}
    assert metrics["zero-shot"]["n_items"] == 12 and metrics["zero-shot"]["llm_calls"] == 12
    assert "25 km" in run.stdout and "Median km" in run.stdout  # the comparison table
    report = subprocess.run([*CLI, "eval", "report", str(run_dir)], capture_output=True, text=True, timeout=300, env=_env())
    assert report.returncode == 0, report.stderr
    md = (run_dir / "report.md").read_text()
    assert "zero-shot" in md and "Img2Loc" in md


def test_failed_answers_stay_in_the_denominator(bench, tmp_path):
    run_dir = tmp_path / "run"
    with OpenAIServer(default=Reply(refusal="I can't help with that.")) as srv:
        run = eval_run(bench, run_dir, "--config", "zero-shot", "--model", "test-vlm", "--base-url", srv.base_url, "--no-cache")
    assert run.returncode == 0, run.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())["zero-shot"]
    assert metrics["n_items"] == 12 and metrics["n_refused"] == 12 and metrics["n_answered"] == 0
    assert metrics["acc_2500km"] == 0.0
    assert all(r["output"]["latitude"] is None for r in records(run_dir))


def test_sigkill_halfway_then_resume_records_every_item_exactly_once(bench, tmp_path):
    run_dir = tmp_path / "run"
    with OpenAIServer(default=ANSWER, delay=0.4) as srv:
        cmd = [*CLI, "eval", "run", "--dataset", str(bench["csv"]), "--images", str(bench["images"]),
               "--store", str(bench["store"]), "--run-dir", str(run_dir), "--name", "im2gps3k", "--config", "zero-shot",
               "--config", "retrieval-only", "--model", "test-vlm", "--base-url", srv.base_url,
               "--concurrency", "2", "--no-cache"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
        results = run_dir / "results.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline:
            if results.exists() and len(results.read_text().splitlines()) >= 8:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = len(records(run_dir))
        assert 8 <= before < 24, "the kill must land halfway"
        again = eval_run(bench, run_dir, "--config", "zero-shot", "--config", "retrieval-only",
                         "--model", "test-vlm", "--base-url", srv.base_url, "--concurrency", "2", "--no-cache")
        assert again.returncode == 2 and "--resume" in again.stderr  # never overwrites a run
        resumed = eval_run(bench, run_dir, "--config", "zero-shot", "--config", "retrieval-only",
                           "--model", "test-vlm", "--base-url", srv.base_url, "--concurrency", "2", "--no-cache", "--resume")
        assert resumed.returncode == 0, resumed.stderr
    pairs = [(r["config"], r["id"]) for r in records(run_dir)]
    assert len(pairs) == len(set(pairs)) == 24


def test_resume_refuses_a_different_run(bench, tmp_path):
    run_dir = tmp_path / "run"
    assert eval_run(bench, run_dir, "--config", "retrieval-only", "--limit", "3").returncode == 0
    other = eval_run(bench, run_dir, "--config", "retrieval-only", "--limit", "4", "--resume")
    assert other.returncode == 2 and "different run" in other.stderr
    assert len(records(run_dir)) == 3


def test_repeated_run_costs_no_model_calls(bench, tmp_path):
    cache = tmp_path / "cache"
    with OpenAIServer(default=ANSWER) as srv:
        for name in ("a", "b"):
            run = eval_run(bench, tmp_path / name, "--config", "g3", "--model", "test-vlm",
                           "--base-url", srv.base_url, "--cache-dir", str(cache), "--limit", "3")
            assert run.returncode == 0, run.stderr
        assert len(srv.requests) == 3 * 4  # g3: four prompt variants per photo, first run only
    first, second = records(tmp_path / "a"), records(tmp_path / "b")
    assert [r["output"]["latitude"] for r in first] == [r["output"]["latitude"] for r in second]
    assert sum(r["output"]["llm_calls"] for r in second) == 0


def test_run_file_with_includes(bench, tmp_path):
    (tmp_path / "mine.yaml").write_text("include: zero-shot\nprompt: tips\n")
    run_file = tmp_path / "run.yaml"
    with OpenAIServer(default=ANSWER) as srv:
        run_file.write_text(
            f"dataset:\n  source: {bench['csv']}\n  images: {bench['images']}\n  name: im2gps3k\n  sample: 4\n  seed: 1\n"
            f"configs: [retrieval-only, mine.yaml]\nmodel: test-vlm\nbase_url: {srv.base_url}\n"
            f"store: {bench['store']}\nrun_dir: out\nconcurrency: 4\n"
        )
        run = subprocess.run([*CLI, "eval", "run", str(run_file), "--no-cache"], capture_output=True, text=True, timeout=300, env=_env())
        assert run.returncode == 0, run.stderr
        assert "Useful signs" in srv.requests[0]["messages"][1]["content"][0]["text"]  # the tips prompt
    recs = records(tmp_path / "out")
    assert {r["config"] for r in recs} == {"retrieval-only", "mine"} and len(recs) == 8


def test_unknown_config_name_suggests(bench, tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'img2loc'"):
        load_system("img2lco")
    run = eval_run(bench, tmp_path / "r", "--config", "g33")
    assert run.returncode == 2 and "Did you mean 'g3'" in run.stderr and "Available:" in run.stderr
    assert not (tmp_path / "r" / "results.jsonl").exists()


def test_dataset_kinds_limit_and_sample(tmp_path, bench):
    from PIL import Image

    folder = tmp_path / "llmgeo"
    folder.mkdir()
    for name in ("2.3522_48.8566_paris.jpg", "151.2093_-33.8688_sydney.jpg", "-74.006_40.7128_nyc.jpg"):
        Image.new("RGB", (32, 32), "gray").save(folder / name)
    ds = load_dataset(folder)
    assert ds.kind == "llmgeo" and len(ds.samples) == 3
    assert {(s.lat, s.lon) for s in ds.samples} >= {(48.8566, 2.3522), (-33.8688, 151.2093)}
    full = load_dataset(bench["csv"], images=bench["images"])
    assert [s.id for s in load_dataset(bench["csv"], images=bench["images"], limit=5).samples] == [s.id for s in full.samples[:5]]
    a = load_dataset(bench["csv"], images=bench["images"], sample=5, seed=7)
    b = load_dataset(bench["csv"], images=bench["images"], sample=5, seed=7)
    assert [s.id for s in a.samples] == [s.id for s in b.samples] and len(a.samples) == 5
