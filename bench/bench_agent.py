"""Agent chain overhead per photo (issue 3), and model calls / tokens per chain setting.

Part 1 -- pipeline overhead, excluding model time. A gallery of sample photos (by
default rows 101-600 of the sample CSV) is indexed with efficientnet-lite0 into a
temp store (or ``--store`` reuses one), then other photos (rows 1-50) are located
one at a time with ``GeoAgent.locate`` (the blocking public API: path in,
``Prediction`` out) against ``tests.openai_server.OpenAIServer`` answering at once
(delay 0), with the ``g3`` config (4 prompt variants = 4 model calls per photo,
neighbour verification, reverse geocoding). Reported per photo:

* overhead = ``latency_s - timings["model"]`` (p50 / p95): reading and decoding the
  photo, EXIF, embedding, the Chroma query, verification, reverse geocoding, the
  LangChain plumbing and the ``asyncio.run`` of ``locate``. Target: p50 <= 150 ms;
* every step of ``Prediction.timings`` (metadata, retrieval, model, verification,
  answer). "model" is wall time of the model step: it also holds our own CPU work
  (the photo's JPEG/base64 data URL, building the messages, the openai client),
  not only the round trips; the data URL alone is timed apart as "data url";
* the retrieval-only latency (``retrieval-only`` config: no model at all), p50 / p95.

Each timed pass is repeated (``--repeats``) and the best and median pass p50 are
printed; the warm-up photo (first call: loads the reverse geocoder, the openai
client, torch kernels) is not timed.

Part 2 -- per preset (every config in eval/configs, and g3 with one sample per
variant): HTTP requests, completions (a request with ``n`` returns several), prompt
and completion tokens per photo, images per request, JPEG bytes per image and the
verified pool's size, over ``--token-photos`` photos. Tokens are what the test server
reports: it *estimates* them from text length (4 characters per token, 85 per image,
4 per message), so they are a relative measure of prompt size, not a real
tokenizer's count. The geoclip presets run on GeoCLIP's real head and location
encoder over a tiny random CLIP and a 3000-point GPS gallery (their counts do not
depend on the CLIP weights).

Usage (from the project root, with the venv active):
  python bench/bench_agent.py                          # build a 500-photo gallery in a temp dir
  python bench/bench_agent.py --store /tmp/bench-agent-store --keep   # build once, keep it
  python bench/bench_agent.py --store /tmp/bench-agent-store          # reuse it
  python bench/bench_agent.py --profile /tmp/agent.prof               # cProfile the timed pass
  python bench/bench_agent.py --tokens-only --gallery 101-300        # part 2 only
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.api import GeoAgent  # noqa: E402
from agent.chain import image_data_url  # noqa: E402
from agent.settings import Settings  # noqa: E402
from eval.systems import builtin_configs, load_system  # noqa: E402
from rag_store.encoders import create_encoder  # noqa: E402
from rag_store.images import load_image  # noqa: E402
from rag_store.ingest import index_source  # noqa: E402
from rag_store.store import Gallery, open_client  # noqa: E402
from tests.openai_server import OpenAIServer, image_urls  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "im2gps3k-dev"
ANSWER = json.dumps(
    {
        "clues": ["Haussmann facades", "French street signs"],
        "candidates": [
            {"latitude": 48.8566, "longitude": 2.3522, "place": "Paris, France", "confidence": 0.8},
            {"latitude": 45.764, "longitude": 4.8357, "place": "Lyon, France", "confidence": 0.1},
        ],
        "reasoning": "Parisian architecture.",
    }
)
STEPS = ("metadata", "retrieval", "model", "verification", "answer")
# Every preset (builtin_configs()), and G3 at the old one-sample setting for comparison.
TOKEN_CONFIGS = (*builtin_configs(), "g3+samples=1")
BENCH_GPS = "bench-gps-3k"
ANSWER_COUNTRY = json.dumps({"clues": ["French street signs"], "reasoning": "Parisian architecture.", "country": "France"})


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation (numpy's default)."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ms(x: float) -> str:
    return f"{1000 * x:7.1f}"


def read_rows(csv_path: Path) -> tuple[list[str], list[list[str]]]:
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, list(reader)


def build_gallery(store: Path, header: list[str], rows: list[list[str]], images: Path, encoder_name: str) -> None:
    tmp_csv = store.parent / f"{store.name}-gallery.csv"
    with tmp_csv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    encoder = create_encoder(encoder_name)
    gallery = Gallery.open(open_client(store), "gallery", encoder_name=encoder.name, dim=encoder.dim, create=True)
    t0 = time.perf_counter()
    summary = index_source(tmp_csv, gallery, encoder, images=images)
    print(f"built gallery: {summary.added} photos in {time.perf_counter() - t0:.1f} s -> {store}", flush=True)
    tmp_csv.unlink(missing_ok=True)


def settings_for(config: str, base: Settings) -> Settings:
    if config == "g3+samples=1":
        return load_system("g3").settings(base).replace(samples=1, keep=None)
    return load_system(config).settings(base)


def locate_pass(agent: GeoAgent, photos: list[Path]) -> list:
    return [agent.locate(p) for p in photos]


def overhead_figures(preds: list) -> dict[str, float]:
    over = [p.latency_s - p.timings.get("model", 0.0) for p in preds]
    return {"p50": pct(over, 50), "p95": pct(over, 95), "max": max(over)}


def part1(args, store: Path, photos: list[Path], srv: OpenAIServer) -> dict:
    base = Settings(
        store=str(store), model="test-vlm", base_url=srv.base_url, api_key="sk-test",
        max_retries=0, timeout=30.0, ignore_exif=True, cache_dir=None,
    )
    agent = GeoAgent.from_settings(settings_for("g3", base))
    agent.locate(photos[-1])  # warm-up: reverse geocoder, openai client, torch
    passes = []
    profiler = None
    for i in range(args.repeats):
        if args.profile and i == args.repeats - 1:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.perf_counter()
        preds = locate_pass(agent, photos)
        wall = time.perf_counter() - t0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        bad = [p for p in preds if p.status != "ok"]
        if bad:
            print(f"  warning: {len(bad)} predictions not ok, e.g. {bad[0].status}: {bad[0].error}", file=sys.stderr)
        fig = overhead_figures(preds)
        passes.append({"preds": preds, "wall": wall, **fig})
        print(f"  pass {i + 1}: overhead p50 {ms(fig['p50'])} ms  p95 {ms(fig['p95'])} ms  "
              f"({len(photos)} photos in {wall:.2f} s)", file=sys.stderr, flush=True)

    # Retrieval only: no model at all.
    r_agent = GeoAgent.from_settings(settings_for("retrieval-only", base))
    r_agent.locate(photos[-1])
    r_passes = []
    for _ in range(args.repeats):
        preds = locate_pass(r_agent, photos)
        lat = [p.latency_s for p in preds]
        r_passes.append({"p50": pct(lat, 50), "p95": pct(lat, 95), "preds": preds})

    # The data URL (thumbnail to max_side + JPEG + base64), part of the "model" step.
    durl = []
    for p in photos:
        im = load_image(p)
        t0 = time.perf_counter()
        image_data_url(im, agent.settings.max_side)
        durl.append(time.perf_counter() - t0)
    return {"passes": passes, "r_passes": r_passes, "data_url": durl}


def report_part1(res: dict, n_photos: int) -> dict:
    passes = sorted(res["passes"], key=lambda p: p["p50"])
    best, median = passes[0], passes[len(passes) // 2]
    print()
    print(f"== overhead per photo excluding model time (g3 config, {n_photos} photos, "
          f"{len(passes)} passes; target p50 <= 150 ms)")
    print(f"{'pass':>8} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}")
    for name, p in (("best", best), ("median", median)):
        print(f"{name:>8} {ms(p['p50'])} {ms(p['p95'])} {ms(p['max'])}")
    print(f"target p50 <= 150 ms: {'MET' if median['p50'] <= 0.150 else 'MISSED'} (median pass)")
    print()
    calls = statistics.median(p.llm_calls for p in median["preds"])
    print(f"== per-step timings, median pass (ms; model = {calls:g} calls to a server answering at once)")
    print(f"{'step':>14} {'p50':>7} {'p95':>7} {'mean':>7}")
    preds = median["preds"]
    for step in (*STEPS, "latency"):
        vals = [p.latency_s if step == "latency" else p.timings.get(step, 0.0) for p in preds]
        print(f"{step:>14} {ms(pct(vals, 50))} {ms(pct(vals, 95))} {ms(statistics.mean(vals))}")
    d = res["data_url"]
    print(f"{'(data url)':>14} {ms(pct(d, 50))} {ms(pct(d, 95))} {ms(statistics.mean(d))}   "
          "<- our CPU work inside 'model'")
    r = sorted(res["r_passes"], key=lambda p: p["p50"])
    rb, rm = r[0], r[len(r) // 2]
    print()
    print("== retrieval only (no model), latency_s per photo")
    print(f"{'pass':>8} {'p50 ms':>7} {'p95 ms':>7}")
    for name, p in (("best", rb), ("median", rm)):
        print(f"{name:>8} {ms(p['p50'])} {ms(p['p95'])}")
    steps_r = {s: pct([p.timings.get(s, 0.0) for p in rm["preds"]], 50) for s in STEPS}
    print("   steps p50 ms: " + "  ".join(f"{s} {1000 * v:.1f}" for s, v in steps_r.items()))
    return {"best": best, "median": median}


def geoclip_stand_in(store: Path, tmp: Path) -> str:
    """A tiny random CLIP under GeoCLIP's real head, and a 3000-point GPS gallery in ``store``:
    the geoclip presets' requests and tokens do not depend on the CLIP weights."""
    from rag_store.gps_gallery import build_gps_gallery
    from tests.imagegen import tiny_clip_dir

    build_gps_gallery(open_client(store), name=BENCH_GPS, limit=3000)
    return f"geoclip:{tiny_clip_dir(tmp / 'tiny-clip', projection_dim=768)}"


