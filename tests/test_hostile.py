"""The hostile matrix (issue 9): what a model, a URL, a file or a store sends never crashes,
hangs or invents a location. Each case gives its recorded status or ONE ``error:`` line.

The model is the real local HTTP server (``tests.openai_server``) sending each bad reply;
photos and galleries are generated (``tests.imagegen``), so this runs without the sample.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from agent import GeoAgent, Settings
from agent.api import fetch_url
from agent.chat import ChatSession
from rag_store.errors import ImageError
from rag_store.images import load_image, read_exif_gps
from tests.imagegen import gps_jpeg, noise_jpeg
from tests.openai_server import OpenAIServer, Reply

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "agent.cli"]
PARIS = {"latitude": 48.8566, "longitude": 2.3522, "place": "Paris, France", "confidence": 0.8}
ANSWER = json.dumps({"clues": ["a clue"], "candidates": [PARIS], "reasoning": "because"})
COMPLETION = {
    "id": "x", "object": "chat.completion", "created": 1, "model": "test-vlm",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GEOAGENT_"))}
    return {**env, "COLUMNS": "200", "PYTHONPATH": str(ROOT), **extra}


def geoagent(*args: object, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=_env(), **kwargs)


def one_error_line(run: subprocess.CompletedProcess, starts: str = "error: ") -> str:
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr + run.stdout
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), run.stderr
    return lines[0]


def agent_for(srv: OpenAIServer, store: Path | None = None, **overrides) -> GeoAgent:
    settings = dict(model="test-vlm", base_url=srv.base_url, api_key="sk-test", variants=(0,),
                    max_retries=0, timeout=5.0, store=str(store) if store else None)
    settings.update(overrides)
    return GeoAgent.from_settings(Settings(**settings))


# ------------------------------------------------------------------ malformed model replies

BAD_REPLIES = {
    "invalid JSON body": (b"{not json", "not valid JSON"),
    "empty body": (b"", "empty reply body"),
    "choices missing": (json.dumps({k: v for k, v in COMPLETION.items() if k != "choices"}).encode(), "without choices"),
    "choices empty": (json.dumps({**COMPLETION, "choices": []}).encode(), "without choices"),
    "null message": (json.dumps({**COMPLETION, "choices": [{"index": 0, "message": None}]}).encode(), "no message"),
    "JSON list": (b"[1, 2, 3]", "JSON list"),
    "100,000-deep nesting": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    "9 MB body": (b'{"a": "' + b"x" * 9_000_000 + b'"}', "over 8,000,000"),
}


@pytest.mark.parametrize("raw, reason", BAD_REPLIES.values(), ids=BAD_REPLIES.keys())
def test_malformed_reply_is_an_error_sample_never_a_crash(store, query_photo, raw, reason):
    with OpenAIServer(default=Reply(raw=raw)) as srv:
        p = agent_for(srv, store).locate(query_photo)
    assert p.model_outcomes == {"error": 1}
    assert reason in p.error
    # The retrieval answer, labelled as such; never the model's (non-)answer.
    assert p.status == "fallback" and p.source == "retrieval"
    with OpenAIServer(default=Reply(raw=raw)) as srv:
        q = agent_for(srv, store, fallback="none").locate(query_photo)
    assert q.status == "error" and q.latitude is None


def test_malformed_reply_through_the_cli_is_a_status_not_a_traceback(store, query_photo):
    with OpenAIServer(default=Reply(raw=b"[]")) as srv:
        run = geoagent("locate", query_photo, "--json", "--store", store, "--model", "m", "--base-url", srv.base_url)
    assert "Traceback" not in run.stderr
    p = json.loads(run.stdout)
    assert p["status"] == "fallback" and set(p["model_outcomes"]) == {"error"} and "JSON list" in p["error"]


@pytest.mark.parametrize("text, outcome", [
    ("I cannot tell where this is. " + json.dumps({"latitude": 0, "longitude": 0}), "refused"),
    (json.dumps({"latitude": "0", "longitude": "0", "place": "N/A"}), "unparseable"),
    ("{" * 100_000, "unparseable"),
], ids=["refusal then (0, 0)", "zeros as strings, N/A", "a reply full of {"])
def test_zero_zero_or_junk_answers_are_never_ok(store, query_photo, text, outcome):
    with OpenAIServer(default=text) as srv:
        p = agent_for(srv, store, fallback="none").locate(query_photo)
    assert p.model_outcomes == {outcome: 1}
    assert p.status == outcome and p.latitude is None


# ------------------------------------------------------------------ deadlines


def test_trickling_model_server_is_dropped_within_the_timeout(store, query_photo):
    body = json.dumps(COMPLETION).encode()
    with OpenAIServer(default=Reply(raw=body, trickle=0.2)) as srv:  # ~100 s to send it all
        started = time.monotonic()
        p = agent_for(srv, store, timeout=1.0, max_retries=1).locate(query_photo)
        elapsed = time.monotonic() - started
        assert len(srv.requests) == 2
    assert p.model_outcomes == {"error": 1} and "within 1 s" in p.error
    assert elapsed < 2 * 1.0 + 1.0 + 5  # two attempts, backoff, and the rest of the chain


def test_silent_model_server_falls_back_within_the_bound(store, query_photo):
    with OpenAIServer(default=Reply(raw=b"{}", hang=60)) as srv:
        started = time.monotonic()
        p = agent_for(srv, store, timeout=1.0, max_retries=2).locate(query_photo)
        elapsed = time.monotonic() - started
    assert p.status == "fallback" and "3 attempts" in p.error
    assert elapsed < 3 * 1.0 + 1.5 + 5


def test_default_timeout_and_retries_give_up_on_a_silent_server_within_about_two_minutes():
    s = Settings()
    worst = (s.max_retries + 1) * s.timeout + sum(min(8.0, 0.5 * 2**i) for i in range(s.max_retries))
    assert worst <= 130


def _trickling_http_server() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def serve() -> None:
        conn, _ = sock.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
        try:
            for _ in range(100_000):
                conn.sendall(b"x")
                time.sleep(0.2)
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/photo.jpg"


def test_trickling_image_url_is_dropped_within_the_timeout():
    sock, url = _trickling_http_server()
    started = time.monotonic()
    with pytest.raises(ImageError, match="did not finish downloading within 1 s"):
        fetch_url(url, max_bytes=10_000_000, timeout=1.0)
    assert time.monotonic() - started < 3
    sock.close()


# ------------------------------------------------------------------ chat


def test_broken_stream_is_one_line_and_the_chat_goes_on(store, query_photo):
    broken = Reply(raw=b'data: {"id": "x", "choices": [{"delta": {"content": "Par', content_type="text/event-stream")
    with OpenAIServer([broken, "It is Paris."]) as srv:
        out = io.StringIO()
        session = ChatSession(agent_for(srv, store), Console(file=out, width=200))
        try:
            session.handle(f"/image {query_photo}")
            assert session.handle("where is this?")
            assert session.handle("and now?")
        finally:
            session.close()
    lines = out.getvalue().splitlines()
    errors = [line for line in lines if line.startswith("model error:")]
    assert len(errors) == 1 and "Traceback" not in out.getvalue()
    assert "It is Paris." in out.getvalue()


def test_unwritable_map_and_save_in_chat_are_one_line_each(store, query_photo, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    out = io.StringIO()
    session = ChatSession(GeoAgent.from_settings(Settings(store=str(store))), Console(file=out, width=200))
    try:
        session.handle(f"/image {query_photo}")
        session.handle("/locate")
        session.handle(f"/map {blocker}/m.html")
        session.handle(f"/save {blocker}/t.json")
        session.handle(f"/save {tmp_path / 'ok' / 't.json'}")  # the session went on, transcript intact
    finally:
        session.close()
    errors = [line for line in out.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("cannot write" in e for e in errors)
    saved = json.loads((tmp_path / "ok" / "t.json").read_text())
    assert [m["role"] for m in saved["messages"]].count("error") == 2


# ------------------------------------------------------------------ files and paths


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        noise_jpeg(folder / f"ok{i}.jpg", seed=i)
    return folder


def write_csv(path: Path, rows: list[list]) -> Path:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([["IMG_ID", "LAT", "LON"], *rows])
    return path


def read_errors(path: Path) -> dict[str, str]:
    return {r["image_id"]: r["reason"] for r in csv.DictReader(path.open())}


def test_image_ids_must_stay_inside_the_images_folder(tmp_path, images):
    outside = noise_jpeg(tmp_path / "secret.jpg", seed=9)
    (images / "link.jpg").symlink_to(outside)
    source = write_csv(tmp_path / "s.csv", [
        ["ok0.jpg", 10, 10],
        ["../secret.jpg", 11, 11],
        [str(outside), 12, 12],
        ["link.jpg", 13, 13],
        ["/etc/passwd", 14, 14],
    ])
    errors = tmp_path / "errors.csv"
    run = geoagent("index", source, "--images", images, "--store", tmp_path / "store", "--errors", errors)
    assert run.returncode == 0, run.stderr
    assert "1 added" in run.stdout
    assert read_errors(errors) == {
        "../secret.jpg": "path outside --images", str(outside): "path outside --images",
        "link.jpg": "path outside --images", "/etc/passwd": "path outside --images",
    }


def test_bad_coordinate_rows_are_skipped_and_do_not_take_their_id(tmp_path, images):
    source = write_csv(tmp_path / "s.csv", [
        ["ok0.jpg", "abc", 10],  # bad: skipped, and ok0.jpg stays free
        ["ok0.jpg", 10, 10],  # taken
        ["ok1.jpg", 0, 0],  # (0, 0): missing, not a place
        ["ok2.jpg", "nan", 5],
    ])
    errors = tmp_path / "errors.csv"
    run = geoagent("index", source, "--images", images, "--store", tmp_path / "store", "--errors", errors)
    assert run.returncode == 0, run.stderr
    assert "1 added" in run.stdout
    rows = list(csv.DictReader(errors.open()))
    assert [(r["image_id"], r["reason"]) for r in rows] == [
        ("ok0.jpg", "bad coordinates"), ("ok1.jpg", "bad coordinates"), ("ok2.jpg", "bad coordinates"),
    ]
    assert "(0, 0)" in rows[1]["detail"]


def test_exif_gps_of_exactly_zero_zero_is_no_gps(tmp_path):
    assert read_exif_gps(gps_jpeg(tmp_path / "zero.jpg", 0.0, 0.0)) is None
    assert read_exif_gps(gps_jpeg(tmp_path / "real.jpg", 0.0, 0.5)) == pytest.approx((0.0, 0.5))


@pytest.mark.parametrize("command", ["index", "score"])
def test_a_fifo_is_refused_not_read(tmp_path, images, command):
    fifo = tmp_path / "source.csv"
    os.mkfifo(fifo)
    if command == "index":
        run = geoagent("index", fifo, "--images", images, "--store", tmp_path / "store", timeout=60)
    else:
        truth = write_csv(tmp_path / "truth.csv", [["a.jpg", 1, 1]])
        run = geoagent("eval", "score", fifo, "--truth", truth, timeout=60)
    assert "not a regular file" in one_error_line(run)


def test_thin_image_is_loaded_with_bounded_size(tmp_path):
    from PIL import Image

    Image.new("RGB", (1, 40_000), (10, 20, 30)).save(tmp_path / "thin.png")
    im = load_image(tmp_path / "thin.png")
    assert im.size == (1, 8)  # the long side is cropped to 8x the short one


def test_unwritable_outputs_are_one_error_line(store, query_photo, tmp_path, images):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(geoagent("locate", query_photo, "--store", store, "--map", blocker / "m.html"))
    assert "cannot write map" in line
    source = write_csv(tmp_path / "s.csv", [["ok0.jpg", "abc", 1]])
    line = one_error_line(geoagent("index", source, "--images", images, "--store", tmp_path / "st", "--errors", blocker / "e.csv"))
    assert "cannot write errors file" in line


def test_read_only_commands_never_create_a_store(tmp_path, query_photo):
    store = tmp_path / "no-store"
    listed = geoagent("galleries", "--store", store)
    assert listed.returncode == 0 and "no galleries" in listed.stdout
    one_error_line(geoagent("locate", query_photo, "--store", store))
    assert not store.exists()


def test_tampered_collection_metadata_is_one_error_line(tmp_path, images):
    from rag_store.store import open_client

    source = write_csv(tmp_path / "s.csv", [["ok0.jpg", 10, 10]])
    store = tmp_path / "store"
    assert geoagent("index", source, "--images", images, "--store", store).returncode == 0
    collection = open_client(store).get_collection("gallery")
    collection.modify(metadata={**collection.metadata, "dim": "abc"})
    line = one_error_line(geoagent("locate", images / "ok1.jpg", "--store", store))
    assert "metadata is damaged" in line


def test_non_numeric_target_in_results_is_one_error_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = {"config": "c", "id": "a", "target": {"lat": "north", "lon": 2.0}, "output": None, "status": "error"}
    (run_dir / "results.jsonl").write_text(json.dumps(record) + "\n")
    line = one_error_line(geoagent("eval", "report", run_dir, "--no-maps", "--no-geography"))
    assert "results.jsonl:1" in line and "latitude" in line


def test_score_with_no_matching_id_is_an_error_not_zero_percent(tmp_path):
    truth = write_csv(tmp_path / "truth.csv", [["a.jpg", 1, 1], ["b.jpg", 2, 2]])
    preds = write_csv(tmp_path / "preds.csv", [["x.jpg", 1, 1]])
    assert "no id in" in one_error_line(geoagent("eval", "score", preds, "--truth", truth, "--no-geography"))


# ------------------------------------------------------------------ eval run isolation


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    rows = []
    for i in range(4):
        noise_jpeg(folder / f"q{i}.jpg", seed=100 + i)
        rows.append([f"q{i}.jpg", 48.0 + i, 2.0])
    return write_csv(tmp_path / "test.csv", rows), folder


def test_one_bad_reply_is_an_error_record_and_the_run_goes_on(tmp_path, dataset, store):
    csv_path, folder = dataset
    run_dir = tmp_path / "run"
    with OpenAIServer([Reply(raw=b"[]"), ANSWER, ANSWER, ANSWER]) as srv:
        run = geoagent("eval", "run", "--dataset", csv_path, "--images", folder, "--store", store,
                       "--config", "zero-shot", "--model", "test-vlm", "--base-url", srv.base_url,
                       "--run-dir", run_dir, "--no-cache", "--concurrency", "1", timeout=300)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4
    statuses = sorted(r["status"] for r in records)
    assert statuses.count("ok") == 3
    assert any("JSON list" in (r["error"] or "") for r in records)


def test_unreachable_endpoint_stops_the_run_with_the_resume_command(tmp_path, dataset, store):
    csv_path, folder = dataset
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    run = geoagent("eval", "run", "--dataset", csv_path, "--images", folder, "--store", store,
                   "--config", "zero-shot", "--model", "m", "--base-url", f"http://127.0.0.1:{port}/v1",
                   "--run-dir", run_dir, "--no-cache", timeout=300)
    # The run's opening line, then one error line.
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = [x for x in run.stderr.splitlines() if x.startswith("error:")]
    assert run.stderr.strip().splitlines()[-1] == line
    assert "cannot connect" in line and f"--resume --run-dir {run_dir}" in line


def test_preprocessing_a_thin_pil_image_directly_is_bounded():
    from PIL import Image

    from rag_store.encoders import create_encoder

    # Not through load_image: Encoder.embed given a PIL image by an API user.
    vector = create_encoder().embed([Image.new("RGB", (1, 40_000), (10, 20, 30))])
    assert vector.shape[0] == 1
