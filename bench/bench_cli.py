"""Start-up time of the ``geoagent`` command as a person meets it (issue 10).

Times, as wall clock of a fresh ``python -m agent.cli`` process each run:

* ``geoagent --help``                       (target: under 1 s)
* ``geoagent locate missing.jpg``           (target: under 1 s; one error line, exit 2)
* ``geoagent locate PHOTO --store S``       retrieval only: loads torch, the encoder,
  Chroma and the GeoNames table, embeds, queries, geocodes (no target; for reference)

Each command runs ``--repeats`` times; min and median are printed. The retrieval-only
case needs a gallery: ``--store S`` reuses one (e.g. built by ``geoagent index``);
without it, a 100-photo gallery of the sample data is built in a temp dir first.

Usage (from the project root):
  python bench/bench_cli.py
  python bench/bench_cli.py --store /tmp/h10bench/store --repeats 5
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("GEOAGENT_SAMPLE", ROOT.parent / "shared" / "data" / "im2gps3k-dev"))


def timed(args: list[str], repeats: int, expect: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - started)
        if run.returncode != expect:
            raise SystemExit(f"{' '.join(args)}: exit {run.returncode}, expected {expect}\n{run.stderr}")
    return times


def build_store(root: Path) -> Path:
    rows = list(csv.reader((SAMPLE / "im2gps3k-dev.csv").open()))
    gallery = root / "gallery.csv"
    with gallery.open("w", newline="") as fh:
        csv.writer(fh).writerows([rows[0], *rows[101:201]])
    store = root / "store"
    subprocess.run([sys.executable, "-m", "agent.cli", "index", str(gallery), "--images", str(SAMPLE / "images"),
                    "--store", str(store), "--errors", str(root / "errors.csv")], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a store with a gallery (default: build a 100-photo one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    photo = SAMPLE / "images" / list(csv.reader((SAMPLE / "im2gps3k-dev.csv").open()))[1][0]
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or build_store(Path(tmp))
        cases = [
            ("geoagent --help", ["--help"], 0, "< 1 s"),
            ("geoagent locate missing.jpg", ["locate", str(Path(tmp) / "missing.jpg")], 2, "< 1 s"),
            ("geoagent locate PHOTO (retrieval only)", ["locate", str(photo), "--store", str(store)], 0, "-"),
        ]
        print(f"{'command':42} {'min s':>7} {'median s':>9}  target   ({args.repeats} runs each, {os.cpu_count()} CPUs)")
        for name, argv, expect, target in cases:
            times = timed(argv, args.repeats, expect)
            print(f"{name:42} {min(times):7.2f} {statistics.median(times):9.2f}  {target}")


if __name__ == "__main__":
    main()
