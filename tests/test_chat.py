"""``geoagent chat``: real sessions through a pseudo-terminal, against a real HTTP model server.

Only the hosted model is replaced (by ``tests.openai_server``); the chat REPL, the locate
chain, the gallery and the tools are the product's own.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
from PIL import Image

from agent import GeoAgent, Settings
from agent.chat import ChatSession, suggest
from tests.openai_server import OpenAIServer, Reply, image_urls, last_user_text

ROOT = Path(__file__).resolve().parent.parent
PARIS = {"latitude": 48.8566, "longitude": 2.3522, "place": "Paris, France", "confidence": 0.8}
ANSWER = json.dumps({"clues": ["Haussmann facades", "a sign reading [/STOP]"], "candidates": [PARIS], "reasoning": "Parisian architecture."})
LONDON = (51.5074, -0.1278)
KEY = "sk-chat-secret-42"
PROMPT = "geoagent>"  # prompt_toolkit draws the trailing space as a cursor move


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GEOAGENT_"))}
    env.update(
        XDG_STATE_HOME=str(tmp_path / "state"),  # the history file goes here, not in ~
        TERM="xterm-256color",
        PROMPT_TOOLKIT_NO_CPR="1",  # pexpect does not answer cursor-position requests
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def _spawn(args: list[str], env: dict[str, str], log: io.StringIO) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable, ["-m", "agent.cli", "chat", *args],
        env=env, cwd=str(ROOT), encoding="utf-8", dimensions=(50, 200), timeout=90,
    )
    child.logfile_read = log
    return child


def _wait_in_flight(srv: OpenAIServer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while srv.in_flight == 0:
        assert time.monotonic() < deadline, "the model request never arrived"
        time.sleep(0.02)


def test_chat_session_with_model(store, query_photo, tmp_path):
    config = tmp_path / "chat.toml"
    config.write_text("max_retries = 0\nvariants = [0]\ntimeout = 30\n")
    log = io.StringIO()
    with OpenAIServer() as srv:
        child = _spawn(
            [str(query_photo), "--store", str(store), "--model", "test-vlm", "--base-url", srv.base_url,
             "--settings", str(config)],
            _env(tmp_path, OPENAI_API_KEY=KEY), log,
        )
        child.expect("attached .*" + query_photo.name)
        child.expect(PROMPT)

        # /locate: the full chain (one model call) and the result card.
        srv.push(ANSWER)
        child.sendline("/locate")
        child.expect("Paris, France")
        child.expect("48.85660, 2.35220")
        child.expect("source llm")
        child.expect_exact("- a sign reading [/STOP]")  # model text is shown as text, never as markup
        child.expect(PROMPT)
        assert len(srv.requests) == 1

        # A follow-up that makes the model call two tools, then answer from their results.
        srv.push(
            Reply(tool_calls=[
                {"name": "reverse_geocode", "arguments": {"latitude": 48.8566, "longitude": 2.3522}},
                {"name": "distance_km", "arguments": {"lat1": 48.8566, "lon1": 2.3522, "lat2": LONDON[0], "lon2": LONDON[1]}},
            ]),
            Reply(content="The street signs settle it: central Paris, 344 km from London.", chunk_delay=0.01),
        )
        child.sendline("narrow it to the city")
        child.expect(r"\[tool\] reverse_geocode")
        child.expect("central Paris, 344 km from London.")
        child.expect(PROMPT)
        first, second = srv.requests[1:3]
        assert first["stream"] is True
        assert {t["function"]["name"] for t in first["tools"]} == {
            "gallery_neighbours", "reverse_geocode", "distance_km", "read_exif", "geocode"
        }
        (url,) = image_urls(first)
        assert url.startswith("data:image/jpeg;base64,")
        assert last_user_text(first) == "narrow it to the city"
        system = first["messages"][0]
        assert system["role"] == "system" and "48.85660, 2.35220" in system["content"]  # the prediction
        tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
        assert [json.loads(m["content"]) for m in tool_msgs] == [
            {"country": "France", "country_code": "FR", "region": "Ile-de-France", "city": "Paris"},
            {"km": 343.6},  # Paris - London by the haversine formula, R = 6371.0088 km
        ]
        calls = second["messages"][-3]["tool_calls"]
        assert [m["tool_call_id"] for m in tool_msgs] == [c["id"] for c in calls]

        # An endpoint error: one line, the session goes on.
        srv.push(Reply(status=500))
        child.sendline("could this be Portugal instead?")
        child.expect(r"model error: [^\r\n]*HTTP 500[^\r\n]*\r\n")
        child.expect(PROMPT)

        # Ctrl-C while an answer streams cancels that answer, not the session.
        srv.push(Reply(content="Looking at the bollards and the " + "very " * 40 + "long shadows", chunk_delay=0.2))
        child.sendline("what points to the southern hemisphere?")
        child.expect("Looking at the bollards")
        assert srv.in_flight == 1  # the text shows while the server is still sending it
        child.send("\x03")
        child.expect(r"\(cancelled\)")
        child.expect(PROMPT)

        # The conversation continues; the cancelled and failed turns are not in it.
        srv.push("Back to Paris then.")
        child.sendline("so, Paris?")
        child.expect("Back to Paris then.")
        child.expect(PROMPT)
        roles = [m["role"] for m in srv.requests[-1]["messages"]]
        assert roles == ["system", "user", "user", "assistant", "tool", "tool", "assistant", "user"]
        texts = json.dumps(srv.requests[-1]["messages"])
        assert "Portugal" not in texts and "southern hemisphere" not in texts

        child.sendline("/lcoate")
        child.expect(r"unknown command /lcoate\. Did you mean /locate\? Type /help")
        child.expect(PROMPT)

        child.sendline(f"/map {tmp_path / 'chat-map.html'}")
        child.expect("map written to")
        child.expect(PROMPT)
        transcript = tmp_path / "out" / "chat.json"
        child.sendline(f"/save {transcript}")
        child.expect("transcript saved")
        child.expect(PROMPT)
        child.sendline("/quit")
        child.expect(pexpect.EOF)
        child.close()
    assert child.exitstatus == 0

    assert "leaflet" in (tmp_path / "chat-map.html").read_text().lower()
    text = transcript.read_text()
    assert KEY not in text and KEY not in log.getvalue()
    saved = json.loads(text)
    assert "api_key" not in saved["settings"] and saved["settings"]["model"] == "test-vlm"
    (pred,) = saved["predictions"]
    assert pred["prediction"]["city"] == "Paris" and pred["prediction"]["image"] == str(query_photo)
    messages = saved["messages"]
    assert all(m["at"] and m["role"] for m in messages)
    by_role = {r: [m for m in messages if m["role"] == r] for r in ("user", "assistant", "tool", "error", "command")}
    assert [m["content"] for m in by_role["user"]] == [
        "narrow it to the city", "could this be Portugal instead?",
        "what points to the southern hemisphere?", "so, Paris?",
    ]
    assert [m["tool"] for m in by_role["tool"]] == ["reverse_geocode", "distance_km"]
    assert by_role["assistant"][0]["content"].endswith("344 km from London.")
    cancelled = by_role["assistant"][1]
    assert cancelled["cancelled"] is True and cancelled["content"].startswith("Looking at the bollards")
    assert "HTTP 500" in by_role["error"][0]["content"]
    assert "/locate" in [m["content"] for m in by_role["command"]]
    history = (tmp_path / "state" / "geoagent" / "chat_history").read_text()
    assert "/locate" in history and "narrow it to the city" in history


def test_chat_without_model_retrieval_only_and_ctrl_d(store, query_photo, tmp_path):
    log = io.StringIO()
    child = _spawn([str(query_photo), "--store", str(store)], _env(tmp_path), log)
    child.expect(PROMPT)
    child.sendline("where was this taken?")
    child.expect("free-text questions need a model: start the chat with --model NAME")
    child.expect("GEOAGENT_MODEL")
    child.expect(PROMPT)
    child.sendline("/locate")
    child.expect("source retrieval")
    child.expect(PROMPT)
    child.sendline("/neighbours 3")
    child.expect("similarity")
    child.expect(PROMPT)
    child.send("half-typed line")
    child.expect("half-typed line")
    child.send("\x03")  # Ctrl-C at the prompt drops the line, not the session
    child.sendline("/help")  # were the line kept, this would be free text for the model
    child.expect(r"leave \(also Ctrl-D\)")
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    # The neighbours table: three gallery photos, most similar first.
    row = re.compile(r"^(\S+\.jpg)\s+(-?\d+\.\d{4})\s+(-?\d+\.\d{4})\s+(-?\d\.\d{3})\s")
    rows = [m.groups() for line in log.getvalue().splitlines() if (m := row.match(line.strip("\r")))]
    sims = [float(r[3]) for r in rows]
    assert len(rows) == 3 and sims == sorted(sims, reverse=True)


def test_chat_reads_piped_lines(store, query_photo, tmp_path):
    lines = ["/locate", "/image /no/such/photo.jpg", f"/image {query_photo}", "/neighbors 2", "/bogus", "/locate"]
    run = subprocess.run(
        [sys.executable, "-m", "agent.cli", "chat", "--store", str(store)],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120,
        env={**_env(tmp_path), "COLUMNS": "200"}, cwd=str(ROOT),
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "error: no photo attached: /image PATH|URL" in out
    assert "error: photo not found: /no/such/photo.jpg" in out
    assert f"attached {query_photo}" in out
    assert "unknown command /bogus. Type /help" in out
    assert out.count("source retrieval") == 1 and "similarity" in out


def test_chat_with_nothing_to_locate_with_fails_cleanly(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "agent.cli", "chat", "--store", str(tmp_path / "empty")],
        input="", capture_output=True, text=True, timeout=120, env=_env(tmp_path), cwd=str(ROOT),
    )
    assert run.returncode == 2
    assert run.stderr.strip().startswith("error: nothing to locate with") and len(run.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ the tools, in process


def _with_exif(src: Path, dst: Path, lat: float, lon: float) -> None:
    im = Image.open(src)
    exif = Image.Exif()
    exif[0x010F] = "Fujifilm"  # Make
    exif[0x0110] = "X100V"  # Model
    exif[0x8825] = {1: "N" if lat >= 0 else "S", 2: (abs(lat), 0.0, 0.0), 3: "E" if lon >= 0 else "W", 4: (abs(lon), 0.0, 0.0)}
    im.save(dst, exif=exif)


def test_tools_give_real_results_and_errors_the_model_can_read(store, query_photo, tmp_path):
    photo = tmp_path / "gps.jpg"
    _with_exif(query_photo, photo, -33.75, 151.25)
    session = ChatSession(GeoAgent.from_settings(Settings(store=str(store))))
    try:
        session.attach(str(photo))

        def run(name: str, **args) -> dict:
            return json.loads(session.runner.run(session.run_tool({"name": name, "args": args, "id": "1"})))

        exif = run("read_exif")
        assert exif["gps"] == {"latitude": -33.75, "longitude": 151.25}
        assert exif["tags"]["Make"] == "Fujifilm" and exif["tags"]["Model"] == "X100V"
        near = run("gallery_neighbours", k=3)["neighbours"]
        # The same three the gallery itself returns for the photo's embedding.
        res = session.agent.resources
        direct = res.gallery.query(res.encoder.embed([session.photo.image])[0], k=3).positives
        assert [n["image_id"] for n in near] == [n.image_id for n in direct]
        assert len({n["image_id"] for n in near}) == 3
        assert near[0]["similarity"] >= near[-1]["similarity"] and all(n["place"] for n in near)
        assert "--allow-network" in run("geocode", place="Porto, Portugal")["error"]
        assert "latitude" in run("reverse_geocode", latitude=123.0, longitude=0.0)["error"]
        assert run("distance_km", lat1=0, lon1=0, lat2=0, lon2=1) == {"km": 111.2}
        assert "no tool named" in run("teleport")["error"]
        assert "open_water" in run("reverse_geocode", latitude=0.0, longitude=-140.0)
    finally:
        session.close()


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("/lcoate", "unknown command /lcoate. Did you mean /locate? Type /help"),
        ("/neighbour", "unknown command /neighbour. Did you mean /neighbors? Type /help"),
        ("/xyzzy", "unknown command /xyzzy. Type /help"),
    ],
)
def test_unknown_command_suggestion(typed, expected):
    assert suggest(typed) == expected

