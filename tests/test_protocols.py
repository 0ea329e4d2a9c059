"""The published protocols as geoagent runs them, checked on the wire and in benchmark runs.

Generated photos (tests/imagegen.py) make the gallery; the hosted model is the local
OpenAI-compatible test server, so each test sees exactly what a preset sends: requests per
photo, ``n``, temperature, reference coordinates per prompt, images per request, the pool.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent import GeoAgent, Settings
from agent.geo import reverse_geocode
from eval.datasets import load_dataset
from eval.runner import RunSpec, prepare_run_dir, run
from eval.systems import SystemConfig, load_system
from rag_store import Gallery, create_encoder, index_source, load_image, open_client
from rag_store.errors import ConfigError
from rag_store.gps_gallery import location_similarity
from tests.imagegen import scene_jpeg, tiny_clip_dir
from tests.openai_server import OpenAIServer, image_urls, last_user_text

# Cities in 20 countries: two gallery photos each, a few km apart.
CITIES = [
    (48.8566, 2.3522), (51.5074, -0.1278), (40.7128, -74.006), (35.6762, 139.6503),
    (-33.8688, 151.2093), (-22.9068, -43.1729), (55.7558, 37.6173), (28.6139, 77.209),
    (30.0444, 31.2357), (-1.2921, 36.8219), (52.52, 13.405), (41.9028, 12.4964),
    (40.4168, -3.7038), (19.4326, -99.1332), (-34.6037, -58.3816), (37.5665, 126.978),
    (13.7563, 100.5018), (59.3293, 18.0686), (45.4215, -75.6972), (-41.2865, 174.7762),
]
COORD = re.compile(r"\(-?\d+\.\d{4}, -?\d+\.\d{4}\)")


def write_csv(path: Path, rows: list[tuple[str, float, float]]) -> Path:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([("IMG_ID", "LAT", "LON"), *rows])
    return path


def build_gallery(root: Path, encoder, rows: list[tuple[str, float, float]], images: Path) -> Path:
    store = root / "store"
    gallery = Gallery.open(open_client(store), "gallery", encoder_name=encoder.name, dim=encoder.dim, create=True)
    summary = index_source(write_csv(root / "gallery.csv", rows), gallery, encoder, images=images)
    assert summary.added == len(rows)
    return store


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict:
    """40 generated gallery photos (2 per city) and 3 query photos absent from the gallery."""
    root = tmp_path_factory.mktemp("scenes")
    images = root / "images"
    images.mkdir()
    rows = []
    for i, (lat, lon) in enumerate(CITIES * 2):
        name = f"scene-{i}.jpg"
        scene_jpeg(images / name, seed=i)
        rows.append((name, lat + 0.01 * (i // 20), lon))
    queries = [scene_jpeg(root / f"query-{i}.jpg", seed=1000 + i) for i in range(3)]
    return {"store": build_gallery(root, create_encoder(), rows, images), "queries": queries, "rows": rows}


def agent_for(store: Path, srv: OpenAIServer, config: str | None = None, **overrides) -> GeoAgent:
    base = Settings(store=str(store), model="test-vlm", base_url=srv.base_url, api_key="sk-test",
                    max_retries=0, timeout=10.0)
    settings = load_system(config).settings(base) if config else base
    return GeoAgent.from_settings(settings.replace(**overrides))


def reference_counts(request: dict) -> tuple[int, int]:
    """(similar, dissimilar) coordinates in a request's prompt."""
    similar = dissimilar = 0
    for line in last_user_text(request).splitlines():
        n = len(COORD.findall(line))
        if "least similar" in line:
            dissimilar += n
        else:
            similar += n
    return similar, dissimilar


_unique = itertools.count()


def distinct_answer(_body: dict) -> str:
    """A valid answer whose candidate differs from every other reply's (none merge)."""
    i = next(_unique)
    lat, lon = -60 + (i * 7.3) % 120, -170 + (i * 13.7) % 340
    return json.dumps({"clues": ["c"], "reasoning": "r",
                       "candidates": [{"latitude": lat, "longitude": lon, "place": f"p{i}", "confidence": 0.5}]})


