"""The near-copy threshold of self-match exclusion (rag_store.store.DUPLICATE_COSINE).

Prints the cosine between each sample photo and re-encoded copies of it, and between each
photo and its most similar other photo, with the default encoder (efficientnet-lite0):

    python bench/bench_selfmatch.py [N_PHOTOS]    # 990: ~4 min on 2 cores
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rag_store import create_encoder, load_image  # noqa: E402

SAMPLE = Path(os.environ.get("GEOAGENT_SAMPLE", Path(__file__).resolve().parents[2] / "shared" / "data" / "im2gps3k-dev"))


def recode(im: Image.Image, quality: int, scale: float) -> Image.Image:
    small = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with (SAMPLE / "im2gps3k-dev.csv").open() as fh:
        rows = list(csv.reader(fh))[1 : n + 1]
    encoder = create_encoder()
    started = time.perf_counter()
    images = [load_image(SAMPLE / "images" / r[0]) for r in rows]
    emb = unit(encoder.embed(images))
    print(f"{encoder.name}, {len(images)} photos")
    for quality, scale in [(90, 1.0), (75, 0.5), (60, 0.35)]:
        same = (emb * unit(encoder.embed([recode(im, quality, scale) for im in images]))).sum(1)
        print(f"copy JPEG q{quality} x{scale}: cosine min {same.min():.4f}  p1 {np.percentile(same, 1):.4f}  "
              f"median {np.median(same):.4f}")
    gram = emb @ emb.T
    np.fill_diagonal(gram, -1)
    nearest = gram.max(1)
    print(f"distinct photos, each one's most similar other: max {nearest.max():.4f}  "
          f"p99 {np.percentile(nearest, 99):.4f}  median {np.median(nearest):.4f}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
