"""Gallery sources at MP-16 scale: webdataset tar shards and precomputed vectors.

Also the ``Record`` / ``Skip`` types every gallery source yields (CSV and photo-folder
sources are read in ``rag_store.ingest``). This module imports neither torch nor the
encoders: ingest's decoding worker processes unpickle ``Record``s from here.

Webdataset shards (what img2dataset writes): tar files whose members are grouped into
samples by key (the member name up to its first dot after the last '/'): ``0001.jpg``,
``0001.json``, ``0001.txt``... A sample needs one image and its coordinates, from the
``.json`` (MP-16 ``LAT``/``LON``, OSV-5M ``latitude``/``longitude``, any case) or a
``.txt`` holding just "lat,lon" (img2dataset's caption ``.txt`` is ignored). Its id is
the ``.json``'s id field (``IMG_ID``, ``id``...), else img2dataset's ``key``, else the
sample key. Shards are read as streams, one after another, in the order given.

Precomputed vectors: a Parquet file with id, lat, lon and vector columns (pyarrow), or
a ``.npy`` matrix whose rows match, in order, the rows of a CSV of id,lat,lon.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .coords import check_latlon
from .errors import SourceError
from .tables import ID_COLUMNS, LAT_COLUMNS, LON_COLUMNS, read_csv

VECTOR_COLUMNS = ("vector", "embedding", "embeddings", "emb", "features", "clip")
SHARD_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class Record:
    """One gallery candidate: an id, its photo, and (for CSV sources) its coordinates.

    ``data`` holds the photo's bytes when it comes from a container (a tar shard); ``path``
    then names the shard and member, for messages.
    """

    image_id: str
    path: Path
    lat: float | None = None
    lon: float | None = None
    # country / region / city when the CSV gives them (OSV-5M): benchmark truth, not stored.
    places: tuple[tuple[str, str], ...] = ()
    data: bytes | None = None
    sha256: str = ""  # of the photo's bytes, stored so that a benchmark can tell a query's own photo


@dataclass(frozen=True)
class Skip:
    image_id: str
    kind: str
    detail: str


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


# ---------------------------------------------------------------- webdataset shards

_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{00000..00099}`` (zero padding kept) and ``{a,b}`` groups, left to right, like bash."""
    start = pattern.find("{")
    end = pattern.find("}", start + 1)
    if start < 0 or end < 0:
        return [pattern]
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    match = _RANGE.fullmatch(body)
    if match:
        a, b = match.group(1), match.group(2)
        width = len(a) if a.lstrip("-").startswith("0") and len(a.lstrip("-")) > 1 else 0
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        choices = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:  # a literal brace
        return [head + "{" + body + "}" + out for out in expand_braces(tail)]
    rest = expand_braces(tail)
    return [head + choice + out for choice in choices for out in rest]


def _is_tar(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".tar", ".tar.gz", ".tgz"))


def shard_paths(source: str | Path) -> list[Path] | None:
    """The tar shards a SOURCE names (brace pattern, folder of .tar, one .tar), else None.

    Raises ``SourceError`` when a pattern or folder names shards but none exists.
    """
    text = str(source)
    if "{" in text and "}" in text:
        paths = [Path(p) for p in expand_braces(text)]
        if len(paths) == 1 and paths[0] == Path(text):
            return None
        if not any(p.is_file() for p in paths):
            raise SourceError(f"none of the {len(paths)} shards of {text} exists (first: {paths[0]})")
        return paths
    path = Path(text)
    if path.is_file() and _is_tar(path):
        return [path]
    if path.is_dir():
        tars = sorted(p for p in path.iterdir() if p.is_file() and _is_tar(p))
        return tars or None
    return None