# ---------------------------------------------------------------- presets on the wire


def test_img2loc_one_request_16_similar_16_dissimilar_full_resolution(scenes):
    with OpenAIServer(default=distinct_answer) as srv:
        p = agent_for(scenes["store"], srv, "img2loc").locate(scenes["queries"][0])
        (request,) = srv.requests
    assert "n" not in request
    assert reference_counts(request) == (16, 16)
    assert len(image_urls(request)) == 1
    sent = Image.open(__import__("io").BytesIO(__import__("base64").b64decode(image_urls(request)[0].split(",", 1)[1])))
    assert sent.size == Image.open(scenes["queries"][0]).size  # under the 2048 px cap: not resized
    assert p.llm_calls == 1 and p.completions == 1 and p.source == "llm"


def test_g3_four_requests_of_ten_samples_pool_of_21(scenes):
    with OpenAIServer(default=distinct_answer) as srv:
        p = agent_for(scenes["store"], srv, "g3").locate(scenes["queries"][0])
        requests = srv.requests
    assert len(requests) == 4
    assert [r["n"] for r in requests] == [10] * 4
    assert {r["temperature"] for r in requests} == {1.2}
    assert sorted(reference_counts(r) for r in requests) == [(0, 0), (5, 5), (10, 10), (15, 15)]
    assert all(len(image_urls(r)) == 1 for r in requests)
    assert p.llm_calls == 4 and p.completions == 40
    # 5 kept per variant (all distinct here) + the top-1 retrieved coordinate.
    origins = [c.origin for c in p.candidates]
    assert origins.count("llm") == 20 and origins.count("neighbours") == 1 and len(origins) == 21


def test_g3_asks_again_for_choices_the_server_did_not_return(scenes):
    with OpenAIServer(default=distinct_answer, max_choices=4) as srv:
        p = agent_for(scenes["store"], srv, "g3", variants=(5,)).locate(scenes["queries"][0])
        asked = [r.get("n", 1) for r in srv.requests]
    assert asked == [10, 6, 2]  # 4 + 4 + 2 choices
    assert p.completions == 10 and p.llm_calls == 3
    assert sum(1 for c in p.candidates if c.origin == "llm") == 5


def _example_labels(request: dict) -> list[str]:
    texts = [part["text"] for m in request["messages"] if isinstance(m["content"], list)
             for part in m["content"] if part.get("type") == "text"]
    return [t for t in texts if t.startswith("Example ")]


def test_llmgeo_dynamic_few_shot_sends_the_5_nearest_photos_labelled_with_countries(scenes):
    reply = json.dumps({"clues": [], "reasoning": "r", "country": "USA"})
    with OpenAIServer(default=reply) as srv:
        p = agent_for(scenes["store"], srv, "llmgeo-few-shot-dynamic").locate(scenes["queries"][1])
        (request,) = srv.requests
    assert len(image_urls(request)) == 6
    countries = [pl.country for pl in reverse_geocode([(n.lat, n.lon) for n in p.neighbours[:5]])]
    assert _example_labels(request) == [f"Example {i}: this photo was taken in {c}." for i, c in enumerate(countries, 1)]
    assert reference_counts(request) == (0, 0)  # examples are photos, not coordinates
    assert p.answer_country == "US"


def test_llmgeo_static_few_shot_is_one_fixed_set_one_photo_per_country(scenes):
    reply = json.dumps({"clues": [], "reasoning": "r", "country": "unknown"})
    with OpenAIServer(default=reply) as srv:
        agent = agent_for(scenes["store"], srv, "llmgeo-few-shot-static")
        p = agent.locate(scenes["queries"][0])
        agent.locate(scenes["queries"][2])
        first, second = srv.requests
    assert len(image_urls(first)) == 6
    assert image_urls(first)[1:] == image_urls(second)[1:]  # the same examples for every photo
    labels = _example_labels(first)
    assert len(labels) == 5 and len(set(labels)) == 5
    assert p.answer_country == ""  # "unknown" is a miss, never a guess


