"""Peak memory of indexing thin images (issue 9): a 1x40000 PNG must index with peak RSS < 1 GB.

Each case runs ``geoagent index`` in a fresh process on a one-row CSV and reports that
process's peak resident set size (``ru_maxrss`` of the child), beside a normal 640x480
photo as the baseline (most of the peak is torch and the encoder)::

    python bench/bench_images.py
"""

from __future__ import annotations

import csv
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CASES = {"640x480 photo (baseline)": (640, 480), "1x4000 PNG": (1, 4000), "1x40000 PNG": (1, 40000), "40000x1 PNG": (40000, 1)}


def peak_rss_mb(size: tuple[int, int], work: Path) -> tuple[float, str]:
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 140, 200)).save(images / "thin.png")
    with (work / "source.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["IMG_ID", "LAT", "LON"], ["thin.png", "48.85", "2.35"]])
    code = (
        "import resource, sys\n"
        "from agent.cli import app\n"
        "try:\n"
        "    app(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", code, "index", str(work / "source.csv"), "--images", str(images),
         "--store", str(work / "store"), "--errors", str(work / "errors.csv")],
        capture_output=True, text=True, env=env,
    )
    peak = next((int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_KB")), None)
    summary = next((line for line in proc.stdout.splitlines() if "entries in source" in line), proc.stderr.strip()[-200:])
    if peak is None:  # killed: fall back to the children's peak
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / 1024, summary


def main() -> None:
    print(f"{'case':28} {'peak RSS':>10}  index summary")
    for name, size in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            mb, summary = peak_rss_mb(size, Path(tmp))
        print(f"{name:28} {mb:8.0f} MB  {summary}")


if __name__ == "__main__":
    main()
