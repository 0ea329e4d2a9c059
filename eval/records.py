"""The per-item record a benchmark run writes, one JSON object a line in ``RUN_DIR/results.jsonl``.

Modelled on Inspect AI's sample record. One record per item per config::

    {
      "config":  "img2loc-k16",                 # which system configuration answered
      "id":      "1019846234_5e471a10e2_1155_97522422@N00.jpg",
      "input":   "images/1019846234_....jpg",   # what was sent (path or URL); optional
      "target":  {"lat": 42.197, "lon": 44.693, # the truth; country / region / city are
                  "country": "GE", "region": "...", "city": "..."},  # optional (OSV-5M)
      "output":  {...} | null,                  # agent.prediction.Prediction.to_dict()
      "status":  "ok",                          # ok | fallback | refused | unparseable | error
      "scores":  {"distance_km": 12.3, "geoscore": 4958.9},       # optional, informative
      "timings": {"total_s": 3.2, ...},         # seconds; total_s is the item's latency
      "error":   null | "ModelUnavailable: connection refused"
    }

``status`` is the Prediction's status, or ``error`` when the item raised before a
Prediction existed (``output`` is then null and ``error`` says why). Items of the
truth set with no record for a config count as ``missing`` for it. Metrics are
recomputed from ``target`` and ``output``; ``scores`` is never trusted for them.

``RUN_DIR/run.json`` describes the run: ``{"dataset": "im2gps3k", ...}``; the dataset
name picks the published anchors shown beside the results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eval.metrics import STATUSES, ScoredItem
from rag_store.coords import check_latlon
from rag_store.errors import InputError

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"


def make_record(
    config: str,
    item_id: str,
    target: dict[str, Any],
    output: dict[str, Any] | None,
    *,
    input: str = "",
    timings: dict[str, float] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A results.jsonl record; ``output`` is ``Prediction.to_dict()`` or None on failure."""
    from agent.geo import great_circle_km
    from eval.metrics import geoscore

    status = output.get("status", "error") if output else "error"
    scores: dict[str, Any] = {}
    if output and status in ("ok", "fallback") and output.get("latitude") is not None:
        d = float(great_circle_km(target["lat"], target["lon"], output["latitude"], output["longitude"]))
        scores = {"distance_km": round(d, 3), "geoscore": round(float(geoscore(d)), 1)}
    return {
        "config": config,
        "id": str(item_id),
        "input": input,
        "target": dict(target),
        "output": output,
        "status": status,
        "scores": scores,
        "timings": dict(timings or {}),
        "error": error,
        # Gallery entries left out because they are this item's own photo (0: none in the gallery).
        "excluded_self_matches": int((output or {}).get("excluded_self_matches") or 0),
    }


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a results.jsonl file, checked for the fields metrics need."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"results file not found: {path}")
    records = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{line_no}: not JSON ({exc.msg})") from None
            _check_record(record, f"{path}:{line_no}")
            records.append(record)
    if not records:
        raise InputError(f"{path} holds no records")
    return records


def _check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise InputError(f"{where}: a record must be a JSON object")
    for key in ("config", "id", "target"):
        if key not in record:
            raise InputError(f"{where}: record has no {key!r} field")
    target = record["target"]
    if not isinstance(target, dict) or "lat" not in target or "lon" not in target:
        raise InputError(f"{where}: 'target' must be an object with 'lat' and 'lon'")
    _, reason = check_latlon(target["lat"], target["lon"], allow_null_island=True)  # truth: see eval.score
    if reason:
        raise InputError(f"{where}: target {reason}")
    output = record.get("output")
    if output is not None and not isinstance(output, dict):
        raise InputError(f"{where}: 'output' must be an object or null")
    status = record.get("status")
    if status is not None and status not in STATUSES:
        raise InputError(f"{where}: unknown status {status!r} (one of {', '.join(STATUSES)})")


def record_to_item(record: dict[str, Any]) -> ScoredItem:
    """The ``ScoredItem`` metrics need from one record."""
    target = record["target"]
    output = record.get("output") or None
    status = record.get("status") or (output.get("status") if output else "error")
    pred_lat = pred_lon = None
    if output and output.get("latitude") is not None and output.get("longitude") is not None:
        # An answer that is not a usable point (text, NaN, (0, 0)) is no answer: metrics
        # count an ok status without coordinates as unparseable.
        point, _ = check_latlon(output["latitude"], output["longitude"])
        if point is not None:
            pred_lat, pred_lon = point
    timings = record.get("timings") or {}
    latency = timings.get("total_s")
    if latency is None and output:
        latency = output.get("latency_s")
    return ScoredItem(
        item_id=str(record["id"]),
        truth_lat=float(target["lat"]),
        truth_lon=float(target["lon"]),
        pred_lat=pred_lat,
        pred_lon=pred_lon,
        status=status,
        truth_country=target.get("country"),
        truth_region=target.get("region"),
        truth_city=target.get("city"),
        model=output.get("model") if output else None,
        llm_calls=_number(output.get("llm_calls"), int) or 0 if output else 0,
        prompt_tokens=_number(output.get("prompt_tokens"), int) or 0 if output else 0,
        completion_tokens=_number(output.get("completion_tokens"), int) or 0 if output else 0,
        latency_s=_number(latency, float),
        excluded_self_matches=_number(record.get("excluded_self_matches"), int),
        answer_country=output.get("answer_country") if output else None,
    )


def _number(value: Any, kind: type) -> Any:
    """``kind(value)`` for a finite number, else None: a damaged count is not a crash."""
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return kind(x) if math.isfinite(x) and not isinstance(value, bool) else None


def items_by_config(records: Iterable[dict[str, Any]]) -> tuple[dict[str, list[ScoredItem]], dict[str, int]]:
    """Items per config (first-seen order) and, per config, how many records were superseded.

    A resumed run appends a new record for an item it retried: the last record of a
    (config, id) wins. Ids another config has but this one lacks are added as
    ``missing``, so that every config is scored over the same truth set.
    """
    targets: dict[str, dict[str, Any]] = {}
    per_config: dict[str, dict[str, ScoredItem]] = {}
    superseded: dict[str, int] = {}
    for record in records:
        item = record_to_item(record)
        config = str(record["config"])
        targets.setdefault(item.item_id, record["target"])
        items = per_config.setdefault(config, {})
        superseded.setdefault(config, 0)
        if item.item_id in items:
            superseded[config] += 1
        items[item.item_id] = item
    result = {}
    for config, items in per_config.items():
        for item_id, target in targets.items():
            if item_id not in items:
                items[item_id] = ScoredItem(
                    item_id=item_id,
                    truth_lat=float(target["lat"]),
                    truth_lon=float(target["lon"]),
                    status="missing",
                    truth_country=target.get("country"),
                    truth_region=target.get("region"),
                    truth_city=target.get("city"),
                )
        result[config] = [items[i] for i in targets]
    return result, superseded


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/run.json`` as a dict; empty when the file is absent."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object")
    return data
