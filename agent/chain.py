"""The locate chain: small async steps run in order over one ``ChainState``.

Like Inspect AI's solvers, each step takes the state and returns it, and records
its own time; the steps are composed as a LangChain ``RunnableSequence``::

    read_metadata | retrieve | ask_model | verify | answer

1. ``read_metadata``: EXIF GPS becomes a clue (and the answer) unless ``ignore_exif``.
2. ``retrieve``: k similar / k dissimilar gallery neighbours, GeoCLIP GPS-gallery candidates.
3. ``ask_model``: G3-style diversification, one prompt variant per neighbour count in
   ``settings.variants`` and ``settings.samples`` samples each; invalid JSON is re-asked once.
4. ``verify``: score the model's candidates plus the top retrieved coordinates, by GeoCLIP
   image-location similarity, or by agreement with the neighbours and the other samples.
5. ``answer``: the best candidate, reverse-geocoded, as a ``Prediction``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import numpy as np
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableLambda
from PIL import Image

from prompts import PromptTemplate, shared_part
from rag_store.encoders import Encoder
from rag_store.errors import ConfigError
from rag_store.gps_gallery import GpsCandidate, GpsGallery, location_similarity
from rag_store.images import load_image, read_exif_gps
from rag_store.store import Gallery, Neighbour, Retrieval, SelfMatch, file_sha256

from . import geo
from .answers import AnswerInvalid, AnswerRefused, ParsedAnswer, parse_answer
from .errors import ModelAuthError, ModelError, ModelTimeout, ModelUnavailable
from .llm import ModelClient, ModelReply
from .prediction import AGREEMENT_KM, Candidate, Clue, Prediction
from .settings import Settings

MERGE_KM = 10.0  # model candidates closer than this are one candidate with more votes
AGREEMENT_BANDWIDTH_KM = 200.0


@dataclass
class Resources:
    """What the steps use, loaded once per agent."""

    settings: Settings
    prompt: PromptTemplate
    encoder: Encoder | None = None
    gallery: Gallery | None = None
    gps_gallery: GpsGallery | None = None
    model: ModelClient | None = None
    examples: FewShot | None = None  # few-shot example photos from the gallery


@dataclass
class SampleAnswer:
    """One model sample: its outcome, and what it proposed when it answered."""

    variant: int
    sample: int
    outcome: str  # ok | refused | unparseable | error
    parsed: ParsedAnswer | None = None
    detail: str = ""
    reply: str = ""  # the model's last raw reply, for the per-item report
    prompt: str = ""  # the user prompt's text (the image part left out)


@dataclass
class ChainState:
    resources: Resources
    image: Image.Image
    raw: bytes | None = None  # the original file, for EXIF
    label: str = ""
    exclude_ids: frozenset[str] = frozenset()  # gallery ids that are this photo (benchmarks)
    exif_gps: tuple[float, float] | None = None
    exact_match: Neighbour | None = None  # a gallery copy of this very photo (locate only)
    embedding: np.ndarray | None = None
    retrieval: Retrieval = field(default_factory=lambda: Retrieval([], []))
    gps_candidates: list[GpsCandidate] = field(default_factory=list)
    samples: list[SampleAnswer] = field(default_factory=list)
    pool: list[Candidate] = field(default_factory=list)
    verification: str = "none"
    examples: list[Example] = field(default_factory=list)
    llm_calls: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    prediction: Prediction | None = None


def timed(name: str):
    """Wrap a step so that it records its wall time in ``state.timings[name]``."""

    def wrap(step):
        async def run(state: ChainState) -> ChainState:
            started = time.perf_counter()
            try:
                return await step(state)
            finally:
                state.timings[name] = round(time.perf_counter() - started, 4)

        run.__name__ = step.__name__
        return run

    return wrap


# ------------------------------------------------------------------ 1. metadata


@timed("metadata")
async def read_metadata(state: ChainState) -> ChainState:
    if state.resources.settings.ignore_exif:
        return state
    gps = read_exif_gps(state.raw if state.raw is not None else state.image)
    if gps is not None:
        state.exif_gps = gps
    return state


# ------------------------------------------------------------------ 2. retrieval


@timed("retrieval")
async def retrieve(state: ChainState) -> ChainState:
    res = state.resources
    settings = res.settings
    if state.exif_gps is not None or res.encoder is None:
        return state
    # Embedding is CPU-bound: off the event loop so that concurrent photos overlap with model I/O.
    state.embedding = (await asyncio.to_thread(res.encoder.embed, [state.image]))[0]
    if res.gallery is not None:
        k = max(settings.k, settings.pool_k if "neighbours" in settings.pool else 0)
        if settings.few_shot == "dynamic":
            k = max(k, settings.few_shot_k)
        # Benchmarks leave out the photo's own id, file and near-copies; locate answers from
        # the very same file only (a near-copy by embedding alone is a guess, not a match).
        exclude = settings.exclude_self_matches
        own = SelfMatch(
            image_ids=state.exclude_ids,
            sha256=file_sha256(state.raw) if state.raw is not None else None,
            min_cosine=settings.duplicate_cosine if exclude else None,
        )
        state.retrieval = await asyncio.to_thread(
            res.gallery.query, state.embedding, k,
            self_match=own, exclude=exclude,
        )
        if not exclude and state.retrieval.self_matches:
            # For a user the gallery's coordinates of this very photo are the answer.
            state.exact_match = state.retrieval.self_matches[0]
    if res.gps_gallery is not None:
        gps_k = max(settings.gps_k, settings.pool_k if "gps-gallery" in settings.pool else 0)
        if settings.references == "gps-gallery":
            gps_k = max(gps_k, *settings.variants)
        # A 100K x 512 product: off the loop too.
        state.gps_candidates = await asyncio.to_thread(res.gps_gallery.candidates, state.embedding, gps_k)
    return state


# ------------------------------------------------------------------ 3. model


def image_data_url(image: Image.Image, max_side: int) -> str:
    """The photo as a JPEG data URL, its longest side at most ``max_side``."""
    im = image.copy()
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _coords(neighbours: list[Neighbour]) -> str:
    return ", ".join(f"({n.lat:.4f}, {n.lon:.4f})" for n in neighbours) or "none"


def _gps_coords(candidates: list[GpsCandidate]) -> str:
    return ", ".join(f"({c.lat:.4f}, {c.lon:.4f}; p={c.probability:.3f})" for c in candidates) or "none"


def build_messages(
    prompt: PromptTemplate,
    retrieval: Retrieval,
    n_neighbours: int,
    data_url: str,
    *,
    answer: str = "coordinates",
    gps_candidates: list[GpsCandidate] | None = None,
    examples: list[Example] = (),  # type: ignore[assignment]
) -> list[BaseMessage]:
    """System + user message for one prompt variant with ``n_neighbours`` references.

    References are the gallery's most and least similar photos' coordinates, or, given
    ``gps_candidates``, GeoCLIP's most probable GPS-gallery coordinates. ``examples`` are
    sent as extra image parts after the photo, each labelled with its country.
    """
    if gps_candidates is not None:
        similar_text, n_similar = _gps_coords(gps_candidates[:n_neighbours]), len(gps_candidates[:n_neighbours])
        similar_part = "gps_references"
        dissimilar: list[Neighbour] = []
    else:
        similar = retrieval.positives[:n_neighbours]
        similar_text, n_similar, similar_part = _coords(similar), len(similar), "similar"
        dissimilar = retrieval.negatives[:n_neighbours]
    values = {
        "similar": similar_text,
        "dissimilar": _coords(dissimilar),
        "n_similar": n_similar,
        "n_dissimilar": len(dissimilar),
        "n_examples": len(examples),
        "max_candidates": 3,
    }
    values["similar_block"] = shared_part(similar_part).strip() if n_similar else ""
    values["dissimilar_block"] = shared_part("dissimilar").strip() if dissimilar else ""
    values["examples_block"] = shared_part("examples").strip() if examples else ""
    values["answer_format"] = shared_part(ANSWER_FORMATS[answer]).strip()
    # Shared parts carry $names themselves: render them with the same values first.
    for part in ("similar_block", "dissimilar_block", "examples_block", "answer_format"):
        values[part] = Template(values[part]).substitute(values)
    system, user = prompt.render(**values)
    user = "\n".join(line for line in user.splitlines() if line.strip())
    content: list[dict] = [
        {"type": "text", "text": user},
        {"type": "image_url", "image_url": {"url": data_url}},
    ]
    for i, example in enumerate(examples, 1):
        content += [
            {"type": "text", "text": f"Example {i}: this photo was taken in {example.country}."},
            {"type": "image_url", "image_url": {"url": example.data_url}},
        ]
    return [SystemMessage(content=system), HumanMessage(content=content)]


ANSWER_FORMATS = {"coordinates": "answer_format", "country": "answer_format_country"}


REASK = (
    "Your answer could not be used: {reason}. Answer again with only the JSON object "
    "in the required form."
)


def _parse(reply: ModelReply, answer: str) -> ParsedAnswer:
    return parse_answer(reply.content, reply.refusal, country=answer == "country")


def _count(state: ChainState, replies: list[ModelReply], requests: int) -> None:
    state.llm_calls += requests
    state.completions += sum(1 for r in replies if not r.cached)
    state.prompt_tokens += sum(r.prompt_tokens for r in replies)
    state.completion_tokens += sum(r.completion_tokens for r in replies)


async def _reask(state: ChainState, variant: int, sample: int, messages: list[BaseMessage],
                 reply: ModelReply, reason: AnswerInvalid) -> SampleAnswer:
    """The one second chance of an unusable reply: the model is told why and asked again."""
    res = state.resources
    assert res.model is not None
    messages = [*messages, AIMessage(content=reply.content), HumanMessage(content=REASK.format(reason=reason))]
    try:
        again = await res.model.complete(
            messages, temperature=res.settings.temperature, sample=sample, json_mode=res.settings.json_mode
        )
    except ModelTimeout as exc:
        return SampleAnswer(variant, sample, "error", detail=str(exc))
    except (ModelAuthError, ModelUnavailable):
        raise
    except ModelError as exc:
        return SampleAnswer(variant, sample, "error", detail=str(exc))
    _count(state, [again], 0 if again.cached else 1)
    return _outcome(variant, sample, again, res.settings.answer, final=True)


def _outcome(variant: int, sample: int, reply: ModelReply, answer: str, final: bool) -> SampleAnswer:
    text = reply.content or reply.refusal or ""  # the raw reply, for the per-item report
    try:
        return SampleAnswer(variant, sample, "ok", _parse(reply, answer), reply=text)
    except AnswerRefused as exc:
        return SampleAnswer(variant, sample, "refused", detail=str(exc), reply=text)
    except AnswerInvalid as exc:
        if final:
            return SampleAnswer(variant, sample, "unparseable", detail=str(exc), reply=text)
        raise


async def _ask_variant(state: ChainState, variant: int, messages: list[BaseMessage]) -> list[SampleAnswer]:
    """G3's sampling: ``samples`` replies to one prompt in one request (``n``), the first ``keep`` used."""
    res = state.resources
    settings = res.settings
    assert res.model is not None
    try:
        drawn = await res.model.sample(
            messages, temperature=settings.temperature, n=settings.samples, json_mode=settings.json_mode
        )
    except ModelTimeout as exc:
        return [SampleAnswer(variant, 0, "error", detail=str(exc))]
    except (ModelAuthError, ModelUnavailable):
        raise  # configuration problems: every call would fail the same way
    except ModelError as exc:
        return [SampleAnswer(variant, 0, "error", detail=str(exc))]
    _count(state, drawn.replies, drawn.requests)
    kept = drawn.replies[: settings.keep or len(drawn.replies)]
    answers = []
    for i, reply in enumerate(kept):
        try:
            answers.append(_outcome(variant, i, reply, settings.answer, final=False))
        except AnswerInvalid as exc:
            answers.append(await _reask(state, variant, i, messages, reply, exc))
    return answers