def _sample_key(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member, webdataset-style: 'a/b/0001.seg.jpg' -> ('a/b/0001', 'seg.jpg')."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _txt_latlon(data: bytes) -> tuple[str, str] | None:
    """A .txt holding exactly two numbers ("lat,lon" or "lat lon"); a caption is not one."""
    parts = data.decode("utf-8", "replace").replace(",", " ").split()
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _shard_sample(shard: Path, key: str, files: dict[str, bytes]) -> Record | Skip:
    image_ext = next((e for e in SHARD_IMAGE_SUFFIXES if e in files), None)
    meta: dict = {}
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except (UnicodeDecodeError, ValueError) as exc:
            return Skip(key, "bad metadata", f"{shard}:{key}.json is not JSON: {exc}")
        if not isinstance(meta, dict):
            return Skip(key, "bad metadata", f"{shard}:{key}.json is not a JSON object")
    columns = [k for k in meta if isinstance(k, str)]
    id_col = _pick(columns, ID_COLUMNS) or _pick(columns, ("key",))
    raw_id = meta.get(id_col) if id_col else None
    image_id = str(raw_id).strip() if raw_id not in (None, "") else key
    if image_ext is None:
        return Skip(image_id, "no image", f"{shard}:{key} has no {'/'.join(SHARD_IMAGE_SUFFIXES)} member")
    lat_col, lon_col = _pick(columns, LAT_COLUMNS), _pick(columns, LON_COLUMNS)
    raw: tuple | None = (meta.get(lat_col), meta.get(lon_col)) if lat_col and lon_col else None
    if raw is None and "txt" in files:
        raw = _txt_latlon(files["txt"])
    if raw is None:
        return Skip(image_id, "bad coordinates", f"{shard}:{key} has no latitude/longitude in .json or .txt")
    point, reason = check_latlon(*raw)
    if point is None:
        return Skip(image_id, "bad coordinates", f"{shard}:{key}: {reason}")
    return Record(image_id, Path(f"{shard}:{key}.{image_ext}"), point.lat, point.lon, data=files[image_ext])


def iter_shard(shard: Path) -> Iterator[Record | Skip]:
    """The samples of one tar shard, streamed; a missing or corrupt shard becomes a ``Skip``."""
    current: str | None = None
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _sample_key(member.name)
                if key != current:
                    if current is not None:
                        yield _shard_sample(shard, current, files)
                    current, files = key, {}
                fh = tar.extractfile(member)
                files[ext] = fh.read() if fh is not None else b""
    except FileNotFoundError:
        yield Skip(str(shard), "missing shard", f"{shard} does not exist")
        return
    except (tarfile.TarError, OSError, EOFError) as exc:
        # A truncated download: what was read before the damage is still used.
        if current is not None and files:
            yield _shard_sample(shard, current, files)
        yield Skip(str(shard), "corrupt shard", f"{shard}: {exc or type(exc).__name__}; the rest of it is skipped")
        return
    if current is not None:
        yield _shard_sample(shard, current, files)


def iter_shards(shards: list[Path]) -> Iterator[Record | Skip]:
    """Every sample of every shard, in order; an id seen before in this run is skipped."""
    seen: set[str] = set()
    for shard in shards:
        for item in iter_shard(shard):
            if isinstance(item, Record):
                if item.image_id in seen:
                    yield Skip(item.image_id, "duplicate id", f"{item.path} repeats it")
                    continue
                seen.add(item.image_id)
            yield item


def shards_name(source: str | Path) -> str:
    """A short name for the ``source`` metadata field: the shards' folder, or a lone shard's stem."""
    text = str(source)
    path = Path(text)
    if ("{" in text and "}" in text) or path.is_dir():
        folder = path.parent if "{" in path.name else path
        return folder.resolve().name or "shards"
    return path.name.split(".")[0]


# ---------------------------------------------------------------- precomputed vectors


@dataclass
class VectorBatch:
    ids: list[str]
    lat: list[float]
    lon: list[float]
    vectors: np.ndarray  # float32 (n, dim)


@dataclass
class VectorSource:
    """Precomputed vectors: their dimension, their row count, and batches of valid rows."""

    path: Path
    dim: int
    total: int
    batches: Iterator[VectorBatch | Skip]


def _valid_rows(
    ids, lats, lons, vectors: np.ndarray, where: str, first_row: int, skipped: np.ndarray | None = None
) -> Iterator[VectorBatch | Skip]:
    """One batch of the rows that pass, after a ``Skip`` for each row that does not.

    Rows marked in ``skipped`` were already reported by the caller and are left out silently.
    """
    good = []
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], vectors, 0.0), axis=1)
    for i, (id_, la, lo) in enumerate(zip(ids, lats, lons, strict=True)):
        row = first_row + i
        image_id = "" if id_ is None else str(id_).strip()
        if skipped is not None and skipped[i]:
            continue
        if not image_id:
            yield Skip(f"row {row}", "missing id", f"{where} row {row} has no id")
        elif (reason := check_latlon(la, lo)[1]):
            yield Skip(image_id, "bad coordinates", f"{where} row {row}: {reason}")
        elif not finite[i]:
            yield Skip(image_id, "bad vector", f"{where} row {row}: the vector holds NaN or infinity")
        elif norms[i] == 0.0:
            yield Skip(image_id, "bad vector", f"{where} row {row}: the vector is all zeros")
        else:
            good.append(i)
    if good:
        keep = np.asarray(good)
        yield VectorBatch(
            [str(ids[i]).strip() for i in good],
            [float(lats[i]) for i in good],
            [float(lons[i]) for i in good],
            np.ascontiguousarray(vectors[keep], dtype=np.float32),
        )


