"""Ingest throughput by decoding-worker count: decode-only, encode-only and the whole pipeline.

For each worker count N (--workers, e.g. 0,1,2; 0 = decode in the encoder's process):

* decode: ``rag_store.ingest._decoded`` over the photos with N worker processes (read,
  decode, resize, crop to uint8: what the pipeline's workers do), nothing else;
* pipeline: ``rag_store.ingest.index_source(workers=N)`` into a fresh embedded Chroma
  store in a temp dir (decode workers, the encoder, the writer thread, the errors file),
  from a temp CSV holding the first -n rows of the sample CSV;

* encode: ``Encoder.forward`` on already-cropped uint8 batches (--batch-size, default the
  device's): the encoder alone, on --device (auto: CUDA when present), measured beside
  the other two so that all three see the same machine load.

Target: pipeline >= 0.9 x min(decode, encode) at the same N. Decode and pipeline include
starting the worker processes (spawned; ~0.3-1 s), as a user's run does. The encoder is
loaded and warmed up before any timing; the photos are read once beforehand so that
every run finds them in the page cache. The three runs alternate their order between
repeats; the median of --repeats runs is reported. The
sample photos are only read, never copied. On a machine without a GPU, the GPU line says
"skipped: no CUDA GPU"; with one, ``--device cuda`` gives the GPU figures.

Usage (from the project root, with the venv active):
  nice -n 10 python bench/bench_ingest.py                      # 300 photos, workers 0,1,2
  nice -n 10 python bench/bench_ingest.py -n 990 --workers 1,2,4,8 --device cuda --encoder clip
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT.parent / "shared" / "data" / "im2gps3k-dev"

# Heavy imports (torch, chromadb) happen in main(): the decoding workers are spawned and
# import this file as their __main__, and must start light, as they do under the CLI.


def timed(fn, *args, **kwargs) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = fn(*args, **kwargs)
    return n, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--csv", type=Path, default=SAMPLE / "im2gps3k-dev.csv")
    ap.add_argument("--images", type=Path, default=SAMPLE / "images")
    ap.add_argument("-n", "--count", type=int, default=300, help="first N photos of the CSV")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated decoding-worker counts")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the device's")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from rag_store.encoders import create_encoder
    from rag_store.ingest import _decoded, index_source, read_csv_source
    from rag_store.store import Gallery, open_client

    records = read_csv_source(args.csv, args.images)[0][: args.count]  # the one gallery-source reader
    workers = [int(w) for w in args.workers.split(",") if w != ""]
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        csv_path = tmp / "sample.csv"
        with csv_path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["IMG_ID", "LAT", "LON"])
            w.writerows([r.image_id, r.lat, r.lon] for r in records)
        for r in records:  # warm the page cache for every run alike
            r.path.read_bytes()
        encoder = create_encoder(args.encoder, device=args.device)
        batch_size = args.batch_size or encoder.batch_size
        crops = [p for _, p in (x for x in _decoded(records[:batch_size], encoder, 0) if not hasattr(x, "kind"))]
        encoder.forward(torch.from_numpy(np.stack(crops[:2])))  # warm-up
        gpu = "skipped: no CUDA GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
        print(
            f"{len(records)} photos, {args.encoder} on {encoder.device} ({encoder.dtype}), batch {batch_size}, "
            f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.1f}, repeats {args.repeats}; GPU: {gpu}",
            flush=True,
        )

        # Encode-only: the same uint8 crops, batch after batch, as many photos as the others.
        pixels = torch.from_numpy(np.stack(crops))

        def encode_only() -> int:
            done = 0
            while done < len(records):
                n = min(batch_size, len(records) - done)
                encoder.forward(pixels[:n] if n <= len(pixels) else pixels.repeat((n // len(pixels) + 1, 1, 1, 1))[:n])
                done += n
            return done

        def decode_only(n_workers: int) -> int:
            return sum(1 for _ in _decoded(records, encoder, n_workers))

        run_no = [0]

        def pipeline(n_workers: int) -> int:
            run_no[0] += 1
            gallery = Gallery.open(
                open_client(tmp / f"store-{run_no[0]}"), "gallery",
                encoder_name=encoder.name, dim=encoder.dim, create=True,
            )
            summary = index_source(
                csv_path, gallery, encoder, images=args.images, batch_size=batch_size,
                workers=n_workers, errors_file=tmp / f"errors-{run_no[0]}.csv",
            )
            return summary.added

        # For each worker count, encode-only, decode-only and the pipeline run back to back,
        # in an order that alternates between repeats: on a shared machine the load drifts
        # within minutes, and the ratio compares runs made under the same load.
        print(f"{'workers':>7} {'encode img/s':>13} {'decode img/s':>13} {'pipeline img/s':>15} {'ratio':>6}  (pipeline / min(decode, encode))")
        for n_workers in workers:
            got: dict[str, list[float]] = {"encode": [], "decode": [], "pipeline": []}
            steps = {"encode": (encode_only,), "decode": (decode_only, n_workers), "pipeline": (pipeline, n_workers)}
            for i in range(args.repeats):
                order = list(steps) if i % 2 == 0 else list(reversed(steps))
                for kind in order:
                    fn, *a = steps[kind]
                    n, wall = timed(fn, *a)
                    got[kind].append(n / wall)
            enc, dec, pipe = (statistics.median(got[k]) for k in ("encode", "decode", "pipeline"))
            ratio = pipe / min(dec, enc)
            verdict = "meets" if ratio >= 0.9 else "MISSES"
            print(
                f"{n_workers:>7} {enc:>13.1f} {dec:>13.1f} {pipe:>15.1f} {ratio:>6.2f}  ({verdict} 0.9; "
                f"load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