@timed("model")
async def ask_model(state: ChainState) -> ChainState:
    res = state.resources
    settings = res.settings
    if res.model is None or state.exif_gps is not None or state.exact_match is not None:
        return state
    # Resizing and JPEG/base64 encoding are CPU work: off the event loop, like embedding.
    data_url = await asyncio.to_thread(image_data_url, state.image, settings.max_side)
    if res.examples is not None:
        own = SelfMatch(state.exclude_ids, file_sha256(state.raw) if state.raw is not None else None, None)
        neighbours = state.retrieval.positives if settings.few_shot == "dynamic" else None
        state.examples = await asyncio.to_thread(res.examples.pick, neighbours, own)
    gps = state.gps_candidates if settings.references == "gps-gallery" else None
    prompts = [
        build_messages(res.prompt, state.retrieval, variant, data_url, answer=settings.answer,
                       gps_candidates=gps, examples=state.examples)
        for variant in settings.variants
    ]
    drawn = await asyncio.gather(
        *(_ask_variant(state, variant, messages) for variant, messages in zip(settings.variants, prompts, strict=True))
    )
    state.samples = []
    for messages, answers in zip(prompts, drawn, strict=True):
        text = messages[-1].content[0]["text"]  # the user prompt (images left out) for the per-item report
        for a in answers:
            a.prompt = text
            state.samples.append(a)
    return state


