"""Gallery query latency and recall at 10K / 100K / 1M stored vectors.

Measures ``rag_store.store.Gallery`` on an embedded Chroma store, the way the
agent uses it: one ``Gallery.query(vec, k=16)`` call returns the 16 most similar
(positives) and the 16 least similar (negatives) entries, with their metadata.

Figures per size:
  * build: wall time of ``Gallery.add`` in batches of 5000, and vectors/s;
  * query latency p50 / p95 of one ``Gallery.query`` (positives + negatives):
    "cold" is the first query of the freshly opened store (it loads the HNSW index
    from disk); "p50 / p95" are the next --queries queries (after 5 warm-ups);
    "p50w / p95w" the --queries after those, other held-out points: the same
    process once warm (at 1M the first few hundred queries after a load are slower);
  * recall over all 2 x --queries queries;
  * recall@16 of the positives against exact brute force (numpy, cosine), and
    of the negatives against the exact 16 least similar entries;
  * peak memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, i.e. the whole
    process (Chroma runs in-process; the exact search streams, so the benchmark's own
    share is small). It only ever grows: "build MiB" is the peak at the end of that
    size's build (recorded in the store, so a store reused with --keep still shows it),
    "peak MiB" the peak after its queries, both including the sizes measured before.
  * gap+ / gap-: how much less similar (cosine) the returned positives are on average
    than the exact 16 most similar, and how much more similar the returned negatives
    are than the exact 16 least similar: what a recall miss costs the agent.
  * min+: the worst single query's positive recall; <.5: how many queries found fewer
    than half of their true 16 (the search stuck in the wrong region of the graph).

Vectors (why not uniform random): real image embeddings are clustered, anisotropic
(a shared mean direction: two random photos have cosine ~0.2-0.4, not 0) and
locally low-dimensional. Uniform random unit vectors in 512-d are a worst case
where every point is nearly equidistant from every other and no ANN index (nor
the notion of "nearest") is meaningful. So the data is a mixture:
  * a shared mean direction (weight 0.8), 64 "scene types" (super-clusters), and
    4096 clusters, each a perturbation of one scene type;
  * cluster sizes follow a Zipf-like law (a few popular places, a long tail);
  * a point is its cluster centre plus noise of per-cluster scale 0.5-1.0: 95 %
    along a 24-d subspace shared by its scene type, plus an isotropic 512-d part;
  * every vector is L2-normalised, float32, 512-d.
Queries are held-out points drawn from the same mixture with another seed.
The data is a pure function of --seed, chunk by chunk, so a store kept with
--keep is re-measured against exactly the vectors it holds, and the exact
neighbours are computed while streaming (the 1M x 512 matrix is never held).

Build mode (--build-compare, issue 11): for each size, in a fresh process each, the same
vectors (--dim, 768 for CLIP ViT-L/14) are built into raw hnswlib (``pip install
chroma-hnswlib``: the same HNSW code as Chroma's) and into a Chroma gallery (``Gallery.add``
in batches of --add-batch, store.HNSW settings: same M, ef_construction and threads);
prints both rates, their ratio (target >= 0.8), each process's peak RSS, Chroma's size on
disk, and projects an MP-16 gallery (4.72M vectors): build time continuing the growth
measured between the two largest sizes (t ~ n**p), peak memory fitted as c + d*n. Chroma
gets the metadata ingest stores for a webdataset sample (lat, lon, image_id, source,
sha256); --bare adds a third build with none, which splits Chroma's time between its index
and its per-key metadata rows.

Usage (from the project root, with the venv active):
  nice -n 10 python bench/bench_store.py --sizes 10000,100000,1000000 --queries 200
  nice -n 10 python bench/bench_store.py --build-compare --dim 768 --sizes 20000,50000 --bare
  nice -n 10 python bench/bench_store.py --build-compare --dim 768 --sizes 100000,250000,500000,1000000
  nice -n 10 python bench/bench_store.py --keep /tmp/bench-store   # build once, re-measure later
  python bench/bench_store.py --keep /tmp/bench-store --ef-search 64,128,256  # sweep ef_search
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag_store.store import HNSW, Gallery, open_client  # noqa: E402

DIM = 512
N_CLUSTERS = 4096
N_SCENES = 64
SUBSPACE = 24
CHUNK = 5000  # Chroma's max batch is ~5461
K = 16


class Mixture:
    """The clustered distribution described in the module doc, a pure function of ``seed``."""

    def __init__(self, seed: int, dim: int = DIM):
        self.seed = seed
        self.dim = dim
        rng = np.random.default_rng([seed, 0])
        mean_dir = _unit(rng.standard_normal(dim))
        scenes = _unit(rng.standard_normal((N_SCENES, dim)))
        self.scene_of = rng.integers(0, N_SCENES, N_CLUSTERS)
        own = _unit(rng.standard_normal((N_CLUSTERS, dim)))
        self.centres = (0.8 * mean_dir + scenes[self.scene_of] + 0.8 * own).astype(np.float32)
        self.spread = rng.uniform(0.5, 1.0, N_CLUSTERS).astype(np.float32)
        # One orthonormal 24-d basis per scene type: (N_SCENES, DIM, SUBSPACE).
        self.bases = np.linalg.qr(rng.standard_normal((N_SCENES, dim, SUBSPACE)))[0].astype(
            np.float32
        )
        weights = 1.0 / (np.arange(N_CLUSTERS) + 10.0) ** 0.8
        self.weights = rng.permutation(weights / weights.sum())

    def sample(self, n: int, stream: int, chunk_index: int) -> np.ndarray:
        """``n`` unit vectors; (stream, chunk_index) picks an independent, repeatable draw."""
        rng = np.random.default_rng([self.seed, stream, chunk_index])
        cluster = rng.choice(N_CLUSTERS, size=n, p=self.weights)
        z = rng.standard_normal((n, SUBSPACE), dtype=np.float32) / np.sqrt(SUBSPACE)
        # Per scene type, (k, 24) @ (24, dim): the same values as an einsum over per-row bases,
        # without its (n, dim, 24) temporary (370 MB for 5000 rows at 768-d, which would
        # swamp the peak memory that --build-compare measures).
        scene = self.scene_of[cluster]
        low = np.empty((n, self.dim), np.float32)
        for s in np.unique(scene):
            rows = scene == s
            low[rows] = z[rows] @ self.bases[s].T
        iso = rng.standard_normal((n, self.dim), dtype=np.float32) / np.sqrt(self.dim)
        x = self.centres[cluster] + self.spread[cluster, None] * (0.95 * low + 0.3 * iso)
        return _unit(x).astype(np.float32)

    def chunks(self, total: int):
        """The stored vectors: (start index, chunk) pairs, ``CHUNK`` at a time."""
        for i, start in enumerate(range(0, total, CHUNK)):
            yield start, self.sample(min(CHUNK, total - start), stream=1, chunk_index=i)

    def queries(self, n: int) -> np.ndarray:
        return self.sample(n, stream=2, chunk_index=0)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class ExactTopK:
    """Streaming exact top-k most and least similar stored indices for each query."""

    def __init__(self, queries: np.ndarray, k: int):
        self.q = queries
        self.k = k
        n = len(queries)
        self.top_s = np.full((n, 0), -np.inf, np.float32)
        self.top_i = np.zeros((n, 0), np.int64)
        self.bot_s = np.full((n, 0), np.inf, np.float32)
        self.bot_i = np.zeros((n, 0), np.int64)

    def update(self, start: int, chunk: np.ndarray) -> None:
        sims = self.q @ chunk.T  # (queries, chunk)
        idx = np.arange(start, start + len(chunk))[None, :].repeat(len(self.q), 0)
        s = np.concatenate([self.top_s, sims], axis=1)
        i = np.concatenate([self.top_i, idx], axis=1)
        keep = np.argsort(-s, axis=1)[:, : self.k]
        self.top_s, self.top_i = np.take_along_axis(s, keep, 1), np.take_along_axis(i, keep, 1)
        s = np.concatenate([self.bot_s, sims], axis=1)
        i = np.concatenate([self.bot_i, idx], axis=1)
        keep = np.argsort(s, axis=1)[:, : self.k]
        self.bot_s, self.bot_i = np.take_along_axis(s, keep, 1), np.take_along_axis(i, keep, 1)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def image_id(i: int) -> str:
    return f"img{i:07d}.jpg"


def build_or_open(
    root: Path, size: int, mix: Mixture, exact: ExactTopK
) -> tuple[Gallery, float, float]:
    """Open the store for ``size`` (building it if empty) and feed the exact search.

    Returns the gallery, the build time (s) and the process's peak memory (MiB) at the end
    of the build; for a kept store, the figures recorded when it was built (NaN if none).
    """
    client = open_client(root / f"n{size}")
    gallery = Gallery.open(client, "bench", encoder_name="bench-512", dim=DIM, create=True)
    have = gallery.count()
    if have not in (0, size):
        raise SystemExit(f"{root / f'n{size}'} holds {have} vectors, not 0 or {size}: remove it")
    build = 0.0
    rng = np.random.default_rng([mix.seed, 3])
    for start, chunk in mix.chunks(size):
        exact.update(start, chunk)
        if have:
            continue
        ids = [image_id(i) for i in range(start, start + len(chunk))]
        lat = rng.uniform(-90, 90, len(chunk))
        lon = rng.uniform(-180, 180, len(chunk))
        metas = [
            {"lat": float(a), "lon": float(o), "image_id": id_, "source": "bench"}
            for a, o, id_ in zip(lat, lon, ids, strict=True)
        ]
        t = time.perf_counter()
        gallery.add(ids, chunk, metas)
        build += time.perf_counter() - t
        if size >= 100_000 and (start // CHUNK) % 20 == 19 or start + CHUNK >= size:
            done = start + len(chunk)
            print(
                f"  building {size}: {done}/{size} ({build:.0f} s, {done / build:.0f} vec/s, "
                f"peak {peak_mib():.0f} MiB)",
                file=sys.stderr,
                flush=True,
            )
    record = root / f"n{size}" / "bench-build.json"
    if have:  # a kept store: report the build figures recorded when it was made, if any
        saved = json.loads(record.read_text()) if record.exists() else {}
        return gallery, saved.get("build_s", float("nan")), saved.get("peak_mib", float("nan"))
    record.write_text(json.dumps({"build_s": build, "peak_mib": peak_mib(), "hnsw": HNSW}))
    return gallery, build, peak_mib()


def measure(gallery: Gallery, queries: np.ndarray, exact: ExactTopK, warmup: int = 5) -> dict:
    t = time.perf_counter()
    gallery.query(queries[0], k=K)
    cold = time.perf_counter() - t
    for q in queries[1 : 1 + warmup]:
        gallery.query(q, k=K)
    lat, rec_pos, rec_neg, gap_pos, gap_neg = [], [], [], [], []
    for qi, q in enumerate(queries):
        t = time.perf_counter()
        r = gallery.query(q, k=K)
        lat.append(time.perf_counter() - t)
        truth_pos = {image_id(int(i)) for i in exact.top_i[qi]}
        truth_neg = {image_id(int(i)) for i in exact.bot_i[qi]}
        rec_pos.append(len(truth_pos & {n.image_id for n in r.positives}) / K)
        rec_neg.append(len(truth_neg & {n.image_id for n in r.negatives}) / K)
        # How much worse the returned lists are than the exact ones, in cosine similarity.
        gap_pos.append(exact.top_s[qi].mean() - np.mean([n.similarity for n in r.positives]))
        gap_neg.append(np.mean([n.similarity for n in r.negatives]) - exact.bot_s[qi].mean())
    ms = np.asarray(lat) * 1000.0
    first, then = ms[: len(ms) // 2], ms[len(ms) // 2 :]
    return {
        "cold_ms": cold * 1000.0,
        "p50": float(np.percentile(first, 50)),
        "p95": float(np.percentile(first, 95)),
        "p50w": float(np.percentile(then, 50)),
        "p95w": float(np.percentile(then, 95)),
        "recall_pos": float(np.mean(rec_pos)),
        "recall_neg": float(np.mean(rec_neg)),
        "min_recall_pos": float(np.min(rec_pos)),
        "lost": int(np.sum(np.asarray(rec_pos) < 0.5)),
        "gap_pos": float(np.mean(gap_pos)),
        "gap_neg": float(np.mean(gap_neg)),
    }


def set_ef_search(root: Path, size: int, gallery: Gallery, ef: int) -> Gallery:
    """Persist a new ef_search and reopen the store so that the HNSW index is reloaded.

    ``collection.modify(configuration={"hnsw": {"ef_search": N}})`` is stored at once,
    but an index already loaded in this process keeps searching with the old value
    until it is loaded again (checked with chromadb 1.5.9): hence the cache reset.
    """
    from chromadb.api.shared_system_client import SharedSystemClient

    gallery.collection.modify(configuration={"hnsw": {"ef_search": ef}})
    SharedSystemClient.clear_system_cache()
    return Gallery.open(open_client(root / f"n{size}"), "bench")


# ---------------------------------------------------------------- build: Chroma against raw HNSW

MP16 = 4_720_000  # MP-16 photos (Img2Loc's gallery); G3's MP16-Pro has 4.1M


def _build_child(kind: str, size: int, dim: int, seed: int, root: str, add_batch: int, out) -> None:
    """One build in a fresh process (so that its peak memory is its own): rate and peak RSS."""
    mix = Mixture(seed, dim)
    m, efc = HNSW["max_neighbors"], HNSW["ef_construction"]
    threads = HNSW.get("num_threads") or os.cpu_count() or 1
    build = 0.0
    if kind == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="cosine", dim=dim)
        index.init_index(max_elements=size, M=m, ef_construction=efc)
        index.set_num_threads(threads)
        for start, chunk in mix.chunks(size):
            t = time.perf_counter()
            index.add_items(chunk, np.arange(start, start + len(chunk)))
            build += time.perf_counter() - t
        disk = 0
    else:
        gallery = Gallery.open(
            open_client(Path(root) / f"{kind}-{size}"), "bench", encoder_name=f"bench-{dim}", dim=dim, create=True
        )
        step = min(add_batch, gallery.max_batch_size())
        rng = np.random.default_rng([seed, 3])
        for start, chunk in mix.chunks(size):
            for s0 in range(0, len(chunk), step):
                part = chunk[s0 : s0 + step]
                ids = [image_id(start + s0 + i) for i in range(len(part))]
                # The metadata ingest stores for a webdataset sample (rag_store.ingest._embed);
                # "bare" stores none, to show what Chroma's per-key metadata rows cost.
                metas = [
                    {"lat": float(a), "lon": float(o), "image_id": i, "source": "bench",
                     "sha256": hashlib.sha256(i.encode()).hexdigest()}
                    for a, o, i in zip(rng.uniform(-90, 90, len(part)), rng.uniform(-180, 180, len(part)), ids, strict=True)
                ]
                t = time.perf_counter()
                if kind == "chroma-bare":
                    gallery.collection.add(ids=ids, embeddings=part)
                else:
                    gallery.add(ids, part, metas)
                build += time.perf_counter() - t
        t = time.perf_counter()
        gallery.count()  # whatever Chroma defers is part of the build
        build += time.perf_counter() - t
        disk = sum(f.stat().st_size for f in (Path(root) / f"{kind}-{size}").rglob("*") if f.is_file())
    out.put({"kind": kind, "size": size, "build": build, "peak_mib": peak_mib(), "disk_mib": disk / 2**20})


def _build_once(kind: str, size: int, dim: int, seed: int, root: Path, add_batch: int) -> dict:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_build_child, args=(kind, size, dim, seed, str(root), add_batch, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _fit_projection(rows: list[dict], target: int) -> tuple[float, float]:
    """Build seconds and peak MiB at ``target`` vectors, extrapolated from the measured sizes.

    Time: the growth measured between the two largest sizes, t ~ n**p, continued to
    ``target``. HNSW insertion would cost ~log(n) a vector if memory were uniform, but the
    measured cost a vector grows faster than that as the index outgrows the CPU caches
    (768-d, 100K -> 1M: p rose from 1.0 to 1.4 here), and a fit of a*n*ln(n) + b*n came out
    with b < 0, which no build can have. With one size, time scales by n*ln(n).
    Memory: peak = c + d*n (vectors and graph links grow linearly), least squares.
    """
    rows = sorted(rows, key=lambda r: r["size"])
    n = np.array([r["size"] for r in rows], float)
    t = np.array([r["build"] for r in rows], float)
    mem = np.array([r["peak_mib"] for r in rows], float)
    if len(rows) == 1:
        scale = target * np.log(target) / (n[0] * np.log(n[0]))
        return float(t[0] * scale), float(mem[0] * target / n[0])
    p = np.log(t[-1] / t[-2]) / np.log(n[-1] / n[-2])
    time_s = float(t[-1] * (target / n[-1]) ** max(p, 1.0))
    slope, intercept = np.polyfit(n, mem, 1)
    return time_s, float(intercept + slope * target)


def build_compare(sizes: list[int], dim: int, seed: int, root: Path, add_batch: int, bare: bool = False) -> int:
    """Chroma's build rate beside raw hnswlib's, same vectors / M / ef_construction / threads."""
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        print("hnswlib is not installed: pip install chroma-hnswlib (the 'bench' extra)")
        return 2
    threads = HNSW.get("num_threads") or os.cpu_count()
    print(
        f"build: {dim}-d clustered vectors, M={HNSW['max_neighbors']}, "
        f"ef_construction={HNSW['ef_construction']}, threads {threads}, Chroma adds of "
        f"{add_batch}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print(f"{'vectors':>9} {'hnswlib vec/s':>14} {'Chroma vec/s':>13} {'ratio':>6} {'hnswlib MiB':>12} {'Chroma MiB':>11} {'Chroma disk MiB':>16}")
    chroma_rows = []
    for size in sizes:
        # Alternate which goes first, so that a change of machine load hits both alike.
        kinds = ("hnswlib", "chroma", "chroma-bare") if bare else ("hnswlib", "chroma")
        order = kinds if len(chroma_rows) % 2 == 0 else tuple(reversed(kinds))
        got = {kind: _build_once(kind, size, dim, seed, root, add_batch) for kind in order}
        h, c = got["hnswlib"], got["chroma"]
        chroma_rows.append(c)
        ratio = (size / c["build"]) / (size / h["build"])
        print(
            f"{size:>9} {size / h['build']:>14.0f} {size / c['build']:>13.0f} {ratio:>6.2f} "
            f"{h['peak_mib']:>12.0f} {c['peak_mib']:>11.0f} {c['disk_mib']:>16.0f}  (target ratio >= 0.8: "
            f"{'met' if ratio >= 0.8 else 'MISSED'}; load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
        if bare:
            b = got["chroma-bare"]
            print(
                f"{'':>9} Chroma without metadata: {size / b['build']:.0f} vec/s, ratio "
                f"{h['build'] / b['build']:.2f} (geoagent's 5 metadata keys cost "
                f"{(c['build'] - b['build']) / size * 1e6:.0f} us a vector)",
                flush=True,
            )
    time_s, mem = _fit_projection(chroma_rows, MP16)
    print(
        f"projection, MP-16 ({MP16:,} x {dim}-d) into Chroma on this machine, from "
        f"{', '.join(str(r['size']) for r in chroma_rows)}: build {time_s / 3600:.1f} h "
        f"({MP16 / time_s:.0f} vec/s), peak memory {mem / 1024:.1f} GiB",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--keep", type=Path, help="build (or reuse) the stores here instead of a temp dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--ef-search",
        default="",
        help="comma-separated ef_search values to measure on each store (collection.modify); "
        "default: the store's own setting",
    )
    ap.add_argument(
        "--hnsw",
        default="",
        help="override rag_store.store.HNSW for stores built by this run, e.g. "
        "max_neighbors=32,ef_construction=200 (to try settings before changing store.py)",
    )
    ap.add_argument(
        "--build-compare",
        action="store_true",
        help="measure build rate and peak memory of Chroma beside raw hnswlib at --sizes, and "
        "project an MP-16 gallery (4.72M vectors) from them; no queries",
    )
    ap.add_argument("--dim", type=int, default=DIM, help="vector size for --build-compare (MP-16 CLIP: 768)")
    ap.add_argument("--add-batch", type=int, default=5461, help="vectors per Chroma add in --build-compare")
    ap.add_argument(
        "--bare",
        action="store_true",
        help="with --build-compare: also build Chroma with no metadata, to split its build time "
        "between the HNSW index and the metadata rows",
    )
    args = ap.parse_args(argv)
    for item in filter(None, args.hnsw.split(",")):
        key, _, value = item.partition("=")
        HNSW[key.strip()] = int(value)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.build_compare:
        root = args.keep or Path(tempfile.mkdtemp(prefix="bench-build-"))
        root.mkdir(parents=True, exist_ok=True)
        try:
            return build_compare(sizes, args.dim, args.seed, root, args.add_batch, args.bare)
        finally:
            if args.keep is None:
                shutil.rmtree(root, ignore_errors=True)
    efs = [int(s) for s in args.ef_search.split(",") if s]

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-store-"))
    root.mkdir(parents=True, exist_ok=True)
    mix = Mixture(args.seed)
    # Twice --queries: latency is reported for the first half (just after the store is
    # opened) and for the second (a process that has already served that many queries).
    queries = mix.queries(2 * args.queries)
    print(
        f"HNSW {HNSW}; 2 x {args.queries} queries, k={K}, dim={DIM}, {N_CLUSTERS} clusters; "
        f"store {root}",
        flush=True,
    )
    rows = []
    try:
        for size in sizes:
            exact = ExactTopK(queries, K)
            gallery, build, build_mem = build_or_open(root, size, mix, exact)
            stored_ef = (gallery.collection.configuration_json.get("hnsw") or {}).get("ef_search")
            for ef in efs or [None]:
                if ef is not None:
                    gallery = set_ef_search(root, size, gallery, ef)
                m = measure(gallery, queries, exact)
                rows.append(
                    {
                        "size": size,
                        "ef": ef if ef is not None else stored_ef,
                        "build": build,
                        "build_mem": build_mem,
                        "mem": peak_mib(),
                        **m,
                    }
                )
                print_row(rows[-1], header=len(rows) == 1)
            if efs and stored_ef is not None:
                set_ef_search(root, size, gallery, stored_ef)  # leave a kept store as it was built
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def print_row(r: dict, header: bool) -> None:
    if header:
        print(
            f"{'vectors':>9} {'ef':>4} {'build s':>8} {'vec/s':>7} {'cold ms':>8} {'p50 ms':>7} "
            f"{'p95 ms':>7} {'p50w ms':>7} {'p95w ms':>7} {'rec@16+':>8} {'min+':>5} {'<.5':>3} {'gap+':>6} {'rec@16-':>8} {'gap-':>6} "
            f"{'build MiB':>9} {'peak MiB':>9}"
        )
    rate = r["size"] / r["build"] if r["build"] == r["build"] and r["build"] > 0 else float("nan")
    print(
        f"{r['size']:>9} {r['ef']!s:>4} {r['build']:>8.1f} {rate:>7.0f} {r['cold_ms']:>8.1f} "
        f"{r['p50']:>7.2f} {r['p95']:>7.2f} {r['p50w']:>7.2f} {r['p95w']:>7.2f} "
        f"{r['recall_pos']:>8.3f} {r['min_recall_pos']:>5.2f} "
        f"{r['lost']:>3} {r['gap_pos']:>6.3f} {r['recall_neg']:>8.3f} {r['gap_neg']:>6.3f} "
        f"{r['build_mem']:>9.0f} {r['mem']:>9.0f}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
