"""Benchmark-runner throughput (issue 4): 500 items at concurrency 16 against a 200 ms model.

``eval.runner.run`` runs the ``zero-shot`` config (one model call per item, no
retrieval: the agent has a model and no gallery -- the store is an empty temp dir --
so ``GeoAgent.from_settings`` loads no encoder and the chain skips retrieval) over
the first 500 photos of the sample, with no reply cache (``cache_dir=None``, as
``--no-cache``), against ``tests.openai_server.OpenAIServer(default=<valid JSON
answer>, delay=0.2)``. Every record is written, flushed and fsynced to
``results.jsonl`` as it finishes, as in a real run.

Ideal time: every request takes 0.2 s and at most 16 are in flight, so some slot must
serve ceil(500 / 16) = 32 requests one after another: ideal = 32 x 0.2 s = 6.4 s. (The
fluid bound 500 x 0.2 / 16 = 6.25 s is not reachable with whole requests; the ratio to
it is printed too.) Target: wall / 6.4 s <= 1.2, i.e. <= 7.68 s.

Where the server runs (``--server``):
  * ``process`` (default): ``OpenAIServer`` in a child Python process, as a hosted model
    would be: its HTTP parsing does not take the runner's CPU or GIL;
  * ``thread``: ``OpenAIServer`` in this process (the way the tests use it): its request
    handling competes with the runner for the GIL.

Printed per run: wall time of the ``run`` call (building the agent included: the first
run in a process also pays one-off imports, e.g. chromadb, and loading the reverse
geocoder; it is reported as "cold" and the later runs as "warm"), ideal, ratio,
items/s, CPU seconds of this process (and of the server with ``--server thread``), the
server's peak of requests in flight (should be 16) and the records in results.jsonl
(should be 500, all "ok"). ``--progress`` drives the CLI's rich progress bar as
``geoagent eval run`` does; ``--cli`` runs the ``geoagent eval run`` command in a
subprocess (its wall time then includes interpreter start-up and imports).

Usage (from the project root, with the venv active):
  python bench/bench_eval.py                     # 4 runs: 1 cold + 3 warm
  python bench/bench_eval.py --server thread     # test server in this process
  python bench/bench_eval.py --progress          # with the CLI's progress bar
  python bench/bench_eval.py --cli --repeats 2   # the real command, end to end
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.settings import Settings  # noqa: E402
from eval.datasets import load_dataset  # noqa: E402
from eval.runner import RunSpec, run  # noqa: E402
from eval.systems import load_system  # noqa: E402
from tests.openai_server import OpenAIServer  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "im2gps3k-dev"
ANSWER = json.dumps(
    {
        "clues": ["Haussmann facades"],
        "candidates": [{"latitude": 48.8566, "longitude": 2.3522, "place": "Paris, France", "confidence": 0.8}],
        "reasoning": "Parisian architecture.",
    }
)

# The child process of --server process: serves, then answers "stats" on stdin.
SERVER_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.openai_server import OpenAIServer
srv = OpenAIServer(default=sys.argv[2], delay=float(sys.argv[3])).start()
print(json.dumps({"base_url": srv.base_url}), flush=True)
for line in sys.stdin:
    if line.strip() == "stats":
        at = [r.at for r in srv.chat_received]
        print(json.dumps({"peak": srv.peak_in_flight, "requests": len(at),
                          "first": min(at, default=0.0), "last": max(at, default=0.0)}), flush=True)
    else:
        break
srv.close()
"""


class ChildServer:
    """``OpenAIServer`` in a child process, with ``base_url`` and ``stats()``."""

    def __init__(self, answer: str, delay: float):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_CHILD, str(ROOT), answer, str(delay)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.base_url = json.loads(self.proc.stdout.readline())["base_url"]

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=10)