# ------------------------------------------------------------------ few-shot examples


@dataclass(frozen=True)
class Example:
    """A gallery photo shown to the model with its country (LLMGeo's few-shot prompts)."""

    image_id: str
    country: str
    data_url: str


class FewShot:
    """Example photos from the gallery: a fixed seeded set, one per country, or the nearest.

    LLMGeo's static prompt shows the same examples with every photo; its dynamic prompt
    shows the photo's nearest gallery photos. Photos are read from the path recorded at
    index time; the query's own photo is never one of its examples.
    """

    def __init__(self, gallery: Gallery, settings: Settings):
        self.gallery = gallery
        self.settings = settings
        self._static: list[dict] | None = None
        self._urls: dict[str, str] = {}

    def _static_order(self) -> list[dict]:
        """Gallery entries, one per country, in a seeded order (computed once)."""
        if self._static is None:
            metas = self.gallery.metadatas()
            places = geo.reverse_geocode([(float(m["lat"]), float(m["lon"])) for m in metas])
            by_country: dict[str, list[dict]] = {}
            for meta, place in sorted(zip(metas, places, strict=True), key=lambda mp: str(mp[0].get("image_id"))):
                if place.country_code:
                    by_country.setdefault(place.country_code, []).append(meta)
            rng = random.Random(self.settings.few_shot_seed)
            order = sorted(by_country)
            rng.shuffle(order)
            # Two per country, so that a country keeps an example when one is the query itself.
            self._static = [m for c in order for m in rng.sample(by_country[c], min(2, len(by_country[c])))]
        return self._static

    def pick(self, neighbours: list[Neighbour] | None, own: SelfMatch) -> list[Example]:
        k = self.settings.few_shot_k
        if neighbours is not None:
            metas = self.gallery.metadatas([n.image_id for n in neighbours[:k]])
        else:
            metas, seen = [], set()
            for meta in self._static_order():
                country = geo.reverse_geocode([(float(meta["lat"]), float(meta["lon"]))])[0].country_code
                if country in seen or own.matches(str(meta.get("image_id")), meta, -2.0):
                    continue
                seen.add(country)
                metas.append(meta)
                if len(metas) == k:
                    break
        places = geo.reverse_geocode([(float(m["lat"]), float(m["lon"])) for m in metas])
        return [
            Example(str(m.get("image_id")), p.country or "an unknown country", self._data_url(m))
            for m, p in zip(metas, places, strict=True)
        ]

    def _data_url(self, meta: dict) -> str:
        image_id = str(meta.get("image_id"))
        if image_id not in self._urls:
            path = meta.get("path")
            if not path:
                raise ConfigError(
                    f"gallery {self.gallery.name!r} records no photo path for {image_id!r} (built before "
                    f"few-shot prompts existed): index the source again into a new --collection"
                )
            self._urls[image_id] = image_data_url(load_image(Path(path)), self.settings.max_side)
        return self._urls[image_id]