def part2(store: Path, photos: list[Path], geoclip_encoder: str) -> list[dict]:
    rows = []
    for config in TOKEN_CONFIGS:
        with OpenAIServer(default=ANSWER_COUNTRY if config.startswith("llmgeo") else ANSWER, delay=0) as srv:
            base = Settings(
                store=str(store), model="test-vlm", base_url=srv.base_url, api_key="sk-test",
                max_retries=0, timeout=30.0, ignore_exif=True, cache_dir=None, gps_collection=BENCH_GPS,
            )
            settings = settings_for(config, base)
            if settings.encoder == "geoclip":
                settings = settings.replace(encoder=geoclip_encoder)
            agent = GeoAgent.from_settings(settings)
            preds = [agent.locate(p) for p in photos]
            requests = srv.requests
        n = len(photos)
        img_bytes = [len(base64.b64decode(u.split(",", 1)[1])) for r in requests for u in image_urls(r)]
        rows.append(
            {
                "config": config,
                "requests": len(requests) / n,
                "completions": sum(p.completions for p in preds) / n,
                "prompt": sum(p.prompt_tokens for p in preds) / n,
                "completion": sum(p.completion_tokens for p in preds) / n,
                "images": len(img_bytes) / len(requests) if requests else 0.0,
                "img_bytes": statistics.mean(img_bytes) if img_bytes else 0.0,
                "pool": statistics.mean(len(p.candidates) for p in preds),
                "ok": sum(p.status == "ok" for p in preds),
            }
        )
    print()
    print(f"== model requests, completions and tokens per photo ({len(photos)} photos per config; tokens "
          "are ESTIMATED by the test server from text length: ~4 chars/token + 85 per image)")
    print(f"{'config':>24} {'requests':>8} {'completions':>11} {'prompt tok':>10} {'compl tok':>9} "
          f"{'images/req':>10} {'JPEG B/img':>10} {'pool':>5} {'ok':>4}")
    for r in rows:
        print(f"{r['config']:>24} {r['requests']:>8.2f} {r['completions']:>11.2f} {r['prompt']:>10.0f} "
              f"{r['completion']:>9.0f} {r['images']:>10.1f} {r['img_bytes']:>10.0f} {r['pool']:>5.1f} {r['ok']:>4}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--csv", type=Path, default=SAMPLE / "im2gps3k-dev.csv")
    ap.add_argument("--images", type=Path, default=SAMPLE / "images")
    ap.add_argument("--store", type=Path, help="reuse (or, if absent, build here) the gallery store")
    ap.add_argument("--keep", action="store_true", help="keep a store built in a temp dir")
    ap.add_argument("--gallery", default="101-600", help="data rows (1-based, inclusive) in the gallery")
    ap.add_argument("--queries", default="1-50", help="data rows (1-based, inclusive) to locate")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes over the query photos")
    ap.add_argument("--token-photos", type=int, default=10, help="photos per config in part 2")
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--profile", type=Path, help="cProfile the last timed pass into this file")
    ap.add_argument("--skip-tokens", action="store_true")
    ap.add_argument("--tokens-only", action="store_true", help="only part 2 (requests and tokens per preset)")
    args = ap.parse_args(argv)

    def span(text: str) -> slice:
        a, b = (int(x) for x in text.split("-"))
        return slice(a - 1, b)

    header, rows = read_rows(args.csv)
    gallery_rows, query_rows = rows[span(args.gallery)], rows[span(args.queries)]
    photos = [args.images / r[0] for r in query_rows]
    tmp = None
    store = args.store
    if store is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
        store = tmp / "store"
    try:
        if not (store / "chroma.sqlite3").exists():
            store.parent.mkdir(parents=True, exist_ok=True)
            build_gallery(store, header, gallery_rows, args.images, args.encoder)
        else:
            print(f"reusing gallery store {store}", flush=True)
        for p in photos:  # page cache
            p.read_bytes()
        print(f"{len(photos)} query photos (rows {args.queries}), gallery rows {args.gallery}, "
              f"encoder {args.encoder}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
        if not args.tokens_only:
            with OpenAIServer(default=ANSWER, delay=0) as srv:
                res = part1(args, store, photos, srv)
            report_part1(res, len(photos))
        if not args.skip_tokens:
            with tempfile.TemporaryDirectory(prefix="bench-agent-clip-") as clip_tmp:
                part2(store, photos[: args.token_photos], geoclip_stand_in(store, Path(clip_tmp)))
        print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            print(f"kept {store}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