@pytest.mark.parametrize("config", ["llmgeo-basic", "llmgeo-must-answer", "llmgeo-tips"])
def test_llmgeo_text_prompts_one_image_no_references(scenes, config):
    reply = json.dumps({"reasoning": "r", "country": "United Kingdom"})
    with OpenAIServer(default=reply) as srv:
        p = agent_for(scenes["store"], srv, config).locate(scenes["queries"][0])
        (request,) = srv.requests
    assert len(image_urls(request)) == 1 and reference_counts(request) == (0, 0)
    assert "country" in last_user_text(request).lower()
    assert p.answer_country == "GB" and p.status == "ok"


def test_answer_format_asks_for_reasoning_before_candidates(scenes):
    with OpenAIServer(default=distinct_answer) as srv:
        agent_for(scenes["store"], srv, "img2loc").locate(scenes["queries"][0])
        text = last_user_text(srv.requests[0])
    assert text.index('"reasoning"') < text.index('"candidates"')


# ---------------------------------------------------------------- endpoints as they are


def test_rejected_temperature_is_dropped_once_and_said_once(scenes, caplog):
    with caplog.at_level(logging.WARNING, logger="geoagent"), OpenAIServer(default=distinct_answer, rejects=("temperature",)) as srv:
        agent = agent_for(scenes["store"], srv, "img2loc")
        p1 = agent.locate(scenes["queries"][0])
        p2 = agent.locate(scenes["queries"][1])
        requests = srv.requests
    assert "temperature" in requests[0]
    assert all("temperature" not in r for r in requests[1:]) and len(requests) == 3
    assert p1.status == p2.status == "ok"
    assert sum("rejects 'temperature'" in r.message for r in caplog.records) == 1


def test_rejected_n_draws_each_sample_in_its_own_request(scenes, caplog):
    with caplog.at_level(logging.WARNING, logger="geoagent"), OpenAIServer(default=distinct_answer, rejects=("n",)) as srv:
        p = agent_for(scenes["store"], srv, "g3", variants=(0, 5), samples=3, keep=3).locate(scenes["queries"][0])
        ok = [r for r in srv.requests if "n" not in r]
    assert len(ok) == 6 and p.completions == 6
    assert sum(1 for c in p.candidates if c.origin == "llm") == 6
    assert sum("rejects 'n'" in r.message for r in caplog.records) == 1


def test_max_tokens_goes_in_the_form_the_endpoint_accepts(scenes):
    with OpenAIServer(default=distinct_answer) as srv:
        agent_for(scenes["store"], srv, "img2loc", max_tokens=300).locate(scenes["queries"][0])
        assert srv.requests[0]["max_tokens"] == 300
    with OpenAIServer(default=distinct_answer, rejects=("max_tokens",)) as srv:
        agent = agent_for(scenes["store"], srv, "img2loc", max_tokens=300)
        p = agent.locate(scenes["queries"][0])
        agent.locate(scenes["queries"][1])
        first, *rest = srv.requests
    assert first["max_tokens"] == 300
    assert [r.get("max_completion_tokens") for r in rest] == [300, 300]
    assert all("max_tokens" not in r for r in rest) and p.status == "ok"


# ---------------------------------------------------------------- reply cache


