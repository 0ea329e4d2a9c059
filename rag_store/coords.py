"""Coordinates, in one place: the ``LatLon`` type and the one validator every input goes through.

Model answers, EXIF GPS blocks, gallery CSV rows, truth and prediction files and stored
metadata all become a ``LatLon`` through ``to_latlon`` (raising ``CoordinateError``) or
``check_latlon`` (returning the reason), so they share one rule:

* each value is a finite number (a number, or a string holding one; never a bool);
* the latitude is within -90..90 and the longitude within -180..180 degrees;
* exactly (0, 0) is *missing*: "null island" is what failing systems, empty EXIF GPS
  blocks and placeholder rows write, not a place anyone photographs. Geometry code that
  must take any point (distances, densities) passes ``allow_null_island=True``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .errors import CoordinateError


class LatLon(NamedTuple):
    """A point in decimal degrees (WGS-84). A tuple: ``lat, lon = point`` works."""

    lat: float
    lon: float


NULL_ISLAND = "(0, 0) is a placeholder for a missing position, not a location"


# What spreadsheets and other systems write for "no value".
MISSING_WORDS = frozenset({"", "nan", "none", "null", "na", "n/a", "-"})


def _number(value: Any, what: str) -> float:
    if value is None or (isinstance(value, str) and value.strip().casefold() in MISSING_WORDS):
        raise CoordinateError(f"no {what}", "missing coordinates")
    if isinstance(value, bool):
        raise CoordinateError(f"{what} {value!r} is not a number")
    if isinstance(value, str):
        value = value.strip()
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise CoordinateError(f"{what} {_short(value)} is not a number") from None
    if not math.isfinite(x):
        raise CoordinateError(f"{what} {_short(value)} is not a finite number")
    return x


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def to_latlon(lat: Any, lon: Any, *, allow_null_island: bool = False) -> LatLon:
    """``LatLon`` of a latitude and a longitude, or ``CoordinateError`` naming what is wrong."""
    la = _number(lat, "latitude")
    lo = _number(lon, "longitude")
    if not -90.0 <= la <= 90.0:
        raise CoordinateError(f"latitude {_short(lat)} is outside -90..90")
    if not -180.0 <= lo <= 180.0:
        raise CoordinateError(f"longitude {_short(lon)} is outside -180..180")
    if la == 0.0 and lo == 0.0 and not allow_null_island:
        raise CoordinateError(NULL_ISLAND, "missing coordinates")
    return LatLon(la, lo)


def check_latlon(lat: Any, lon: Any, *, allow_null_island: bool = False) -> tuple[LatLon | None, str]:
    """``(point, "")`` for a usable pair, else ``(None, reason)``: for readers that skip bad rows."""
    try:
        return to_latlon(lat, lon, allow_null_island=allow_null_island), ""
    except CoordinateError as exc:
        return None, str(exc)


__all__ = ["MISSING_WORDS", "NULL_ISLAND", "CoordinateError", "LatLon", "check_latlon", "to_latlon"]
