"""Ingest throughput: ``index_source`` against the bare encoder on the same photos.

* bare: for each photo ``rag_store.images.load_image``, ``Encoder.preprocess``, then
  ``Encoder.forward`` in batches of 32 -- nothing else, one thread of Python;
* pipeline: ``rag_store.ingest.index_source`` (decode workers, encoder, Chroma writer
  thread, errors file) into a fresh embedded store in a temp dir, from a temp CSV
  holding the first N rows of the sample CSV.

Both use efficientnet-lite0, loaded and warmed up (one forward pass) before any
timing; the photos are read once beforehand so both runs find them in the page
cache. Each run is repeated (--repeats, alternating bare / pipeline) and the
median rate is reported, with the CPU user / system seconds of the process during
each run (a high system share means threads spinning or fighting for the cores).
Target: pipeline / bare >= 0.9. The sample photos are only read, never copied.

Usage (from the project root, with the venv active):
  nice -n 10 python bench/bench_ingest.py                # first 300 photos
  nice -n 10 python bench/bench_ingest.py -n 990 --repeats 1
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag_store.encoders import create_encoder  # noqa: E402
from rag_store.images import load_image  # noqa: E402
from rag_store.ingest import _resolve_image, index_source  # noqa: E402
from rag_store.store import Gallery, open_client  # noqa: E402

# After rag_store, as in the geoagent CLI: rag_store sets OpenMP up before torch loads.
import torch  # noqa: E402  # isort: skip

SAMPLE = ROOT.parent / "shared" / "data" / "im2gps3k-dev"


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def bare(encoder, paths: list[Path], batch_size: int) -> int:
    """Decode, preprocess and embed every photo in one thread; returns how many embedded."""
    done = 0
    batch = []
    for path in paths:
        batch.append(encoder.preprocess(load_image(path)))
        if len(batch) == batch_size:
            encoder.forward(torch.stack(batch))
            done += len(batch)
            batch = []
    if batch:
        encoder.forward(torch.stack(batch))
        done += len(batch)
    return done


def pipeline(encoder, csv_path: Path, images: Path, tmp: Path, batch_size: int, run: int) -> int:
    store = tmp / f"store-{run}"
    gallery = Gallery.open(
        open_client(store), "gallery", encoder_name=encoder.name, dim=encoder.dim, create=True
    )
    summary = index_source(
        csv_path,
        gallery,
        encoder,
        images=images,
        batch_size=batch_size,
        errors_file=tmp / f"errors-{run}.csv",
    )
    if summary.skipped_total:
        print(f"  pipeline skipped {dict(summary.skipped)}", file=sys.stderr)
    return summary.added


def timed(fn, *args) -> dict:
    u0, s0 = cpu()
    t0 = time.perf_counter()
    n = fn(*args)
    wall = time.perf_counter() - t0
    u1, s1 = cpu()
    return {"n": n, "wall": wall, "rate": n / wall, "user": u1 - u0, "sys": s1 - s0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--csv", type=Path, default=SAMPLE / "im2gps3k-dev.csv")
    ap.add_argument("--images", type=Path, default=SAMPLE / "images")
    ap.add_argument("-n", "--count", type=int, default=300, help="first N photos of the CSV")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encoder", default="efficientnet-lite0")
    args = ap.parse_args(argv)

    with args.csv.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [row for _, row in zip(range(args.count), reader, strict=False)]
    paths = [_resolve_image(args.images, row[0].strip()) for row in rows]
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        csv_path = tmp / "sample.csv"
        with csv_path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        for p in paths:  # warm the page cache for both runs alike
            p.read_bytes()
        encoder = create_encoder(args.encoder)
        encoder.forward(torch.stack([encoder.preprocess(load_image(paths[0]))] * 2))
        print(
            f"{len(paths)} photos, {args.encoder}, batch {args.batch_size}, "
            f"torch threads {torch.get_num_threads()}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, repeats {args.repeats}; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
            flush=True,
        )
        runs: dict[str, list[dict]] = {"bare": [], "pipeline": []}
        for i in range(args.repeats):
            order = ("bare", "pipeline") if i % 2 == 0 else ("pipeline", "bare")
            for kind in order:
                if kind == "bare":
                    r = timed(bare, encoder, paths, args.batch_size)
                else:
                    r = timed(pipeline, encoder, csv_path, args.images, tmp, args.batch_size, i)
                runs[kind].append(r)
                print(
                    f"  run {i + 1} {kind:>8}: {r['n']} images in {r['wall']:.2f} s = "
                    f"{r['rate']:.1f} img/s (cpu user {r['user']:.1f} s, sys {r['sys']:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        med = {k: statistics.median(r["rate"] for r in v) for k, v in runs.items()}
        ratio = med["pipeline"] / med["bare"]
        print(f"{'':>9} {'img/s':>7} {'user s':>7} {'sys s':>6}")
        for kind, v in runs.items():
            print(
                f"{kind:>9} {med[kind]:>7.1f} {statistics.median(r['user'] for r in v):>7.1f} "
                f"{statistics.median(r['sys'] for r in v):>6.1f}"
            )
        verdict = "meets" if ratio >= 0.9 else "MISSES"
        print(f"ratio pipeline/bare {ratio:.3f} ({verdict} the 0.9 target); peak {peak_mib():.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