def test_changing_only_verification_or_pool_makes_no_model_call(scenes, tmp_path):
    settings = dict(variants=(0, 5), samples=4, keep=2, cache_dir=str(tmp_path / "cache"))
    with OpenAIServer(default=distinct_answer) as srv:
        first = agent_for(scenes["store"], srv, "g3", **settings).locate(scenes["queries"][0])
        n_requests = len(srv.requests)
        ablations = [
            agent_for(scenes["store"], srv, "g3", **settings, verification="none").locate(scenes["queries"][0]),
            agent_for(scenes["store"], srv, "g3", **settings, pool=(), verification="neighbours").locate(scenes["queries"][0]),
            agent_for(scenes["store"], srv, "g3", **settings, pool=("neighbours",), pool_k=5).locate(scenes["queries"][0]),
        ]
        assert len(srv.requests) == n_requests == 2
    llm = {(c.latitude, c.longitude) for c in first.candidates if c.origin == "llm"}
    for p in ablations:
        assert p.llm_calls == 0 and p.completions == 0
        assert {(c.latitude, c.longitude) for c in p.candidates if c.origin == "llm"} == llm


# ---------------------------------------------------------------- GeoCLIP verification


def test_g3_verification_prefers_a_model_candidate_nearer_geoclips_location(tmp_path):
    """Tiny random CLIP + GeoCLIP's real head and location encoder: the pool's winner is
    the candidate whose location GeoCLIP finds most like the photo, even over the top-1
    retrieved coordinate."""
    encoder = create_encoder(f"geoclip:{tiny_clip_dir(tmp_path / 'clip', projection_dim=768, seed=5, image_size=224, patch_size=14)}")
    images = tmp_path / "images"
    images.mkdir()
    rows = [(scene_jpeg(images / f"s{i}.jpg", seed=i).name, *CITIES[i]) for i in range(12)]
    store = build_gallery(tmp_path, encoder, rows, images)
    photo = scene_jpeg(tmp_path / "q.jpg", seed=77)
    emb = encoder.embed([load_image(photo)])[0]
    grid = np.array([(lat, lon) for lat in np.arange(-80, 81, 2.5) for lon in np.arange(-180, 180, 2.5)])
    sims = location_similarity(emb, grid)
    best, worst = tuple(grid[int(np.argmax(sims))]), tuple(grid[int(np.argmin(sims))])
    reply = json.dumps({"clues": [], "reasoning": "r", "candidates": [
        {"latitude": worst[0], "longitude": worst[1], "place": "far", "confidence": 0.9},
        {"latitude": best[0], "longitude": best[1], "place": "near", "confidence": 0.1},
    ]})
    with OpenAIServer(default=reply) as srv:
        p = agent_for(store, srv, "g3", variants=(0, 5), samples=2, keep=2).locate(photo)
    top1 = [c for c in p.candidates if c.origin == "neighbours"]
    assert len(top1) == 1 and p.verification == "geoclip"
    assert location_similarity(emb, np.array([[top1[0].latitude, top1[0].longitude]]))[0] < sims.max()
    assert (p.latitude, p.longitude) == best and p.source == "llm"
    assert "gps-gallery" not in {c.origin for c in p.candidates}


# ---------------------------------------------------------------- self-matches


@pytest.fixture(scope="module")
def leak(tmp_path_factory) -> dict:
    """A gallery CSV of 30 generated photos at random places, evaluated against itself; a
    byte copy of photo 3 and a re-saved copy of photo 5 sit in the gallery under other names."""
    root = tmp_path_factory.mktemp("leak")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        scene_jpeg(images / f"g{i}.jpg", seed=i)
        rows.append((f"g{i}.jpg", float(rng.uniform(-60, 70)), float(rng.uniform(-180, 180))))
    shutil.copyfile(images / "g3.jpg", images / "copy-of-g3.jpg")
    Image.open(images / "g5.jpg").save(images / "resaved-g5.jpg", "JPEG", quality=90)
    gallery_rows = [*rows, ("copy-of-g3.jpg", *rows[3][1:]), ("resaved-g5.jpg", *rows[5][1:])]
    held_out = []
    for i in range(30):
        scene_jpeg(images / f"h{i}.jpg", seed=500 + i)
        held_out.append((f"h{i}.jpg", float(rng.uniform(-60, 70)), float(rng.uniform(-180, 180))))
    store = build_gallery(root, create_encoder(), gallery_rows, images)
    return {"root": root, "store": store, "images": images,
            "same": write_csv(root / "same.csv", rows), "held_out": write_csv(root / "held_out.csv", held_out)}