# ------------------------------------------------------------------ 4. verification


def merge_candidates(samples: list[SampleAnswer]) -> list[Candidate]:
    """The model's candidates over all samples; near-duplicates merged, counting votes."""
    merged: list[Candidate] = []
    for s in samples:
        if s.parsed is None:
            continue
        for c in s.parsed.candidates:
            for m in merged:
                if geo.great_circle_km(m.latitude, m.longitude, c.latitude, c.longitude) <= MERGE_KM:
                    m.votes += 1
                    if c.confidence is not None and (m.confidence or 0) < c.confidence:
                        m.confidence = c.confidence
                    break
            else:
                merged.append(Candidate(c.latitude, c.longitude, c.place, c.confidence, "llm"))
    return merged


@timed("verification")
async def verify(state: ChainState) -> ChainState:
    res = state.resources
    settings = res.settings
    if state.exif_gps is not None:
        lat, lon = state.exif_gps
        state.pool = [Candidate(lat, lon, confidence=1.0, origin="exif", score=1.0)]
        state.verification = "exif"
        return state
    if state.exact_match is not None:
        m = state.exact_match
        state.pool = [Candidate(m.lat, m.lon, confidence=1.0, origin="gallery-match", score=1.0)]
        state.verification = "exact-match"
        return state
    pool = merge_candidates(state.samples)
    # G3's pool: the model's candidates and the top retrieved coordinate(s). GPS-gallery
    # coordinates are GeoCLIP's own argmax, so they win a GeoCLIP-scored pool by construction:
    # they enter only when `pool` asks for them.
    if "gps-gallery" in settings.pool:
        pool += [
            Candidate(g.lat, g.lon, confidence=g.probability, origin="gps-gallery")
            for g in state.gps_candidates[: settings.pool_k]
        ]
    if "neighbours" in settings.pool:
        pool += [
            Candidate(n.lat, n.lon, confidence=max(n.similarity, 0.0), origin="neighbours")
            for n in state.retrieval.positives[: settings.pool_k]
        ]
    method = settings.verification
    is_geoclip = res.encoder is not None and res.encoder.name.startswith("geoclip")
    if method == "auto":
        method = "geoclip" if is_geoclip else "neighbours"
    if method == "geoclip" and not is_geoclip:
        method = "neighbours"  # GeoCLIP verification needs GeoCLIP's image embedding
    points = np.array([(c.latitude, c.longitude) for c in pool], dtype=float).reshape(-1, 2)
    if not pool:
        scores = np.zeros(0)
    elif method == "geoclip":
        # G3: cosine between the image's GeoCLIP embedding and each candidate location's.
        scores = await asyncio.to_thread(location_similarity, state.embedding, points)
    elif method == "neighbours":
        neighbours = [(n.lat, n.lon, n.similarity) for n in state.retrieval.positives]
        llm = [
            (c.latitude, c.longitude, (c.confidence if c.confidence is not None else 0.5) * c.votes)
            for c in pool
            if c.origin == "llm"
        ]
        # Half agreement with the retrieved neighbours, half with the model's own samples.
        near = geo.neighbour_density(points, neighbours, AGREEMENT_BANDWIDTH_KM)
        scores = 0.5 * near + 0.5 * geo.neighbour_density(points, llm, AGREEMENT_BANDWIDTH_KM) if llm else near
    else:  # none: the model's most-voted, most confident candidate; retrieval as fallback
        scores = np.array(
            [
                (c.votes + (c.confidence or 0.0)) if c.origin == "llm" else -1.0 + (c.confidence or 0.0)
                for c in pool
            ]
        )
    for c, s in zip(pool, scores, strict=True):
        c.score = round(float(s), 6)
    state.pool = sorted(pool, key=lambda c: (c.score if c.score is not None else -np.inf), reverse=True)
    state.verification = method
    return state


