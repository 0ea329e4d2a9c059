"""`geoagent eval report RUN_DIR` on a hand-made run of two configs."""

from __future__ import annotations

import base64
import json
import re

import pytest
from typer.testing import CliRunner

from agent.cli import app  # the real `geoagent` command, with `eval` mounted as users get it
from eval.records import items_by_config, make_record, read_results
from eval.report import build_report
from rag_store.errors import InputError

TRUTH = {
    "p1": (48.8566, 2.3522),  # Paris
    "p2": (-33.8688, 151.2093),  # Sydney
    "p3": (35.6762, 139.6503),  # Tokyo
    "p4": (0.0, 179.5),  # near the date line
}


def prediction(lat, lon, status="ok", model="gpt-4o-mini", calls=1, tokens=(1000, 100)):
    return {"latitude": lat, "longitude": lon, "status": status, "model": model, "llm_calls": calls,
            "prompt_tokens": tokens[0], "completion_tokens": tokens[1], "latency_s": 1.5}


def target(item_id):
    lat, lon = TRUTH[item_id]
    return {"lat": lat, "lon": lon}


@pytest.fixture
def run_dir(tmp_path):
    records = [
        # "img2loc": exact on Paris, 1 degree off across the date line, Tokyo refused, Sydney missing.
        {"config": "img2loc", "id": "p1", "target": target("p1"), "output": prediction(48.8566, 2.3522),
         "status": "ok", "scores": {}, "timings": {"total_s": 2.0}, "error": None},
        {"config": "img2loc", "id": "p4", "target": target("p4"), "output": prediction(0.0, -179.5),
         "status": "ok", "scores": {}, "timings": {"total_s": 3.0}, "error": None},
        {"config": "img2loc", "id": "p3", "target": target("p3"),
         "output": prediction(None, None, status="refused"), "status": "refused", "scores": {},
         "timings": {"total_s": 1.0}, "error": None},
        # "retrieval-only": answers everything, roughly; written with the runner's helper.
        make_record("retrieval-only", "p1", target("p1"), prediction(51.5074, -0.1278, calls=0, tokens=(0, 0)),
                    timings={"total_s": 0.2}),
        make_record("retrieval-only", "p2", target("p2"), prediction(-37.8136, 144.9631, calls=0, tokens=(0, 0)),
                    timings={"total_s": 0.2}),
        make_record("retrieval-only", "p3", target("p3"), prediction(35.0, 135.0, calls=0, tokens=(0, 0)),
                    timings={"total_s": 0.3}),
        make_record("retrieval-only", "p4", target("p4"), None, timings={"total_s": 0.1},
                    error="ImageError: corrupt image"),
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "run.json").write_text(json.dumps({"dataset": "im2gps3k"}))
    return tmp_path


def test_records_per_config_share_one_truth_set(run_dir):
    items, superseded = items_by_config(read_results(run_dir / "results.jsonl"))
    assert list(items) == ["img2loc", "retrieval-only"]
    assert [len(v) for v in items.values()] == [4, 4]
    img2loc = {i.item_id: i for i in items["img2loc"]}
    assert img2loc["p2"].status == "missing"
    assert superseded == {"img2loc": 0, "retrieval-only": 0}


def test_report_tables_anchors_and_self_contained_html(run_dir):
    report = build_report(run_dir, n_resamples=200)
    m = report.metrics
    assert m["img2loc"].n_items == m["retrieval-only"].n_items == 4
    assert (m["img2loc"].n_answered, m["img2loc"].n_refused, m["img2loc"].n_missing) == (2, 1, 1)
    assert m["img2loc"].accuracy[1] == pytest.approx(25.0)
    assert m["img2loc"].accuracy[200] == pytest.approx(50.0)  # 111 km across the date line
    assert m["retrieval-only"].n_error == 1 and m["retrieval-only"].cost_usd == 0.0
    assert m["img2loc"].cost_usd == pytest.approx((3000 * 0.15 + 300 * 0.60) / 1e6)

    md = report.markdown.read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| img2loc | 4 | 50.0 | 25.00 |") for line in table)
    assert any(line.startswith("| retrieval-only | 4 | 75.0 |") for line in table)
    assert any("Img2Loc (GPT-4V) [1] (published)" in line and "17.10 | 45.14 | 57.87 | 72.91 | 84.68" in line for line in table)
    assert any("PIGEOTTO" in line and "11.30 | 36.70" in line for line in table)
    assert "Zhou et al., \"Img2Loc: Revisiting Image Geolocalization" in md and "SIGIR 2024" in md
    assert "Jia et al., \"G3:" in md and "NeurIPS 2024" in md
    assert "Vivanco Cepeda et al." in md and "Haas et al., \"PIGEON: Predicting Image Geolocations\", CVPR 2024" in md
    for path in report.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"report_files/{path.name}" in md

    page = report.html.read_text()
    assert "img2loc" in page and "retrieval-only" in page and "Img2Loc (GPT-4V) [1] (published)" in page
    assert "SIGIR 2024" in page
    # Self-contained: no resource fetched from anywhere, every image inline.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    images = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(images) == 4  # accuracy, error CDF, one map per config
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"