def _run(leak: dict, csv_path: Path, run_dir: Path, allow: bool = False):
    spec = RunSpec(run_dir, load_dataset(csv_path, images=leak["images"], name="generated"),
                   [load_system("retrieval-only")], Settings(store=str(leak["store"]), ignore_exif=True),
                   concurrency=4, allow_self_match=allow)
    metrics = run(spec)["retrieval-only"]
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return metrics, {r["id"]: r for r in records}


def test_gallery_and_test_set_from_one_csv_scores_like_a_held_out_set(leak, tmp_path):
    same, same_records = _run(leak, leak["same"], tmp_path / "same")
    held, held_records = _run(leak, leak["held_out"], tmp_path / "held")
    leaked, _ = _run(leak, leak["same"], tmp_path / "leaked", allow=True)
    assert leaked.accuracy[1] == 100.0  # what the leak looked like: every photo finds itself
    for t in (1, 25, 200):
        assert abs(same.accuracy[t] - held.accuracy[t]) <= 10.0, (t, same.accuracy[t], held.accuracy[t])
    assert same.n_self_matched == 30 and held.n_self_matched == 0
    excluded = {i: r["excluded_self_matches"] for i, r in same_records.items()}
    assert excluded["g3.jpg"] == 2 and excluded["g5.jpg"] == 2  # id + byte copy; id + re-saved copy
    assert all(n == 1 for i, n in excluded.items() if i not in ("g3.jpg", "g5.jpg"))
    assert all(r["excluded_self_matches"] == 0 for r in held_records.values())
    for i, r in same_records.items():
        assert i not in {n["image_id"] for n in r["output"]["neighbours"] + r["output"]["negatives"]}
    assert "own photo in gallery (left out)" in same.table()
    from eval.report import build_report

    report = build_report(tmp_path / "same", geography=False, n_resamples=10, maps=False)
    assert "own photo was in the gallery (left out of their neighbours, examples and candidates): retrieval-only: 30" in report.markdown.read_text()


def test_locate_answers_from_an_exact_gallery_match_and_says_so(leak):
    p = GeoAgent.from_settings(Settings(store=str(leak["store"]))).locate(leak["images"] / "g7.jpg")
    truth = next(r for r in csv.reader((leak["same"]).open()) if r[0] == "g7.jpg")
    assert p.exact_match == "g7.jpg" and p.verification == "exact-match"
    assert (p.latitude, p.longitude) == pytest.approx((float(truth[1]), float(truth[2])))


# ---------------------------------------------------------------- run identity