# ------------------------------------------------------------------ 5. answer


def _model_status(samples: list[SampleAnswer]) -> tuple[str, str | None]:
    outcomes = Counter(s.outcome for s in samples)
    if outcomes["ok"]:
        return "ok", None
    worst = max(("error", "unparseable", "refused"), key=lambda o: outcomes[o])
    detail = next((s.detail for s in samples if s.outcome == worst), "")
    return worst, f"model {worst}: {detail}" if detail else f"model {worst}"


@timed("answer")
async def answer(state: ChainState) -> ChainState:
    res = state.resources
    settings = res.settings
    model_used = res.model is not None and state.exif_gps is None and state.exact_match is None
    status, error = "ok", None
    if model_used:
        status, error = _model_status(state.samples)
        if status != "ok":
            # Never (0, 0): either an honest retrieval answer, labelled as such, or no answer.
            state.pool = [c for c in state.pool if c.origin != "llm"]
            status = "fallback" if (settings.fallback == "retrieval" and state.pool) else status
    elif not state.pool:
        status, error = "error", "nothing to answer from: the gallery is empty and no model is configured"
    best = state.pool[0] if state.pool and status in ("ok", "fallback") else None
    clues: list[Clue] = []
    if state.exif_gps is not None:
        clues.append(Clue(f"EXIF GPS: {state.exif_gps[0]:.5f}, {state.exif_gps[1]:.5f}", "exif"))
    reasoning = ""
    seen: set[str] = set()
    for s in state.samples:
        if s.parsed is None:
            continue
        reasoning = reasoning or s.parsed.reasoning
        for text in s.parsed.clues:
            if text.lower() not in seen:
                seen.add(text.lower())
                clues.append(Clue(text, "image"))
    source = None
    place = geo.Place("", "", "", "")
    if best is not None:
        source = {"llm": "llm", "exif": "exif"}.get(best.origin, "retrieval")
        # One batch, off the event loop (the first call loads the GeoNames table, seconds): the
        # answer and the top candidates the model gave no place for get a geocoded one.
        unnamed = [c for c in state.pool[:CARD_CANDIDATES] if not c.place and c is not best]
        places = await asyncio.to_thread(
            geo.reverse_geocode, [(c.latitude, c.longitude) for c in (best, *unnamed)]
        )
        place = places[0]
        for c, p in zip((best, *unnamed), places, strict=True):
            c.place = c.place or _place_name(p)
    confidence = None if best is None else evidence_agreement(best, state.samples, state.retrieval.positives)
    state.prediction = Prediction(
        latitude=best.latitude if best else None,
        longitude=best.longitude if best else None,
        status=status,  # type: ignore[arg-type]
        source=source,  # type: ignore[arg-type]
        place=_place_name(place),
        model_place=best.place if best and best.origin == "llm" else "",
        country=place.country,
        country_code=place.country_code,
        region=place.region,
        city=place.city,
        confidence=confidence,
        model_confidence=best.confidence if best and best.origin == "llm" else None,
        reasoning=reasoning,
        clues=clues,
        candidates=state.pool,
        neighbours=state.retrieval.positives,
        negatives=state.retrieval.negatives,
        model=res.model.model if model_used and res.model else None,
        model_outcomes=dict(Counter(s.outcome for s in state.samples)),
        llm_calls=state.llm_calls,
        prompt_tokens=state.prompt_tokens,
        completion_tokens=state.completion_tokens,
        verification=state.verification,
        error=error,
        image=state.label,
        transcript=[
            {"variant": s.variant, "sample": s.sample, "outcome": s.outcome, "detail": s.detail,
             "prompt": s.prompt, "reply": s.reply}
            for s in state.samples
        ],
        completions=state.completions,
        exact_match=state.exact_match.image_id if state.exact_match else None,
        excluded_self_matches=len(state.retrieval.self_matches) if settings.exclude_self_matches else 0,
        answer_country=_named_country(state.samples) if settings.answer == "country" and model_used else None,
    )
    return state