@contextmanager
def model_server(mode: str, delay: float):
    if mode == "process":
        child = ChildServer(ANSWER, delay)
        try:
            yield child.base_url, child.stats
        finally:
            child.close()
    else:
        with OpenAIServer(default=ANSWER, delay=delay) as srv:
            def stats() -> dict:
                at = [r.at for r in srv.chat_received]
                return {"peak": srv.peak_in_flight, "requests": len(at),
                        "first": min(at, default=0.0), "last": max(at, default=0.0)}

            yield srv.base_url, stats


def count_records(path: Path) -> tuple[int, int, int]:
    """(records, distinct (config, id) pairs, records with status ok)."""
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return len(recs), len({(r["config"], r["id"]) for r in recs}), sum(r.get("status") == "ok" for r in recs)


def cpu_s(children: bool = False) -> float:
    """User + system CPU seconds of this process so far, plus its finished subprocesses'."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    if children:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += c.ru_utime + c.ru_stime
    return total


def one_run(args, tmp: Path, i: int) -> dict:
    run_dir = tmp / f"run-{i}"
    store = tmp / "empty-store"  # no gallery in it: zero-shot needs none, and gets none
    with model_server(args.server, args.delay) as (base_url, stats):
        if args.cli:
            cmd = [
                sys.executable, "-m", "agent.cli", "eval", "run", "--dataset", str(args.csv),
                "--images", str(args.images), "--name", "im2gps3k", "--limit", str(args.items),
                "--config", "zero-shot", "--model", "test-vlm", "--base-url", base_url,
                "--store", str(store), "--run-dir", str(run_dir), "--concurrency", str(args.concurrency),
                "--no-cache",
            ]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GEOAGENT_"))}
            c0, t0, e0 = cpu_s(children=True), time.perf_counter(), time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "COLUMNS": "120"}, cwd=ROOT)
            wall, cpu, e1 = time.perf_counter() - t0, cpu_s(children=True) - c0, time.time()
            if proc.returncode != 0:
                raise SystemExit(f"geoagent eval run failed:\n{proc.stderr[-2000:]}")
        else:
            dataset = load_dataset(args.csv, images=args.images, name="im2gps3k", limit=args.items)
            base = Settings(
                model="test-vlm", base_url=base_url, api_key="sk-test", store=str(store),
                ignore_exif=True, cache_dir=None, concurrency=args.concurrency,
            )
            spec = RunSpec(run_dir, dataset, [load_system("zero-shot")], base, concurrency=args.concurrency)
            progress = None
            if args.progress:
                from eval.cli import _progress_printer

                progress = _progress_printer()
            profiler = cProfile.Profile() if args.profile and i == args.repeats - 1 else None
            c0, t0, e0 = cpu_s(), time.perf_counter(), time.time()
            if profiler:
                profiler.enable()
            run(spec, progress=progress)
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile)
            wall, cpu, e1 = time.perf_counter() - t0, cpu_s() - c0, time.time()
        served = stats()
    n, distinct, ok = count_records(run_dir / "results.jsonl")
    # Where the wall time went: before the first request arrived (imports, agent, dataset),
    # first to last request arrival, and after the last arrival (its 0.2 s, the last
    # records, metrics; with --cli also the tables and the interpreter's exit).
    phases = (served["first"] - e0, served["last"] - served["first"], e1 - served["last"])
    return {"wall": wall, "cpu": cpu, "peak": served["peak"], "requests": served["requests"],
            "records": n, "distinct": distinct, "ok": ok, "phases": phases}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--csv", type=Path, default=SAMPLE / "im2gps3k-dev.csv")
    ap.add_argument("--images", type=Path, default=SAMPLE / "images")
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--delay", type=float, default=0.2, help="server seconds per request")
    ap.add_argument("--repeats", type=int, default=4, help="runs (the first in-process one is cold)")
    ap.add_argument("--server", choices=("process", "thread"), default="process")
    ap.add_argument("--progress", action="store_true", help="drive the CLI's rich progress bar")
    ap.add_argument("--cli", action="store_true", help="run `geoagent eval run` in a subprocess")
    ap.add_argument("--profile", type=Path, help="cProfile the last run (not with --cli)")
    args = ap.parse_args(argv)

    ideal = math.ceil(args.items / args.concurrency) * args.delay
    fluid = args.items * args.delay / args.concurrency
    mode = "geoagent eval run (subprocess)" if args.cli else "eval.runner.run"
    if args.progress and not args.cli:
        mode += " + progress bar"
    print(f"{args.items} items, zero-shot, concurrency {args.concurrency}, server delay {args.delay} s "
          f"(server in a {args.server}), no cache, {mode}; {os.cpu_count()} CPUs, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        for s in load_dataset(args.csv, images=args.images, limit=args.items).samples:
            s.image.read_bytes()  # page cache, alike for every run
        runs = []
        for i in range(args.repeats):
            r = one_run(args, tmp, i)
            r["kind"] = "cli" if args.cli else ("cold" if i == 0 else "warm")
            runs.append(r)
            print(f"  run {i + 1} ({r['kind']}): {r['wall']:.2f} s, ratio {r['wall'] / max(ideal, 1e-9):.3f}, "
                  f"{args.items / r['wall']:.1f} items/s, cpu {r['cpu']:.2f} s, peak in flight {r['peak']}, "
                  f"requests {r['requests']}, results.jsonl {r['records']} records ({r['distinct']} distinct, "
                  f"{r['ok']} ok), load {os.getloadavg()[0]:.2f}; before first request {r['phases'][0]:.2f} s, "
                  f"first to last request {r['phases'][1]:.2f} s, after last {r['phases'][2]:.2f} s",
                  file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    warm = [r for r in runs if r["kind"] != "cold"] or runs  # every --cli run is a fresh process
    walls = sorted(r["wall"] for r in warm)
    best, med = walls[0], statistics.median(walls)
    cpu_med = statistics.median(r["cpu"] for r in warm)
    print()
    print(f"ideal = ceil({args.items}/{args.concurrency}) x {args.delay} s = {ideal:.2f} s "
          f"(fluid bound {args.items} x {args.delay} / {args.concurrency} = {fluid:.2f} s); target ratio <= 1.2")
    print(f"{'':>12} {'wall s':>7} {'ratio':>6} {'vs fluid':>9} {'items/s':>8}")
    label = "cli" if args.cli else "warm"
    rows = [(f"best {label}", best), (f"median {label}", med)]
    if any(r["kind"] == "cold" for r in runs):
        rows.append(("cold", runs[0]["wall"]))
    for name, w in rows:
        print(f"{name:>12} {w:>7.2f} {w / max(ideal, 1e-9):>6.3f} {w / max(fluid, 1e-9):>9.3f} {args.items / w:>8.1f}")
    print(f"CPU per run (median {label}): {cpu_med:.2f} s = {1000 * cpu_med / args.items:.1f} ms per item"
          f"{' (test server included)' if args.server == 'thread' else ''}")
    ph = [statistics.median(r["phases"][j] for r in warm) for j in range(3)]
    print(f"wall split (median {label}): {ph[0]:.2f} s before the first request, {ph[1]:.2f} s first to "
          f"last request (ideal {ideal - args.delay:.2f} s), {ph[2]:.2f} s after the last")
    print(f"server peak in flight: {', '.join(str(r['peak']) for r in runs)} (target {args.concurrency}); "
          f"requests per run: {', '.join(str(r['requests']) for r in runs)}")
    print(f"results.jsonl records per run: {', '.join(str(r['records']) for r in runs)} "
          f"(distinct: {', '.join(str(r['distinct']) for r in runs)}; ok: {', '.join(str(r['ok']) for r in runs)})")
    print(f"target ratio <= 1.2: {'MET' if med <= 1.2 * ideal else 'MISSED'} (median {label} run)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
