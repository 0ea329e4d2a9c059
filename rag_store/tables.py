"""CSV files, in one place: gallery sources, benchmark truth sets and prediction files.

``geoagent index``, ``geoagent eval run --dataset`` and ``geoagent eval score`` read
their CSVs here, so they accept the same files: the same column names (any case),
a byte-order mark (spreadsheets write one), comma, semicolon or tab as the delimiter
(sniffed from the first lines), and blank cells as empty strings. Anything that is
not a regular file (a folder, a FIFO, a device) is refused before it is opened:
reading a FIFO would block forever.
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceError

# Column names accepted for each field, lower-cased, most specific first.
# Im2GPS3k / YFCC4k: IMG_ID,LAT,LON; MP-16: IMG_ID,AUTHOR,LAT,LON; OSV-5M: id,latitude,longitude.
ID_COLUMNS = (
    "img_id", "image_id", "imgid", "id", "photo_id", "image", "img", "photo",
    "filename", "file", "name", "key",
)
LAT_COLUMNS = ("lat", "latitude", "gps_lat", "lat_true", "true_lat", "gt_lat", "lat_gt")
LON_COLUMNS = ("lon", "lng", "long", "longitude", "gps_lon", "lon_true", "true_lon", "gt_lon", "lon_gt")
# A predictions file may carry both its answer and the truth: the prediction columns win.
PRED_LAT_COLUMNS = ("lat_pred", "pred_lat", "latitude_pred", "pred_latitude", *LAT_COLUMNS)
PRED_LON_COLUMNS = ("lon_pred", "pred_lon", "longitude_pred", "pred_longitude", *LON_COLUMNS)
PLACE_COLUMNS = ("country", "region", "city")

SNIFF_CHARS = 8192  # the delimiter is guessed from the first lines only


@dataclass(frozen=True)
class CsvRow:
    line: int  # line number in the file (the header is line 1), for error messages
    values: dict[str, str]  # header name -> stripped cell ("" when the row is short)

    def get(self, column: str | None) -> str:
        return self.values.get(column, "") if column else ""


class CsvTable:
    """A CSV file's header, and its rows streamed on demand (``rows()``)."""

    def __init__(self, path: Path, what: str, header: list[str], dialect: type[csv.Dialect]):
        self.path = path
        self.what = what
        self.header = header
        self._dialect = dialect

    def column(self, names: Sequence[str], field: str, *, required: bool = True) -> str | None:
        """The header name matching one of ``names`` (case-insensitive), in the order given."""
        by_key = {h.strip().casefold(): h for h in self.header}
        for name in names:
            if name in by_key:
                return by_key[name]
        if required:
            raise SourceError(
                f"{self.what} {self.path} has no {field} column (looked for {', '.join(names)}; "
                f"it has: {', '.join(self.header) or 'no header'})"
            )
        return None

    def rows(self) -> Iterator[CsvRow]:
        """Every data row; a malformed file raises ``SourceError`` naming the line."""
        with _open_text(self.path, self.what) as fh:
            reader = csv.reader(fh, self._dialect)
            try:
                next(reader, None)  # the header, already read
                for cells in reader:
                    if not any(c.strip() for c in cells):
                        continue  # blank line
                    values = {h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(self.header)}
                    yield CsvRow(reader.line_num, values)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise SourceError(f"{self.what} {self.path} is not a readable CSV (line {reader.line_num}): {exc}") from None
            except OSError as exc:
                raise SourceError(f"cannot read {self.what} {self.path}: {exc.strerror or exc}") from None


def _check_file(path: Path, what: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SourceError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise SourceError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise SourceError(f"{what} {path} is a folder, not a CSV file")
    if not stat.S_ISREG(mode):
        raise SourceError(f"{what} {path} is not a regular file (a FIFO, socket or device): give a CSV file")


def _open_text(path: Path, what: str):
    _check_file(path, what)
    try:
        # utf-8-sig: a byte-order mark is dropped, not read into the first column name.
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise SourceError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_csv(path: str | Path, what: str = "CSV") -> CsvTable:
    """Open a CSV: check it is a regular UTF-8 file, sniff its delimiter, read its header.

    ``what`` names the file in messages ("gallery source", "truth", "predictions").
    """
    path = Path(path)
    with _open_text(path, what) as fh:
        try:
            head = fh.read(SNIFF_CHARS)
        except UnicodeDecodeError:
            raise SourceError(f"{what} {path} is not UTF-8 text (is it a CSV?)") from None
        except OSError as exc:
            raise SourceError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not head.strip():
        raise SourceError(f"{what} {path} is empty")
    if "\x00" in head:
        raise SourceError(f"{what} {path} is not text (is it a CSV?)")
    # Sniff complete lines only: a cut-off last line can fool the guess.
    sample = head[: head.rfind("\n") + 1] or head
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","

    class Dialect(csv.excel):
        pass

    Dialect.delimiter = delimiter
    try:
        header = next(csv.reader(sample.splitlines() or [head], Dialect), [])
    except csv.Error as exc:
        raise SourceError(f"{what} {path} is not a readable CSV (line 1): {exc}") from None
    header = [h.strip() for h in header]
    if not any(header):
        raise SourceError(f"{what} {path} has no header line")
    return CsvTable(path, what, header, Dialect)


__all__ = [
    "ID_COLUMNS",
    "LAT_COLUMNS",
    "LON_COLUMNS",
    "PLACE_COLUMNS",
    "PRED_LAT_COLUMNS",
    "PRED_LON_COLUMNS",
    "CsvRow",
    "CsvTable",
    "read_csv",
]
