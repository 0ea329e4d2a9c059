"""The locate chain end to end: a real gallery, the real openai client, a real HTTP model server."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from agent import ConfigError, GeoAgent, ImageError, ModelAuthError, Prediction, Settings
from tests.conftest import GALLERY_PLACES
from tests.openai_server import OpenAIServer, Reply, image_urls, last_user_text

PARIS = {"latitude": 48.8566, "longitude": 2.3522, "place": "Paris, France", "confidence": 0.8}
# Where the photos of the generated test gallery were taken (tests/conftest.py).
GALLERY_POINTS = {
    (lat + 0.01 * (i // len(GALLERY_PLACES)), lon)
    for i, (lat, lon) in enumerate(GALLERY_PLACES * 2)
}
ANSWER = json.dumps({"clues": ["Haussmann facades", "French street signs"], "candidates": [PARIS], "reasoning": "Parisian architecture."})


def answer(*candidates: dict, clues=("a clue",)) -> str:
    return json.dumps({"clues": list(clues), "candidates": list(candidates), "reasoning": "because"})


def make_agent(store: Path, srv: OpenAIServer | None = None, **overrides) -> GeoAgent:
    settings = dict(store=str(store), variants=(0, 5), samples=1, max_retries=0, timeout=5.0)
    if srv is not None:
        settings.update(model="test-vlm", base_url=srv.base_url, api_key="sk-test")
    settings.update(overrides)
    return GeoAgent.from_settings(Settings(**settings))


def test_image_arrives_as_image_part_resized(store, query_photo):
    with OpenAIServer(default=ANSWER) as srv:
        make_agent(store, srv, variants=(0,), max_side=128).locate(query_photo)
        (request,) = srv.requests
    (url,) = image_urls(request)
    assert url.startswith("data:image/jpeg;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert max(im.size) == 128


def test_neighbour_coordinates_appear_in_prompt(store, query_photo):
    with OpenAIServer(default=ANSWER) as srv:
        prediction = make_agent(store, srv, variants=(0, 5), k=8).locate(query_photo)
        prompts = sorted((last_user_text(r) for r in srv.requests), key=len)
    assert len(prompts) == 2
    plain, with_refs = prompts
    assert "least similar" not in plain
    for n in prediction.neighbours[:5]:
        assert f"({n.lat:.4f}, {n.lon:.4f})" in with_refs
    for n in prediction.negatives[:5]:
        assert f"({n.lat:.4f}, {n.lon:.4f})" in with_refs
    # Only 5 of the 8 retrieved neighbours go into the 5-neighbour variant.
    assert f"({prediction.neighbours[7].lat:.4f}, {prediction.neighbours[7].lon:.4f})" not in with_refs


def test_one_request_per_variant_draws_its_samples_with_n(store, query_photo):
    with OpenAIServer(default=ANSWER) as srv:
        p = make_agent(store, srv, variants=(0, 5, 10, 15), samples=2).locate(query_photo)
        assert len(srv.requests) == 4
        assert {r["temperature"] for r in srv.requests} == {0.7}
        assert [r["n"] for r in srv.requests] == [2, 2, 2, 2]
    assert p.llm_calls == 4 and p.completions == 8
    assert p.model_outcomes == {"ok": 8}
    assert p.prompt_tokens > 0 and p.completion_tokens > 0


def test_llm_answer_with_place_and_verification_scores(store, query_photo):
    with OpenAIServer(default=ANSWER) as srv:
        p = make_agent(store, srv).locate(query_photo)
    assert p.status == "ok" and p.source == "llm"
    assert (p.latitude, p.longitude) == (PARIS["latitude"], PARIS["longitude"])
    assert p.country_code == "FR" and p.city == "Paris"
    # The place is the geocoded one; the model's wording and its own figure are kept apart.
    assert p.place == "Paris, Ile-de-France, France" and p.model_place == "Paris, France"
    assert p.model_confidence == 0.8
    assert 0.5 <= p.confidence <= 1.0  # both model calls agree: at least their half of the evidence
    assert [c.text for c in p.clues] == ["Haussmann facades", "French street signs"]
    assert all(c.score is not None for c in p.candidates)
    assert {c.origin for c in p.candidates} == {"llm", "neighbours"}
    llm = [c for c in p.candidates if c.origin == "llm"]
    assert len(llm) == 1 and llm[0].votes == 2  # both variants proposed Paris: merged
    assert p.verification == "neighbours"
    json.loads(p.to_json())  # serialisable


def test_verification_prefers_candidate_that_agrees(store, query_photo):
    # Samples disagree; the candidate backed by two samples (and closer neighbours) wins.
    tokyo = {"latitude": 35.68, "longitude": 139.69, "place": "Tokyo", "confidence": 0.9}
    with OpenAIServer([answer(tokyo), answer(PARIS), answer(PARIS)]) as srv:
        p = make_agent(store, srv, variants=(0, 5, 10)).locate(query_photo)
    assert p.city == "Paris"
    scores = {c.place: c.score for c in p.candidates if c.origin == "llm"}
    assert scores["Paris, France"] > scores["Tokyo"]


def test_malformed_json_is_reasked_once_then_used(store, query_photo):
    with OpenAIServer(["Sure! It's Paris, I think {not json", ANSWER]) as srv:
        p = make_agent(store, srv, variants=(0,)).locate(query_photo)
        assert len(srv.requests) == 2
        reask = srv.requests[1]["messages"]
    assert reask[-2]["role"] == "assistant"
    assert "could not be used" in reask[-1]["content"]
    assert p.status == "ok" and p.city == "Paris" and p.llm_calls == 2


def test_out_of_range_twice_is_unparseable_and_never_zero_zero(store, query_photo):
    bad = answer({"latitude": 123.0, "longitude": 2.0, "place": "?", "confidence": 0.5})
    with OpenAIServer([bad, bad]) as srv:
        p = make_agent(store, srv, variants=(0,), fallback="none").locate(query_photo)
        assert "latitude 123.0 is outside -90..90" in srv.requests[1]["messages"][-1]["content"]
    assert p.status == "unparseable"
    assert p.latitude is None and p.longitude is None
    assert p.model_outcomes == {"unparseable": 1}


def test_unparseable_falls_back_to_retrieval_labelled(store, query_photo):
    with OpenAIServer(["no json here", "still none"]) as srv:
        p = make_agent(store, srv, variants=(0,)).locate(query_photo)
    assert p.status == "fallback" and p.source == "retrieval"
    # The answer is where one of the gallery's photos was taken, and no model candidate is left.
    assert (p.latitude, p.longitude) in GALLERY_POINTS
    assert {c.origin for c in p.candidates} == {"neighbours"}
    assert "unparseable" in p.error


def test_refusal_is_recorded_not_reasked(store, query_photo):
    with OpenAIServer([Reply(refusal="I can't help with locating people.")]) as srv:
        p = make_agent(store, srv, variants=(0,), fallback="none").locate(query_photo)
        assert len(srv.requests) == 1
    assert p.status == "refused" and p.latitude is None
    assert "can't help" in p.error


def test_textual_refusal_is_recognised(store, query_photo):
    with OpenAIServer(["I'm sorry, I cannot determine where this photo was taken."]) as srv:
        p = make_agent(store, srv, variants=(0,), fallback="none").locate(query_photo)
    assert p.status == "refused" and p.model_outcomes == {"refused": 1}


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=429, headers={"Retry-After": "0"}),
        Reply(status=500),
        Reply(content=ANSWER, delay=3.0),  # longer than the 1 s client timeout
    ],
    ids=["429", "500", "timeout"],
)
def test_endpoint_failures_after_retries_end_as_error_outcome(store, query_photo, reply):
    with OpenAIServer(default=reply) as srv:
        p = make_agent(store, srv, variants=(0,), max_retries=1, timeout=1.0).locate(query_photo)
        assert len(srv.requests) == 2  # one try + one retry
    assert p.model_outcomes == {"error": 1}
    assert p.status == "fallback" and p.source == "retrieval" and p.latitude is not None
    assert p.error.startswith("model error")


def test_retry_recovers_from_one_429(store, query_photo):
    with OpenAIServer([Reply(status=429, headers={"Retry-After": "0"}), ANSWER]) as srv:
        p = make_agent(store, srv, variants=(0,), max_retries=2).locate(query_photo)
    assert p.status == "ok" and p.city == "Paris"


def test_api_key_never_leaks(store, query_photo):
    secret = "sk-very-secret-123"
    with OpenAIServer(default=ANSWER, api_key="sk-other") as srv:
        agent = make_agent(store, srv, variants=(0,), api_key=secret)
        with pytest.raises(ModelAuthError) as info:
            agent.locate(query_photo)
    assert secret not in str(info.value)
    assert secret not in repr(agent.settings) and secret not in json.dumps(agent.settings.public_dict())
    with OpenAIServer(default=ANSWER) as srv:
        p = make_agent(store, srv, variants=(0,), api_key=secret).locate(query_photo)
        assert srv.received[-1].bearer == secret  # it does reach the endpoint
    assert secret not in p.to_json()


def test_no_model_gives_retrieval_only_answer(store, query_photo):
    p = make_agent(store).locate(query_photo)
    assert p.status == "ok" and p.source == "retrieval" and p.model is None
    assert p.llm_calls == 0
    assert len(p.neighbours) == 16 and len(p.negatives) == 16
    assert p.neighbours[0].similarity >= p.neighbours[-1].similarity > p.negatives[0].similarity
    # Retrieval answers with a gallery photo's position, reverse-geocoded (all are on land).
    assert (p.latitude, p.longitude) in GALLERY_POINTS
    assert p.country and p.country_code


def test_inputs_bytes_pil_and_bad_inputs(store, query_photo, tmp_path):
    agent = make_agent(store)
    by_path = agent.locate(query_photo)
    assert agent.locate(query_photo.read_bytes()).latitude == by_path.latitude
    assert agent.locate(Image.open(query_photo)).latitude == by_path.latitude
    with pytest.raises(ImageError, match="photo not found"):
        agent.locate(tmp_path / "nope.jpg")
    (tmp_path / "x.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        agent.locate(tmp_path / "x.jpg")
    with pytest.raises(ImageError, match="only http and https"):
        agent.locate("ftp://example.org/a.jpg")
    many = agent.locate_many([query_photo, tmp_path / "nope.jpg"], concurrency=2)
    assert many[0].answered and many[1].status == "error" and "not found" in many[1].error


def test_locate_by_url_with_size_limit(store, query_photo, tmp_path):
    import http.server
    import threading
    from functools import partial

    (tmp_path / "photo.jpg").write_bytes(query_photo.read_bytes())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/photo.jpg"
        assert make_agent(store).locate(url).answered
        with pytest.raises(ImageError, match="limit"):
            make_agent(store, url_max_bytes=1000).locate(url)
        with pytest.raises(ImageError, match="HTTP 404"):
            make_agent(store).locate(url.replace("photo", "missing"))
    finally:
        server.shutdown()


def _with_exif_gps(src: Path, dst: Path, lat: float, lon: float) -> None:
    im = Image.open(src)
    exif = Image.Exif()
    gps = {1: "N" if lat >= 0 else "S", 2: (abs(lat), 0.0, 0.0), 3: "E" if lon >= 0 else "W", 4: (abs(lon), 0.0, 0.0)}
    exif[0x8825] = gps
    im.save(dst, exif=exif)


def test_exif_gps_answers_unless_ignored(store, query_photo, tmp_path):
    photo = tmp_path / "gps.jpg"
    _with_exif_gps(query_photo, photo, -33.8688, 151.2093)
    with OpenAIServer(default=ANSWER) as srv:
        p = make_agent(store, srv).locate(photo)
        assert srv.requests == []
        assert p.source == "exif" and p.country_code == "AU"
        assert p.clues[0].source == "exif"
        q = make_agent(store, srv, ignore_exif=True).locate(photo)
        assert len(srv.requests) == 2 and q.source == "llm"


def test_response_cache_makes_repeat_free(store, query_photo, tmp_path):
    with OpenAIServer(default=ANSWER) as srv:
        first = make_agent(store, srv, cache_dir=str(tmp_path / "cache")).locate(query_photo)
        second = make_agent(store, srv, cache_dir=str(tmp_path / "cache")).locate(query_photo)
        assert len(srv.requests) == 2  # two variants, once
    assert first.llm_calls == 2 and second.llm_calls == 0
    assert (first.latitude, first.longitude) == (second.latitude, second.longitude)


def test_settings_from_toml_env_and_arguments(tmp_path, monkeypatch, store):
    config = tmp_path / "geoagent.toml"
    config.write_text('k = 4\nvariants = [0, 3]\nmodel = "from-file"\n')
    monkeypatch.setenv("GEOAGENT_MODEL", "from-env")
    s = Settings.load(config, store=str(store), temperature=0.2)
    assert (s.k, s.variants, s.model, s.temperature) == (4, (0, 3), "from-env", 0.2)
    config.write_text("kk = 4\n")
    with pytest.raises(ConfigError, match="Did you mean 'k'"):
        Settings.load(config)


def test_cli_locate_json_with_model_and_without(store, query_photo):
    cli = [sys.executable, "-m", "agent.cli"]
    with OpenAIServer(default=ANSWER) as srv:
        run = subprocess.run(
            [*cli, "locate", str(query_photo), "--json", "--store", str(store), "--model", "test-vlm", "--base-url", srv.base_url],
            capture_output=True, text=True, timeout=120, env={**_env(), "OPENAI_API_KEY": "sk-test"},
        )
    assert run.returncode == 0, run.stderr
    p = Prediction.from_dict(json.loads(run.stdout))
    assert p.source == "llm" and p.city == "Paris" and p.candidates
    run = subprocess.run([*cli, "locate", str(query_photo), "--json", "--store", str(store)], capture_output=True, text=True, timeout=120, env=_env())
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["source"] == "retrieval"


def test_cli_locate_map_and_bad_input(store, query_photo, tmp_path):
    cli = [sys.executable, "-m", "agent.cli"]
    run = subprocess.run([*cli, "locate", str(query_photo), "--store", str(store), "--map", str(tmp_path / "m.html")], capture_output=True, text=True, timeout=120, env=_env())
    assert run.returncode == 0, run.stderr
    assert "retrieval" in run.stdout and "leaflet" in (tmp_path / "m.html").read_text().lower()
    run = subprocess.run([*cli, "locate", str(tmp_path / "missing.jpg"), "--store", str(store)], capture_output=True, text=True, timeout=120, env=_env())
    assert run.returncode == 2
    assert run.stderr.strip().startswith("error: photo not found") and len(run.stderr.strip().splitlines()) == 1


def _env() -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GEOAGENT_"))}
    env["COLUMNS"] = "200"
    return env


def test_same_agent_locates_again_and_again(store, query_photo):
    # Each blocking locate() runs its own event loop; the model client must survive that.
    with OpenAIServer(default=ANSWER) as srv:
        agent = make_agent(store, srv, variants=(0,))
        assert [agent.locate(query_photo).status for _ in range(3)] == ["ok"] * 3
        assert make_agent(store, srv, variants=(0,)).locate(query_photo).status == "ok"
        assert len(srv.requests) == 4


def test_unreachable_endpoint_is_one_clear_error(store, query_photo):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    cli = [sys.executable, "-m", "agent.cli"]
    run = subprocess.run(
        [*cli, "locate", str(query_photo), "--store", str(store), "--model", "m", "--base-url", f"http://127.0.0.1:{port}/v1"],
        capture_output=True, text=True, timeout=120, env={**_env(), "OPENAI_API_KEY": "sk-secret-abc"},
    )
    assert run.returncode == 2
    assert run.stderr.startswith("error: cannot connect to http://127.0.0.1:")
    assert "sk-secret-abc" not in run.stderr + run.stdout
