"""The ``geoagent`` command as a person meets it: help, version, quick input errors, the result
card in a terminal, many photos to a resumable file, presets and settings files, offline maps."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from agent.console import clean_text, model_calls_line, short_name
from tests.openai_server import OpenAIServer, Reply

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "agent.cli"]
TYPE_LABEL = re.compile(r"<(?:bool|str|text|path|int|float|list|tuple|choice)\b[^>]*>", re.I)
HOSTILE = "\x1b[2J\x1b]0;pwned\x07Gothic\u202e spires"  # clear screen, retitle, bidi override
ANSWER = json.dumps({
    "clues": ["Haussmann facades", HOSTILE],
    "candidates": [{"latitude": 48.8566, "longitude": 2.3522, "place": "Paris, France", "confidence": 0.8}],
    "reasoning": "Zinc roofs and cream limestone facades typical of central Paris.",
})


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GEOAGENT_"))}
    return {**env, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **extra}


def geoagent(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT, **kwargs)


# ---- help, version, input errors ------------------------------------------------------------

COMMANDS = [[], ["index"], ["galleries"], ["locate"], ["chat"], ["eval"], ["eval", "run"], ["eval", "report"],
            ["eval", "score"]]


def test_help_has_no_type_labels_and_every_option_says_what_it_does():
    from typer.main import get_command
    from typer.testing import CliRunner

    from agent.cli import app

    runner = CliRunner()
    for path in COMMANDS:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert not TYPE_LABEL.search(result.output), (path, TYPE_LABEL.search(result.output))
    import click

    root = get_command(app)
    ctx = click.Context(root)
    for path in (["locate"], ["chat"], ["galleries"], ["eval", "run"], ["eval", "report"], ["eval", "score"]):
        cmd = root
        for name in path:
            cmd = cmd.get_command(ctx, name)
        for param in cmd.params:
            if param.param_type_name != "option":
                continue
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help"
            flag = getattr(param, "is_flag", False)
            # A default is either shown by typer (not None) or stated in the help.
            assert flag or param.required or param.default is not None or "default" in param.help, f"{param.opts[0]}: no default stated"


def test_version():
    run = geoagent("--version")
    assert run.returncode == 0 and re.fullmatch(r"geoagent \d+\.\d+\.\d+\S*\n", run.stdout)


def test_missing_photo_is_one_error_line_before_anything_heavy_loads(tmp_path):
    code = (
        "import sys\n"
        "from agent.cli import app\n"
        "try:\n"
        "    app(['locate', sys.argv[1]])\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code, sorted(m for m in ('torch', 'chromadb', 'openai', 'langchain_core') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.jpg")], capture_output=True, text=True,
                         timeout=60, env=_env(), cwd=ROOT)
    assert run.stderr.strip() == f"error: photo not found: {tmp_path / 'missing.jpg'}"
    assert run.stdout.strip() == "exit 2 []"


def test_unknown_preset_is_one_error_line(tmp_path, query_photo):
    run = geoagent("locate", str(query_photo), "--system", "g33", "--store", str(tmp_path / "s"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: ") and "g3" in run.stderr and len(run.stderr.strip().splitlines()) == 1


# ---- the result card -------------------------------------------------------------------------


def test_card_in_a_terminal_shows_place_reasoning_clues_candidates_and_call_outcomes(store, query_photo, tmp_path):
    settings = tmp_path / "settings.toml"
    # verification "none": the model's answer wins (the case that once printed "confidence -62%").
    settings.write_text('variants = [0, 5]\nmax_retries = 0\ntimeout = 10.0\nverification = "none"\n')
    with OpenAIServer([ANSWER, Reply(refusal="I cannot help with locating this photo.")]) as srv:
        log = io.StringIO()
        child = pexpect.spawn(
            sys.executable,
            ["-m", "agent.cli", "locate", str(query_photo), "--store", str(store), "--model", "test-vlm",
             "--base-url", srv.base_url, "--settings", str(settings)],
            env=_env(OPENAI_API_KEY="sk-test", TERM="xterm-256color"), cwd=str(ROOT), encoding="utf-8",
            dimensions=(60, 160), timeout=120,
        )
        child.logfile_read = log
        child.expect(pexpect.EOF)
        child.close()
    screen = log.getvalue()
    text = re.sub(r"\x1b\[[0-9;]*m", "", screen)  # rich's own colours
    assert child.exitstatus == 0, text
    assert "Paris, Ile-de-France, France" in text  # the geocoded place heads the card
    assert "the model said: “Paris, France” (its own confidence 80%)" in text
    assert "Zinc roofs and cream limestone facades typical of central Paris." in text
    assert "Haussmann facades" in text and "Gothic spires" in text
    assert "2 asked: 1 answered, 1 refused" in text
    # One model call of two agrees with the answer: the model's half of the evidence is 1/2.
    confidence = int(re.search(r"   confidence (\d+)%", text).group(1))
    assert 25 <= confidence <= 75
    assert short_name(str(query_photo)) in text
    # Candidates: the model's, then retrieval candidates named by place, each with its distance.
    table = text[text.index("top candidates"):]
    rows = [line for line in table.splitlines() if " neighbours " in line or " llm " in line]
    assert any("Paris, France" in r and " llm " in r for r in rows)
    neighbour_rows = [r for r in rows if " neighbours " in r]
    assert neighbour_rows and all(re.search(r"[A-Za-z]+, [A-Za-z]", r) for r in neighbour_rows)
    # The model's escape codes never reach the terminal.
    assert "\x1b[2J" not in screen and "\x1b]0;" not in screen and "\u202e" not in screen


def test_clean_text_and_helpers():
    assert clean_text(HOSTILE) == "Gothic spires"
    assert clean_text("tab\there\r\nnext\x00") == "tab here\nnext"
    assert clean_text("\x9b31mred") == "red"
    assert model_calls_line({"ok": 3, "refused": 1}) == "4 asked: 3 answered, 1 refused"
    assert model_calls_line({}) == "none asked"
    assert short_name("/data/im2gps/images/1019846234_5e471a10e2_1155_97522422@N00.jpg", 30) == "1019846234_5e471a…2422@N00.jpg"
    assert short_name("https://example.org/a/b/photo.jpg?x=1") == "example.org/…/photo.jpg"


# ---- many photos, --out, presets ------------------------------------------------------------


def _photo_folder(sample_dir: Path, tmp_path: Path, n: int) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    names = [row[0] for row in list(csv.reader((sample_dir / "im2gps3k-dev.csv").open()))[100:100 + n]]
    for i, name in enumerate(names):  # links, not copies: the sample photos stay where they are
        (folder / ("sub" if i % 2 else "") / name).symlink_to(sample_dir / "images" / name)
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_locate_a_folder_to_csv_resumes_and_a_preset_by_name(store, sample_dir, tmp_path):
    folder = _photo_folder(sample_dir, tmp_path, 3)
    out = tmp_path / "preds.csv"
    first = geoagent("locate", str(folder), "--store", str(store), "--system", "retrieval-only", "--out", str(out))
    assert first.returncode == 0, first.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"ok"}
    assert all(0.0 <= float(r["confidence"]) <= 1.0 and r["place"] for r in rows)
    assert "wrote 3 predictions" in first.stderr
    # A stopped run: the last row half-written. The re-run redoes that photo only.
    data = out.read_text()
    out.write_text(data[: data.rstrip("\n").rfind("\n") + 1] + "photos/x.jpg,o")
    again = geoagent("locate", str(folder), "--store", str(store), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "wrote 1 predictions" in again.stderr and "2 already there, skipped" in again.stderr
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["image"] for r in rows) == sorted({r["image"] for r in rows}) and len(rows) == 3


def test_locate_jsonl_out_and_map(store, sample_dir, tmp_path):
    folder = _photo_folder(sample_dir, tmp_path, 2)
    out, map_file = tmp_path / "p.jsonl", tmp_path / "maps" / "m.html"
    run = geoagent("locate", str(folder), "--store", str(store), "--out", str(out), "--map", str(map_file))
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2 and all(p["neighbours"] for p in lines)
    assert map_file.is_file()


def test_bad_out_suffix_is_one_error_line(store, query_photo, tmp_path):
    run = geoagent("locate", str(query_photo), "--store", str(store), "--out", str(tmp_path / "p.txt"))
    assert run.returncode == 2 and run.stderr.strip() == "error: --out must end in .csv or .jsonl, not 'p.txt'"


# ---- maps --------------------------------------------------------------------------------------


def test_map_needs_no_network_and_escapes_model_text(tmp_path):
    from agent.maps import write_map
    from agent.prediction import Candidate, Prediction
    from rag_store.store import Neighbour

    evil = '</script><script>alert("x")</script><img src=x onerror=alert(1)>'
    p = Prediction(48.85, 2.35, "ok", source="llm", place=evil, image=evil, confidence=0.7,
                   candidates=[Candidate(48.85, 2.35, evil, 0.8, "llm", 0.9), Candidate(45.76, 4.83, "Lyon", None, "neighbours", 0.4)],
                   neighbours=[Neighbour(evil, 45.76, 4.83, 0.8)])
    page = write_map([p], tmp_path / "m.html").read_text()
    # Scripts and styles are inline: nothing to fetch to see the land, the markers and the legend.
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link\b", page, re.I) and "@import" not in page
    assert '"type":"Topology"' in page  # the land
    for label in ("answer", "model candidate", "retrieval candidate", "gallery neighbour"):
        assert label in page  # legend
    assert "fitBounds" in page
    assert evil not in page and "<img src=x" not in page
    assert page.count("</script>") == page.count("<script>")  # no reply closes a script early


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_map_draws_land_markers_and_legend_in_a_browser_offline(tmp_path):
    """The page's own script runs: headless Chromium, no network, draws land paths, markers and the legend."""
    from agent.maps import write_map
    from agent.prediction import Candidate, Prediction
    from rag_store.store import Neighbour

    p = Prediction(48.85, 2.35, "ok", source="llm", place="Paris", image="paris.jpg",
                   candidates=[Candidate(48.85, 2.35, "Paris", 0.8, "llm", 0.9)], neighbours=[Neighbour("n", 45.76, 4.83, 0.8)])
    path = write_map([p], tmp_path / "m.html")
    run = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--proxy-server=127.0.0.1:9", "--virtual-time-budget=3000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    dom = run.stdout
    assert 'class="legend' in dom and "gallery neighbour" in dom  # added by the page's script
    assert dom.count("<path") >= 100  # countries, and the circle markers
