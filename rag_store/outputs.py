"""Output files, in one place: maps, reports, transcripts, score and metrics files, errors CSVs.

Every file geoagent writes goes through ``write_output`` (whole files) or ``open_output``
(files written as they grow, like the index errors CSV). Both create missing parent
folders and turn any ``OSError`` (read-only folder, full disk, a folder in the way) into
one ``OutputError`` line naming the path. ``write_output`` is atomic: the text goes to a
temporary file beside the target, which then replaces it, so a reader never sees half a
report and a failed write leaves the previous file as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import OutputError


def _fail(path: Path, what: str, exc: OSError) -> OutputError:
    return OutputError(f"cannot write {what} {path}: {exc.strerror or exc}")


def write_output(path: str | Path, data: str | bytes, *, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically (parents created); ``OutputError`` on failure."""
    path = Path(path).expanduser()
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise _fail(path, what, exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def check_writable(path: str | Path, *, what: str = "file") -> Path:
    """Refuse, before any work is done, an output path that could not be created.

    Creates nothing: the nearest existing ancestor must be a writable folder, and the
    path itself, when it exists, a writable file.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a folder")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise OutputError(f"cannot write {what} {path}: permission denied")
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {path}: permission denied in {parent}")
    return path


@contextlib.contextmanager
def open_output(path: str | Path, *, what: str = "file", newline: str | None = None) -> Iterator[IO[str]]:
    """A text file opened for writing (parents created); ``OutputError`` when it cannot be.

    For files written line by line while a command runs; an ``OSError`` while writing is
    turned into ``OutputError`` too.
    """
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = path.open("w", encoding="utf-8", newline=newline)
    except OSError as exc:
        raise _fail(path, what, exc) from None
    try:
        with fh:
            yield fh
    except OSError as exc:
        raise _fail(path, what, exc) from None


__all__ = ["check_writable", "open_output", "write_output"]
