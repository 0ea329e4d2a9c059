"""Score any system's predictions CSV against a truth CSV (``geoagent eval score``).

Predictions: an id column (``IMG_ID``, ``id``, ``image_id``...), latitude and longitude
(``LAT_pred`` / ``LON_pred``, ``lat`` / ``lon``, ``latitude`` / ``longitude``...), and
optionally ``success`` (true/false) or ``status`` (ok / fallback / refused / ...).
A row whose success is false, or whose status is not ok / fallback, is UNANSWERED
whatever coordinates it carries: failing systems often write (0, 0).

Truth: id, lat, lon and, optionally, ``country`` / ``region`` / ``city`` (OSV-5M), which
are then used for the truth side of country / region / city accuracy.

Every truth item is scored: one without a prediction row is a miss. Rows for ids not
in the truth are reported and ignored; of duplicate rows for one id the first is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.metrics import Metrics, ScoredItem, compute_metrics
from rag_store.coords import check_latlon
from rag_store.errors import InputError, SourceError
from rag_store.tables import (
    ID_COLUMNS,
    LAT_COLUMNS,
    LON_COLUMNS,
    PLACE_COLUMNS,
    PRED_LAT_COLUMNS,
    PRED_LON_COLUMNS,
    CsvTable,
    read_csv,
)

TRUE_WORDS = {"true", "t", "1", "yes", "y", "ok"}
FALSE_WORDS = {"false", "f", "0", "no", "n"}
# status words other systems write, mapped onto ours; anything else not ok is an error.
STATUS_WORDS = {
    "ok": "ok", "success": "ok", "succeeded": "ok", "answered": "ok", "done": "ok",
    "fallback": "fallback",
    "refused": "refused", "refusal": "refused",
    "unparseable": "unparseable", "parse_error": "unparseable", "invalid": "unparseable",
}
SHOW_IDS = 5  # ids quoted per kind of problem


@dataclass
class TruthRow:
    item_id: str
    lat: float
    lon: float
    country: str | None = None
    region: str | None = None
    city: str | None = None


@dataclass
class PredictionRow:
    item_id: str
    lat: float | None
    lon: float | None
    status: str  # ok | fallback | refused | unparseable | error
    line: int
    invalid: str = ""  # why the coordinates were unusable, when they were


@dataclass
class ScoreResult:
    """The metrics, and what happened to every row on the way."""

    metrics: Metrics
    predictions: str
    truth: str
    n_rows: int  # data rows in the predictions file
    n_answered: int
    n_failed: int  # rows for truth items without usable coordinates
    n_invalid: int  # of which: said ok but coordinates missing or out of range
    n_missing: int  # truth items without a row
    n_extra: int  # rows for ids not in the truth (ignored)
    n_duplicates: int  # later rows for an id already seen (ignored)
    extra_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    invalid_rows: list[str] = field(default_factory=list)

    def counts_table(self) -> str:
        """The row accounting printed above the metrics."""
        lines = [
            f"predictions  {self.predictions}: {self.n_rows} rows",
            f"truth        {self.truth}: {self.metrics.n_items} items (the denominator of every accuracy)",
            f"answered {self.n_answered} | failed {self.n_failed} | missing {self.n_missing} "
            f"| extra {self.n_extra} (ignored) | duplicates {self.n_duplicates} (first kept)",
        ]
        if self.n_invalid:
            lines.append(f"failed rows with unusable coordinates: {self.n_invalid}, e.g. {'; '.join(self.invalid_rows)}")
        if self.extra_ids:
            lines.append(f"ids not in the truth, e.g. {', '.join(self.extra_ids)}")
        if self.duplicate_ids:
            lines.append(f"duplicated ids, e.g. {', '.join(self.duplicate_ids)}")
        return "\n".join(lines)

    def table(self) -> str:
        return self.counts_table() + "\n\n" + self.metrics.table()

    def to_dict(self) -> dict[str, Any]:
        return {
            "predictions": self.predictions,
            "truth": self.truth,
            "counts": {
                "rows": self.n_rows,
                "truth_items": self.metrics.n_items,
                "answered": self.n_answered,
                "failed": self.n_failed,
                "invalid_coordinates": self.n_invalid,
                "missing": self.n_missing,
                "extra": self.n_extra,
                "duplicates": self.n_duplicates,
            },
            "extra_ids": self.extra_ids,
            "duplicate_ids": self.duplicate_ids,
            "invalid_rows": self.invalid_rows,
            "metrics": self.metrics.to_dict(),
        }


def _table(path: Path, what: str) -> CsvTable:
    try:
        return read_csv(path, what)
    except SourceError as exc:
        raise InputError(str(exc)) from None


def read_truth(path: str | Path) -> list[TruthRow]:
    """The truth set; any bad row is an error (a truth set must be clean)."""
    path = Path(path)
    table = _table(path, "truth")
    id_col = table.column(ID_COLUMNS, "id")
    lat_col = table.column(LAT_COLUMNS, "latitude")
    lon_col = table.column(LON_COLUMNS, "longitude")
    optional = {k: table.column((k,), k, required=False) for k in PLACE_COLUMNS}
    truth, seen = [], set()
    for row in table.rows():
        item_id = row.get(id_col)
        if not item_id:
            raise InputError(f"{path}:{row.line}: empty {id_col}")
        if item_id in seen:
            raise InputError(f"{path}:{row.line}: id {item_id!r} appears twice in the truth")
        seen.add(item_id)
        # A truth set is curated: (0, 0) there is a point (a photo in the Gulf of Guinea),
        # unlike in answers, EXIF and gallery rows, where it stands for "no position".
        point, reason = check_latlon(row.get(lat_col), row.get(lon_col), allow_null_island=True)
        if point is None:
            raise InputError(f"{path}:{row.line}: truth coordinates of {item_id!r} are unusable: {reason}")
        truth.append(TruthRow(item_id, point.lat, point.lon, **{k: row.get(c) or None if c else None for k, c in optional.items()}))
    if not truth:
        raise InputError(f"truth file {path} has a header but no rows")
    return truth


def read_predictions(path: str | Path) -> list[PredictionRow]:
    """Every row of a predictions file, with its status (duplicates kept: matching decides)."""
    path = Path(path)
    table = _table(path, "predictions")
    id_col = table.column(ID_COLUMNS, "id")
    lat_col = table.column(PRED_LAT_COLUMNS, "latitude")
    lon_col = table.column(PRED_LON_COLUMNS, "longitude")
    success_col = table.column(("success",), "success", required=False)
    status_col = table.column(("status",), "status", required=False)
    result = []
    for row in table.rows():
        item_id = row.get(id_col)
        if not item_id:
            raise InputError(f"{path}:{row.line}: empty {id_col}")
        status = "ok"
        if success_col is not None:
            word = row.get(success_col).casefold()
            if word in FALSE_WORDS:
                status = "error"
            elif word and word not in TRUE_WORDS:
                raise InputError(f"{path}:{row.line}: success value {row.get(success_col)!r} is neither true nor false")
        if status_col is not None and status == "ok" and row.get(status_col):
            status = STATUS_WORDS.get(row.get(status_col).casefold(), "error")
        point, reason = check_latlon(row.get(lat_col), row.get(lon_col))
        invalid = ""
        if status in ("ok", "fallback") and point is None:
            # Said it answered, but (0, 0), NaN, out of range or blank: not an answer.
            invalid, status = reason, "unparseable"
        result.append(PredictionRow(
            item_id, point.lat if point else None, point.lon if point else None, status, row.line, invalid
        ))
    if not result:
        raise InputError(f"predictions file {path} has a header but no rows")
    return result


def _stem(item_id: str) -> str:
    return item_id.rsplit(".", 1)[0] if "." in item_id else item_id


def score(
    predictions: str | Path,
    truth: str | Path,
    *,
    geography: bool = True,
    n_resamples: int = 1000,
    seed: int = 0,
) -> ScoreResult:
    """Score a predictions CSV against a truth CSV; every truth item counts."""
    truth_rows = read_truth(truth)
    pred_rows = read_predictions(predictions)
    by_id = {t.item_id: t for t in truth_rows}
    # "123" in one file and "123.jpg" in the other (OSV-5M ids vs file names) still
    # match, through the id without its extension when that is unambiguous.
    stems: dict[str, str | None] = {}
    for t in truth_rows:
        stems[_stem(t.item_id)] = None if _stem(t.item_id) in stems else t.item_id

    chosen: dict[str, PredictionRow] = {}
    extra, duplicates = [], []
    for row in pred_rows:
        item_id = row.item_id if row.item_id in by_id else stems.get(row.item_id) or stems.get(_stem(row.item_id))
        if item_id is None:
            extra.append(row.item_id)
        elif item_id in chosen:
            duplicates.append(row.item_id)
        else:
            chosen[item_id] = row

    if not chosen:
        # Every item would score as a miss: almost always the wrong file or id column.
        raise InputError(
            f"no id in {predictions} matches an id in {truth} (e.g. {', '.join(extra[:3])} vs "
            f"{', '.join(t.item_id for t in truth_rows[:3])}): check the files and their id columns"
        )
    items = []
    for t in truth_rows:
        row = chosen.get(t.item_id)
        answered = row is not None and row.status in ("ok", "fallback")
        items.append(ScoredItem(
            item_id=t.item_id,
            truth_lat=t.lat,
            truth_lon=t.lon,
            pred_lat=row.lat if answered else None,
            pred_lon=row.lon if answered else None,
            status=row.status if row is not None else "missing",
            truth_country=t.country,
            truth_region=t.region,
            truth_city=t.city,
        ))
    metrics = compute_metrics(items, geography=geography, n_resamples=n_resamples, seed=seed)
    invalid = [r for r in chosen.values() if r.invalid]
    return ScoreResult(
        metrics=metrics,
        predictions=str(predictions),
        truth=str(truth),
        n_rows=len(pred_rows),
        n_answered=metrics.n_answered,
        n_failed=metrics.n_failed,
        n_invalid=len(invalid),
        n_missing=metrics.n_missing,
        n_extra=len(extra),
        n_duplicates=len(duplicates),
        extra_ids=extra[:SHOW_IDS],
        duplicate_ids=list(dict.fromkeys(duplicates))[:SHOW_IDS],
        invalid_rows=[f"line {r.line} {r.item_id}: {r.invalid}" for r in invalid[:SHOW_IDS]],
    )