def test_resume_refuses_changed_prompts_or_settings_and_says_which(leak, tmp_path, monkeypatch):
    import prompts

    dataset = load_dataset(leak["held_out"], images=leak["images"], name="generated")
    base = Settings(store=str(leak["store"]), model="m")
    run_dir = tmp_path / "run"
    prepare_run_dir(RunSpec(run_dir, dataset, [load_system("g3")], base), resume=False)
    prepare_run_dir(RunSpec(run_dir, dataset, [load_system("g3")], base.replace(timeout=5.0)), resume=True)
    changed = SystemConfig("g3", "", {**load_system("g3").overrides, "temperature": 0.7})
    with pytest.raises(ConfigError, match=r"config 'g3' setting temperature"):
        prepare_run_dir(RunSpec(run_dir, dataset, [changed], base), resume=True)
    edited = tmp_path / "prompts"
    shutil.copytree(prompts.PROMPTS_DIR, edited, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (edited / "g3.user.txt").write_text((edited / "g3.user.txt").read_text() + "Be brief.\n")
    monkeypatch.setattr(prompts, "PROMPTS_DIR", edited)
    with pytest.raises(ConfigError, match=r"config 'g3' prompt file g3\.user\.txt"):
        prepare_run_dir(RunSpec(run_dir, dataset, [load_system("g3")], base), resume=True)


# ---------------------------------------------------------------- GeoCLIP presets


@pytest.fixture(scope="module")
def geoclip_only(tmp_path_factory) -> dict:
    """A store with no gallery at all, a tiny random CLIP under GeoCLIP's real head."""
    root = tmp_path_factory.mktemp("geoclip-only")
    clip = tiny_clip_dir(root / "clip", projection_dim=768, seed=9, image_size=224, patch_size=14)
    return {"store": root / "store", "encoder": f"geoclip:{clip}", "photo": scene_jpeg(root / "q.jpg", seed=3)}


def test_geoclip_preset_builds_a_missing_gps_gallery_then_answers_its_top_1(geoclip_only, monkeypatch, capsys):
    import rag_store.gps_gallery as gps

    # The first 2000 of GeoCLIP's 100K coordinates: the same build path, in seconds.
    full = gps.gps_gallery_coordinates()
    monkeypatch.setattr(gps, "gps_gallery_coordinates", lambda: full[:2000])
    settings = load_system("geoclip").settings(Settings(store=geoclip_only["store"].as_posix()))
    p = GeoAgent.from_settings(settings.replace(encoder=geoclip_only["encoder"])).locate(geoclip_only["photo"])
    assert "building GeoCLIP's GPS gallery (first use): 2,000/2,000" in capsys.readouterr().err
    gallery = gps.GpsGallery.open(open_client(geoclip_only["store"]))
    assert len(gallery) == 2000
    encoder = create_encoder(geoclip_only["encoder"])
    (top1,) = gallery.candidates(encoder.embed([load_image(geoclip_only["photo"])])[0], k=1)
    assert (p.latitude, p.longitude) == pytest.approx((top1.lat, top1.lon))
    assert p.source == "retrieval" and p.llm_calls == 0 and [c.origin for c in p.candidates] == ["gps-gallery"]


def test_geoclip_rag_references_are_geoclip_top_16_with_probabilities(geoclip_only, monkeypatch):
    import rag_store.gps_gallery as gps

    full = gps.gps_gallery_coordinates()
    monkeypatch.setattr(gps, "gps_gallery_coordinates", lambda: full[:2000])
    with OpenAIServer(default=distinct_answer) as srv:
        p = agent_for(geoclip_only["store"], srv, "geoclip-rag", encoder=geoclip_only["encoder"]).locate(geoclip_only["photo"])
        (request,) = srv.requests
    refs = re.findall(r"\((-?\d+\.\d{4}), (-?\d+\.\d{4}); p=(\d\.\d{3})\)", last_user_text(request))
    assert len(refs) == 16 and reference_counts(request) == (0, 0)  # with probabilities, none dissimilar
    assert [float(r[2]) for r in refs] == sorted((float(r[2]) for r in refs), reverse=True)
    assert sorted(c.origin for c in p.candidates) == ["gps-gallery", "llm"]
    assert p.verification == "geoclip"


def test_named_country_accuracy_is_the_llmgeo_headline():
    from eval.metrics import ScoredItem, compute_metrics

    paris, tokyo = (48.8566, 2.3522), (35.6762, 139.6503)
    items = [
        ScoredItem("a", *paris, status="ok", answer_country="FR"),  # named right, no coordinates
        ScoredItem("b", *tokyo, status="ok", answer_country="CN"),  # wrong country
        ScoredItem("c", *tokyo, status="ok", answer_country=""),  # "unknown": a miss
        ScoredItem("d", *paris, pred_lat=35.0, pred_lon=139.0, status="ok", answer_country="FR", truth_country="FR"),
    ]
    m = compute_metrics(items, n_resamples=10)
    assert m.named_country_acc == 50.0
    assert m.n_unparseable == 1 and m.n_answered == 1  # only "unknown"; a named country is an answer
    assert m.table().splitlines()[1].startswith("named-country accuracy (headline)")
    assert compute_metrics([ScoredItem("e", *paris)], n_resamples=10).named_country_acc is None  # not asked
