"""What ``GeoAgent.locate`` returns: a ``Prediction`` with its candidates and provenance."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # numpy and the store load only when a Prediction is read back
    from rag_store.store import Neighbour

# ok: the model answered (or, with no model configured, retrieval / EXIF answered).
# fallback: the model refused, answered unusably or failed; coordinates come from retrieval.
# refused / unparseable / error: no coordinates at all.
Status = Literal["ok", "fallback", "refused", "unparseable", "error"]
Source = Literal["llm", "retrieval", "exif"]
ANSWERED: tuple[str, ...] = ("ok", "fallback")

# The one meaning of ``Prediction.confidence``: printed on the card, in ``--help``, in the
# README and in ``json_schema()``. Computed in ``agent.chain.answer`` (``evidence_agreement``).
AGREEMENT_KM = 750.0
CONFIDENCE_MEANING = (
    "confidence (0-1) is the share of the evidence within 750 km of the answer: the gallery "
    "neighbours weighted by similarity and the model calls asked (one that gave no answer counts "
    "against), half each when both exist, or 1 for EXIF GPS."
)


@dataclass
class Candidate:
    """One candidate location, where it came from, and its verification score."""

    latitude: float
    longitude: float
    place: str = ""
    confidence: float | None = None  # the model's own confidence, 0..1
    origin: str = "llm"  # llm | gps-gallery | neighbours | exif | gallery-match
    score: float | None = None  # verification score; higher is better
    votes: int = 1  # how many model samples proposed it (merged within a few km)


@dataclass
class Clue:
    text: str
    source: str = "image"  # image | exif


@dataclass
class Prediction:
    latitude: float | None
    longitude: float | None
    status: Status
    source: Source | None = None
    place: str = ""
    country: str = ""
    country_code: str = ""
    region: str = ""
    city: str = ""
    confidence: float | None = None  # CONFIDENCE_MEANING
    model_confidence: float | None = None  # the model's own stated figure for the answer, 0..1
    model_place: str = ""  # the answer's place in the model's own words
    reasoning: str = ""
    clues: list[Clue] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)
    negatives: list[Neighbour] = field(default_factory=list)
    model: str | None = None
    model_outcomes: dict[str, int] = field(default_factory=dict)  # per model sample
    # One entry per model call: variant, sample, outcome, detail, prompt (text), reply (raw).
    transcript: list[dict] = field(default_factory=list)
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per chain step
    verification: str = ""  # geoclip | neighbours | none | exif | exact-match
    error: str | None = None
    image: str = ""
    completions: int = 0  # model replies received (a request may return several: `n`)
    # The gallery id of a copy of this very photo, whose coordinates are the answer (locate).
    exact_match: str | None = None
    # Gallery entries left out as this photo itself (benchmark runs; see SelfMatch).
    excluded_self_matches: int = 0
    # LLMGeo configs: the ISO 3166 alpha-2 code of the country the model named ("" = none or
    # unknown); None when the config does not ask for a country.
    answer_country: str | None = None

    @property
    def answered(self) -> bool:
        return self.status in ANSWERED and self.latitude is not None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> Prediction:
        # Fields a newer version added are dropped, so that old and new records both load.
        from rag_store.store import Neighbour

        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["clues"] = [Clue(**c) for c in data.get("clues", [])]
        data["candidates"] = [Candidate(**c) for c in data.get("candidates", [])]
        data["neighbours"] = [Neighbour(**n) for n in data.get("neighbours", [])]
        data["negatives"] = [Neighbour(**n) for n in data.get("negatives", [])]
        return cls(**data)


FIELD_HELP = {
    "latitude": "answer latitude, decimal degrees (WGS-84); null when there is no answer",
    "longitude": "answer longitude, decimal degrees (WGS-84); null when there is no answer",
    "status": "ok | fallback (model failed, coordinates from retrieval) | refused | unparseable | error",
    "source": "where the coordinates came from: llm | retrieval | exif",
    "place": "the answer's place, reverse-geocoded offline (GeoNames): city, region, country",
    "model_place": "the answer's place in the model's own words",
    "confidence": CONFIDENCE_MEANING,
    "model_confidence": "the model's own stated confidence for the answer, 0-1 (not calibrated)",
    "exact_match": "id of the gallery entry holding this very photo (same file), whose coordinates are the answer",
    "excluded_self_matches": "gallery entries left out as this photo itself (benchmark runs)",
    "candidates": "every candidate scored by verification: latitude, longitude, place, origin, score, votes",
    "neighbours": "the most similar gallery photos: image_id, lat, lon, similarity",
    "model_outcomes": "model calls by outcome: ok, refused, unparseable, error",
    "transcript": "one entry per model call: variant, sample, outcome, detail, prompt text, raw reply",
}


def json_schema() -> dict:
    """A JSON Schema (draft 2020-12) of ``Prediction.to_dict()``, with each field's meaning."""
    import typing

    kinds = {float: "number", int: "integer", str: "string", bool: "boolean", list: "array", dict: "object"}
    properties = {}
    from rag_store.store import Neighbour

    hints = typing.get_type_hints(Prediction, localns={"Neighbour": Neighbour})
    for f in fields(Prediction):
        hint = hints[f.name]
        nullable = type(None) in typing.get_args(hint)
        if nullable:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is Literal:
            spec: dict = {"enum": [*typing.get_args(hint), *([None] if nullable else [])]}
        else:
            kind = kinds.get(typing.get_origin(hint) or hint, "object")
            spec = {"type": [kind, "null"] if nullable else kind}
        if f.name in FIELD_HELP:
            spec["description"] = FIELD_HELP[f.name]
        if f.name in ("confidence", "model_confidence"):
            spec.update(minimum=0, maximum=1)
        properties[f.name] = spec
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "geoagent Prediction",
        "type": "object",
        "properties": properties,
        "required": ["latitude", "longitude", "status"],
    }