def _read_parquet(path: Path, batch_rows: int) -> VectorSource:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise SourceError(f"{path} is Parquet: pip install pyarrow to read it") from exc
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{path} is not a readable Parquet file: {exc}") from exc
    columns = list(pf.schema_arrow.names)
    picked = [_pick(columns, n) for n in (ID_COLUMNS, LAT_COLUMNS, LON_COLUMNS, VECTOR_COLUMNS)]
    if not all(picked):
        raise SourceError(
            f"{path} needs id, lat, lon and vector columns (e.g. id,lat,lon,vector); it has: "
            f"{', '.join(columns) or 'none'}"
        )
    id_col, lat_col, lon_col, vec_col = picked
    vec_type = pf.schema_arrow.field(vec_col).type
    if isinstance(vec_type, pa.FixedSizeListType):
        dim = vec_type.list_size
    elif isinstance(vec_type, pa.ListType | pa.LargeListType) and pf.metadata.num_rows:
        first = next(pf.iter_batches(batch_size=1, columns=[vec_col])).column(0)
        dim = len(first[0].as_py() or [])
    else:
        raise SourceError(f"{path}: column {vec_col!r} is {vec_type}, not a list of numbers")

    def batches() -> Iterator[VectorBatch | Skip]:
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, columns=[id_col, lat_col, lon_col, vec_col]):
                vec = batch.column(vec_col)
                n = len(vec)
                lengths = pc.fill_null(pc.list_value_length(vec), -1).to_numpy(zero_copy_only=False)
                matrix = np.full((n, dim), np.nan, np.float32)
                ok = lengths == dim
                if ok.any():
                    flat = pc.list_flatten(vec.filter(pa.array(ok))).to_numpy(zero_copy_only=False)
                    matrix[ok] = np.asarray(flat, np.float32).reshape(-1, dim)
                ids = batch.column(id_col).to_pylist()
                lats, lons = batch.column(lat_col).to_pylist(), batch.column(lon_col).to_pylist()
                for i in np.flatnonzero(~ok):
                    yield Skip(str(ids[i]), "bad vector", f"{path} row {row + i}: {max(int(lengths[i]), 0)} values, not {dim}")
                yield from _valid_rows(ids, lats, lons, matrix, str(path), row, skipped=~ok)
                row += n
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"{path}: cannot read row {row} on: {exc}") from exc

    return VectorSource(path, dim, pf.metadata.num_rows, batches())


def _read_npy(path: Path, ids_csv: Path | None, batch_rows: int) -> VectorSource:
    if ids_csv is None:
        raise SourceError(f"{path} is a .npy matrix: give its CSV of id,lat,lon as SOURCE")
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path} is not a readable .npy matrix: {exc}") from exc
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise SourceError(f"{path} holds a {matrix.dtype} array of shape {matrix.shape}, not (rows, dim) numbers")
    table = read_csv(ids_csv, "ids CSV")
    cols = [table.column(names, field) for names, field in
            ((ID_COLUMNS, "id"), (LAT_COLUMNS, "latitude"), (LON_COLUMNS, "longitude"))]
    rows = [(r.get(cols[0]), r.get(cols[1]), r.get(cols[2])) for r in table.rows()]
    if len(rows) != len(matrix):
        raise SourceError(f"{ids_csv} has {len(rows)} rows but {path} has {len(matrix)} vectors: they must match row for row")

    def batches() -> Iterator[VectorBatch | Skip]:
        for start in range(0, len(rows), batch_rows):
            part = rows[start : start + batch_rows]
            ids, lats, lons = (list(c) for c in zip(*part, strict=True))
            yield from _valid_rows(ids, lats, lons, np.asarray(matrix[start : start + len(part)], np.float32), str(path), start)

    return VectorSource(path, int(matrix.shape[1]), len(rows), batches())


def read_vectors(path: str | Path, ids_csv: str | Path | None = None, batch_rows: int = 5000) -> VectorSource:
    """Precomputed vectors from Parquet (id, lat, lon, vector) or ``.npy`` + CSV of id,lat,lon."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"--vectors {path} is not a file")
    if path.suffix.lower() == ".npy":
        return _read_npy(path, Path(ids_csv) if ids_csv is not None else None, batch_rows)
    if ids_csv is not None:
        raise SourceError(f"--vectors {path} is Parquet: it holds its own ids, give no SOURCE")
    return _read_parquet(path, batch_rows)
