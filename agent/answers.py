"""Reading the model's structured answer: validated, never silently turned into (0, 0).

The model is asked for ``{clues: [...], candidates: [{latitude, longitude, place,
confidence}], reasoning}``. ``parse_answer`` accepts that object (also inside a
code fence or surrounded by prose) and raises ``AnswerInvalid`` with a reason
the model can be told when it re-asks, or ``AnswerRefused`` when the model
declined.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from rag_store.coords import CoordinateError, to_latlon

from .geo import country_code
from .prediction import Candidate
from .replies import fenced_block, find_json_object

MAX_CANDIDATES = 5
_REFUSAL = re.compile(
    r"\b(i can(?:no|')t|i cannot|i am unable|i'm unable|i am not able|i'm not able|"
    r"unable to (?:determine|identify|help)|i won't|i will not|sorry)\b",
    re.IGNORECASE,
)


class AnswerInvalid(ValueError):
    """The reply is not a usable answer; the message says why (it is shown to the model)."""


class AnswerRefused(ValueError):
    """The model declined to answer."""


@dataclass
class ParsedAnswer:
    candidates: list[Candidate]
    clues: list[str] = field(default_factory=list)
    reasoning: str = ""
    country: str = ""  # the country as the model named it (LLMGeo answers)
    country_code: str = ""  # ISO 3166 alpha-2 of ``country``; "" when none or unknown


def _first_json_object(text: str) -> dict:
    # A fenced ```json block first (models often add prose around it), then the whole text.
    for chunk in (fenced_block(text), text):
        if chunk and (obj := find_json_object(chunk)) is not None:
            return obj
    raise AnswerInvalid("the reply holds no JSON object")


def _number(value: object, what: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or value is None:
        raise AnswerInvalid(f"{what} must be a number, got {value!r}")
    try:
        x = float(value)  # numbers given as strings are accepted
    except (TypeError, ValueError, OverflowError):
        raise AnswerInvalid(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x) or not lo <= x <= hi:
        raise AnswerInvalid(f"{what} must be within {lo:g}..{hi:g}, got {value!r}")
    return x


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pick(obj: dict, *names: str) -> object:
    return next((obj[n] for n in names if n in obj), None)


def parse_answer(text: str, refusal: str | None = None, *, country: bool = False) -> ParsedAnswer:
    """Validate a model reply into candidates, clues and reasoning.

    With ``country`` (LLMGeo's task) the answer is a named country and candidates are
    optional; a country that cannot be recognised is kept as "" (scored as a miss).
    """
    if refusal:
        raise AnswerRefused(refusal)
    if not text or not text.strip():
        raise AnswerInvalid("the reply is empty")
    try:
        obj = _first_json_object(text)
    except AnswerInvalid:
        if _REFUSAL.search(text) and len(text) < 600:
            raise AnswerRefused(text.strip()[:300]) from None
        raise
    raw = obj.get("candidates")
    if raw is None and _pick(obj, "latitude", "lat") is not None:
        raw = [obj]  # a single flat answer
    named = _pick(obj, "country", "country_name")
    named = str(named).strip() if isinstance(named, str | int | float) and not isinstance(named, bool) else ""
    if country and raw is None:
        raw = []
    if not isinstance(raw, list):
        raise AnswerInvalid('"candidates" must be a list of {latitude, longitude, place, confidence}')
    if not raw and not (country and named):
        if country:
            raise AnswerInvalid('"country" must name the country the photo was taken in')
        reason = str(obj.get("reasoning") or "no candidates given")
        raise AnswerRefused(reason[:300])
    candidates, placeholders = [], []
    for i, item in enumerate(raw[:MAX_CANDIDATES]):
        if not isinstance(item, dict):
            raise AnswerInvalid(f"candidate {i + 1} must be an object, got {_short(item)}")
        try:
            lat, lon = to_latlon(_pick(item, "latitude", "lat"), _pick(item, "longitude", "lon", "lng"))
        except CoordinateError as exc:
            if exc.kind == "missing coordinates":
                # (0, 0) or no coordinates: a placeholder, not a location. Dropped; if
                # nothing else is left the model declined or failed (below), never "ok at (0, 0)".
                placeholders.append(f"candidate {i + 1}: {exc}")
                continue
            raise AnswerInvalid(f"candidate {i + 1}: {exc}") from None
        conf_raw = _pick(item, "confidence", "probability")
        confidence = None
        if conf_raw is not None:
            confidence = _number(conf_raw, f"candidate {i + 1} confidence", 0.0, 100.0)
            if confidence > 1.0:  # a percentage
                confidence /= 100.0
        place = _pick(item, "place", "location", "name")
        candidates.append(
            Candidate(lat, lon, place=str(place) if place is not None else "", confidence=confidence)
        )
    if not candidates and not (country and named):  # LLMGeo: a named country is the answer
        reason = "; ".join(placeholders)
        if _REFUSAL.search(text) or _REFUSAL.search(str(obj.get("reasoning") or "")):
            raise AnswerRefused(f"{str(obj.get('reasoning') or text).strip()[:300]}")
        raise AnswerInvalid(f"no usable candidate ({reason}): give real coordinates of your best guess")
    clues = obj.get("clues") or []
    if isinstance(clues, str):
        clues = [clues]
    if not isinstance(clues, list):
        raise AnswerInvalid('"clues" must be a list of strings')
    return ParsedAnswer(
        candidates=candidates,
        clues=[str(c) for c in clues if str(c).strip()],
        reasoning=str(obj.get("reasoning") or ""),
        country=named,
        country_code=country_code(named) if named else "",
    )