CARD_CANDIDATES = 6  # candidates given a geocoded place for the result card


def evidence_agreement(best: Candidate, samples: list[SampleAnswer], neighbours: list[Neighbour]) -> float:
    """``Prediction.confidence`` (``CONFIDENCE_MEANING``): the share of the evidence within
    ``AGREEMENT_KM`` of ``best``. Neighbours weigh by similarity; every model call asked
    weighs the same, and one that gave no answer counts against; half each when both exist."""
    if best.origin == "exif":
        return 1.0
    shares = []
    if neighbours:
        weights = np.array([max(n.similarity, 0.0) for n in neighbours])
        if weights.sum() <= 0:
            weights = np.ones(len(neighbours))
        near = geo.great_circle_km(best.latitude, best.longitude,
                                   np.array([n.lat for n in neighbours]), np.array([n.lon for n in neighbours]))
        shares.append(float(weights[near <= AGREEMENT_KM].sum() / weights.sum()))
    if samples:
        agree = sum(
            1 for s in samples
            if s.parsed is not None and s.parsed.candidates and geo.great_circle_km(
                best.latitude, best.longitude, s.parsed.candidates[0].latitude, s.parsed.candidates[0].longitude
            ) <= AGREEMENT_KM
        )
        shares.append(agree / len(samples))
    return round(float(np.clip(np.mean(shares), 0.0, 1.0)), 4) if shares else 0.0


def _named_country(samples: list[SampleAnswer]) -> str:
    """The ISO code of the country most samples named ("" when none named a known one)."""
    codes = Counter(s.parsed.country_code for s in samples if s.parsed is not None and s.parsed.country_code)
    return codes.most_common(1)[0][0] if codes else ""


def _place_name(place: geo.Place) -> str:
    return ", ".join(p for p in (place.city, place.region, place.country) if p)


def build_chain() -> Runnable:
    """The five steps as one LangChain runnable: ``await chain.ainvoke(state)``."""
    steps = [read_metadata, retrieve, ask_model, verify, answer]
    chain: Runnable = RunnableLambda(steps[0], name=steps[0].__name__)
    for step in steps[1:]:
        chain = chain | RunnableLambda(step, name=step.__name__)
    return chain