def test_report_without_dataset_has_no_anchors(run_dir):
    (run_dir / "run.json").unlink()
    report = build_report(run_dir, n_resamples=50, maps=False, geography=False)
    md = report.markdown.read_text()
    assert "Img2Loc (GPT-4V)" not in md and "names no dataset" in md
    assert len(report.figures) == 2


def test_subset_dataset_is_flagged(run_dir):
    (run_dir / "run.json").write_text(json.dumps({"dataset": "yfcc4k-dev"}))
    report = build_report(run_dir, n_resamples=50, maps=False, geography=False)
    md = report.markdown.read_text()
    assert "G3 (GPT-4V) [2] (published) | 4536 (full set)" in md
    assert "subset of yfcc4k" in md and "PIGEOTTO" not in md
    assert "Incomplete run" not in md
    # run.json says the dataset had 10 items: only 4 have a record.
    (run_dir / "run.json").write_text(json.dumps({"dataset": "yfcc4k-dev", "dataset_info": {"size": 10}}))
    md = build_report(run_dir, n_resamples=50, maps=False, geography=False).markdown.read_text()
    assert "Incomplete run: 4 of the dataset's 10 items have a record" in md


def test_cli_report_and_errors(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "report", str(run_dir), "--no-maps"])
    assert result.exit_code == 0, result.output
    table = result.output.splitlines()
    assert [line.split()[0] for line in table[2:4]] == ["img2loc", "retrieval-only"]  # one table, systems first
    assert any("(published)" in line for line in table[4:]) and "wrote" in result.output
    assert (run_dir / "report.html").is_file()
    result = runner.invoke(app, ["eval", "report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "error: run directory not found" in result.output
    (run_dir / "results.jsonl").write_text('{"config": "x", "id": "1"}\n')
    with pytest.raises(InputError, match="results.jsonl:1: record has no 'target'"):
        build_report(run_dir)


def test_report_setup_calibration_worst_errors_and_one_entry_per_item(run_dir, tmp_path):
    from PIL import Image

    photo = tmp_path / "p1.jpg"
    Image.new("RGB", (300, 200), (40, 120, 200)).save(photo)
    records = read_results(run_dir / "results.jsonl")
    hostile = "<script>alert(1)</script>\x1b[31m"
    for r in records:
        if r["config"] == "img2loc" and r["id"] == "p1":
            r["input"] = str(photo)
            r["output"].update(confidence=0.9, reasoning=hostile, place="Paris",
                               transcript=[{"variant": 0, "sample": 0, "outcome": "ok", "detail": "",
                                            "prompt": "Where is this photo taken?", "reply": hostile}])
        elif r["output"] and r["output"].get("latitude") is not None:
            r["output"]["confidence"] = 0.3
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "run.json").write_text(json.dumps({
        "dataset": "im2gps3k-dev", "dataset_info": {"size": 4, "source_size": 990},
        "invocation": {"dataset": {"source": "x.csv", "limit": 4}},
        "setup": {"model": "gpt-4o-mini", "endpoint_host": "127.0.0.1", "gallery": "gallery", "gallery_size": 150,
                  "encoder": "efficientnet-lite0", "k": 16, "date": "2026-11-25 18:00 UTC", "geoagent_version": "0.1.0"},
    }))
    report = build_report(run_dir, n_resamples=50, maps=False, geography=False)
    page = report.html.read_text()
    setup = page[page.index('id="setup"'):page.index("<h2>Results")]
    for value in ("gpt-4o-mini", "127.0.0.1", "150", "efficientnet-lite0", "16", "4 of 990 items (first 4)", "0.1.0"):
        assert f"<td>{value}</td>" in setup, value
    assert "Published rows: the full im2gps3k test set (2997 photos)" in page and "a gallery of 150 photos" in page
    calibration = page[page.index('id="calibration"'):page.index("<h2>Worst errors")]
    # img2loc: Paris exact at 0.9, the date-line item (111 km) at 0.3; retrieval-only: three at 0.3.
    assert "<td>img2loc</td><td>0.8–1.0</td><td>1</td><td>0.90</td><td>100.0</td><td>100.0</td>" in calibration
    assert "<td>img2loc</td><td>0.2–0.4</td><td>1</td><td>0.30</td><td>0.0</td><td>100.0</td>" in calibration
    assert "img2loc: ECE 25 km: 0.200, 750 km: 0.400 over 2 answered items" in calibration
    # One entry per item and system (4 items x 2 systems), with filters, thumbnail and transcript.
    assert page.count('<tr class="item"') == 8
    assert '<select id="f-system">' in page and '<select id="f-status">' in page
    assert page.count('<img class="thumb" alt="" src="data:image/jpeg;base64,') == 2  # p1, both systems
    assert "Where is this photo taken?" in page
    # Model text is escaped and cleaned: no live tag, no escape code.
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x1b" not in page
    worst = page[page.index("<h2>Worst errors"):]
    assert "<td>retrieval-only</td><td>p2</td>" in worst  # Sydney -> Melbourne, the largest error
