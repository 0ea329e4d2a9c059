"""``geoagent locate`` over many photos: input expansion, and a predictions file that resumes.

``expand_inputs`` checks the inputs before anything heavy is imported, so that a missing
photo is reported at once. ``locate_to_file`` appends one row per photo as it finishes
(CSV or JSONL, by the file's suffix); a re-run with the same file skips the photos
already in it, so a stopped run continues where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag_store.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

    from .api import GeoAgent
    from .prediction import Prediction

# The CSV form: what a spreadsheet needs; JSONL holds the whole Prediction.
CSV_COLUMNS = ("image", "status", "latitude", "longitude", "place", "country_code", "confidence",
               "model_confidence", "source", "model_place", "llm_calls", "error")


def expand_inputs(items: Sequence[str]) -> list[str]:
    """Files as given, every photo inside a folder (recursively, sorted), URLs as given; no repeats."""
    if not items:
        raise InputError("give one or more PHOTOS: files, folders or http(s) URLs")
    found: list[str] = []
    for item in items:
        if "://" in item:
            found.append(item)  # the scheme is checked (http/https only) when it is read
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            from rag_store.images import IMAGE_SUFFIXES

            photos = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not photos:
                raise InputError(f"no photos in folder {item} (looked for {' '.join(IMAGE_SUFFIXES)})")
            found += photos
        elif path.is_file():
            found.append(item)
        elif path.exists():
            raise InputError(f"not a file or folder: {item}")
        else:
            raise InputError(f"photo not found: {item}")
    return list(dict.fromkeys(found))


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise InputError(f"--out must end in .csv or .jsonl, not {path.name!r}")


def done_images(path: Path) -> set[str]:
    """The photos a predictions file already holds; a half-written last line is cut off first."""
    if not path.is_file():
        return set()
    try:
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # a kill mid-write: that row is redone
            data = data[: data.rfind(b"\n") + 1]
            path.write_bytes(data)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path} to resume it: {exc}") from None
    if _format(path) == "csv":
        rows = csv.DictReader(io.StringIO(text))
        if text and (rows.fieldnames is None or "image" not in rows.fieldnames):
            raise InputError(f"{path} is not a geoagent predictions CSV (no 'image' column): use another --out")
        return {row["image"] for row in rows if row.get("image")}
    images = set()
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                images.add(str(json.loads(line)["image"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{path}:{n} is not a geoagent prediction: use another --out") from None
    return images


def prediction_row(p: Prediction) -> dict[str, Any]:
    data = p.to_dict()
    return {c: ("" if data.get(c) is None else data.get(c)) for c in CSV_COLUMNS}


@dataclass
class BatchSummary:
    path: Path
    total: int
    skipped: int
    predictions: list[Prediction] = field(default_factory=list)

    def line(self) -> str:
        missed = sum(1 for p in self.predictions if not p.answered)
        return (f"wrote {len(self.predictions)} predictions to {self.path}"
                + (f" ({self.skipped} already there, skipped)" if self.skipped else "")
                + (f"; {missed} without an answer" if missed else ""))


def locate_to_file(agent: GeoAgent, inputs: Sequence[str], path: str | Path, console: Console | None = None) -> BatchSummary:
    """Locate ``inputs`` not yet in ``path``, appending each prediction as it finishes."""
    path = Path(path)
    kind = _format(path)
    done = done_images(path)
    todo = [i for i in inputs if i not in done]
    summary = BatchSummary(path, len(inputs), len(inputs) - len(todo))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.is_file() or path.stat().st_size == 0
        fh = path.open("a", encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    writer = csv.DictWriter(fh, CSV_COLUMNS) if kind == "csv" else None
    if writer is not None and fresh:
        writer.writeheader()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("locate"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), console=console, transient=False, disable=console is None)

    def write(index: int, p: Prediction) -> None:
        p.image = todo[index]  # the name as given, so that a re-run recognises it
        if writer is not None:
            writer.writerow(prediction_row(p))
        else:
            fh.write(p.to_json() + "\n")
        fh.flush()
        summary.predictions.append(p)
        bar.advance(task)

    with bar:
        task = bar.add_task("locate", total=len(inputs), completed=summary.skipped)
        try:
            agent.locate_many(todo, on_done=write)
        except KeyboardInterrupt:
            bar.stop()
            if console is not None:
                console.print(f"stopped: {summary.skipped + len(summary.predictions)} of {len(inputs)} photos are "
                              f"in {path}; run the same command again to continue", highlight=False, soft_wrap=True)
            raise
        finally:
            fh.close()
    return summary
