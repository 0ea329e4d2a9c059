"""What ``GeoAgent.locate`` returns: a ``Prediction`` with its candidates and provenance."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from rag_store.store import Neighbour

# ok: the model answered (or, with no model configured, retrieval / EXIF answered).
# fallback: the model refused, answered unusably or failed; coordinates come from retrieval.
# refused / unparseable / error: no coordinates at all.
Status = Literal["ok", "fallback", "refused", "unparseable", "error"]
Source = Literal["llm", "retrieval", "exif"]
ANSWERED: tuple[str, ...] = ("ok", "fallback")


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
    confidence: float | None = None
    reasoning: str = ""
    clues: list[Clue] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)
    negatives: list[Neighbour] = field(default_factory=list)
    model: str | None = None
    model_outcomes: dict[str, int] = field(default_factory=dict)  # per model sample
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
        data = dict(data)
        data["clues"] = [Clue(**c) for c in data.get("clues", [])]
        data["candidates"] = [Candidate(**c) for c in data.get("candidates", [])]
        data["neighbours"] = [Neighbour(**n) for n in data.get("neighbours", [])]
        data["negatives"] = [Neighbour(**n) for n in data.get("negatives", [])]
        return cls(**data)
