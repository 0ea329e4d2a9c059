"""The metrics of the image-geolocation literature, as plain functions over arrays.

Conventions (the ones Im2GPS, Img2Loc, G3, GeoCLIP and OSV-5M report):

* Accuracy at 1 / 25 / 200 / 750 / 2500 km (street / city / region / country /
  continent): the share of ALL items of the truth set whose prediction is within the
  threshold (``d <= t``). An item without an answer (refused, unparseable, error,
  missing from the predictions) is a miss: it is never dropped from the denominator.
* Median and mean error in km are over the ANSWERED items only (an unanswered item
  has no distance); read them with the answer rate.
* GeoScore (OSV-5M): ``5000 * exp(-d / 1492.7)`` per item, averaged over all items,
  an unanswered item scoring 0.
* Country / region / city accuracy: offline reverse geocoding (``agent.geo``) of the
  prediction against the truth's labels (the truth set's own columns when it has
  them, as OSV-5M does, else reverse geocoding of the truth). A region counts only
  with its country, a city only with its region: "Paris, Ontario" is not Paris.
* 95 % confidence intervals: percentile bootstrap over items, fixed seed.
* Usage: LLM calls, tokens, cost from a price table ($ per 1M tokens; a model not
  in the table gives cost None, never 0), latency p50 / p95.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.geo import great_circle_km
from rag_store.errors import ConfigError

THRESHOLDS_KM: tuple[float, ...] = (1, 25, 200, 750, 2500)
SCALES: dict[float, str] = {1: "street", 25: "city", 200: "region", 750: "country", 2500: "continent"}
GEOSCORE_SCALE_KM = 1492.7  # OSV-5M: 5000 points at 0 km, 5000/e at 1492.7 km
GEOSCORE_MAX = 5000.0

# ok / fallback carry coordinates (fallback: from retrieval when the model failed);
# refused / unparseable / error do not; missing: no record at all for a truth item.
ANSWERED_STATUSES = ("ok", "fallback")
STATUSES = ("ok", "fallback", "refused", "unparseable", "error", "missing")

# List prices in US$ per 1M (input, output) tokens, as published by the providers in
# 2025. They change: check them before quoting a cost, or pass your own table
# (``load_prices``). Dated snapshots ("gpt-4o-2024-08-06") take their family's price.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4-vision-preview": (10.00, 30.00),
    "gemini-1.5-flash": (0.075, 0.30),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-pro": (1.25, 10.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-haiku": (0.25, 1.25),
}
_SNAPSHOT = re.compile(r"^(-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-\d{3}|-latest)$")


@dataclass
class ScoredItem:
    """One item of the truth set and what a system answered for it.

    ``llm_calls`` / tokens are None when unknown (a bare predictions CSV), 0 when the
    system made no call (retrieval only). ``truth_country`` may be an ISO alpha-2 code
    or a name; ``truth_*`` None means "reverse geocode the truth".
    """

    item_id: str
    truth_lat: float
    truth_lon: float
    pred_lat: float | None = None
    pred_lon: float | None = None
    status: str = "ok"
    truth_country: str | None = None
    truth_region: str | None = None
    truth_city: str | None = None
    model: str | None = None
    llm_calls: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    excluded_self_matches: int | None = None  # gallery entries left out as its own photo
    answer_country: str | None = None  # the ISO code the model named (LLMGeo); None: not asked

    @property
    def answered(self) -> bool:
        return (
            self.status in ANSWERED_STATUSES
            and self.pred_lat is not None
            and self.pred_lon is not None
            and math.isfinite(self.pred_lat)
            and math.isfinite(self.pred_lon)
        )


@dataclass
class Metrics:
    """Everything one system scored on one truth set."""

    n_items: int
    n_answered: int
    n_fallback: int  # answered from retrieval after the model failed (within n_answered)
    n_refused: int
    n_unparseable: int
    n_error: int
    n_missing: int
    thresholds_km: tuple[float, ...]
    accuracy: dict[float, float]  # % of all items within each threshold
    accuracy_ci: dict[float, tuple[float, float]]  # 95 % percentile bootstrap
    median_km: float | None  # answered items only
    mean_km: float | None  # answered items only
    geoscore: float  # mean over all items, unanswered = 0
    geoscore_ci: tuple[float, float]
    country_acc: float | None = None  # % of all items; None when not computed
    region_acc: float | None = None
    city_acc: float | None = None
    llm_calls: int | None = None  # None: usage unknown (e.g. a predictions CSV)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None  # None: usage unknown or a model without a price
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    models: list[str] = field(default_factory=list)
    # Items whose own photo was in the gallery (and left out of retrieval); None: unknown.
    n_self_matched: int | None = None
    # LLMGeo's headline: % of all items whose named country is the truth's; None: not asked.
    named_country_acc: float | None = None

    @property
    def n_failed(self) -> int:
        """Items that were run but gave no coordinates."""
        return self.n_refused + self.n_unparseable + self.n_error

    @property
    def answer_rate(self) -> float:
        return 100.0 * self.n_answered / self.n_items if self.n_items else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: ``acc_25km``, ``acc_25km_ci`` ... beside the counts."""
        data = asdict(self)
        for key in ("accuracy", "accuracy_ci", "thresholds_km"):
            data.pop(key)
        data["thresholds_km"] = [_km(t) for t in self.thresholds_km]
        data["n_failed"] = self.n_failed
        data["answer_rate"] = round(self.answer_rate, 4)
        for t in self.thresholds_km:
            data[f"acc_{_km(t)}km"] = self.accuracy[t]
            data[f"acc_{_km(t)}km_ci"] = list(self.accuracy_ci[t])
        data["geoscore_ci"] = list(self.geoscore_ci)
        return data

    def table(self, title: str = "") -> str:
        """The metrics as an aligned plain-text table (what ``geoagent eval score`` prints)."""
        rows: list[tuple[str, str]] = [("items (truth set)", str(self.n_items))]
        if self.named_country_acc is not None:
            rows.append(("named-country accuracy (headline)", f"{self.named_country_acc:.2f}%"))
        rows.append(("answered", f"{self.n_answered} ({self.answer_rate:.1f}%)"))
        if self.n_self_matched:
            rows.append(("own photo in gallery (left out)", str(self.n_self_matched)))
        if self.n_fallback:
            rows.append(("  of which retrieval fallback", str(self.n_fallback)))
        rows += [
            ("refused / unparseable / error", f"{self.n_refused} / {self.n_unparseable} / {self.n_error}"),
            ("missing (no prediction)", str(self.n_missing)),
        ]
        for t in self.thresholds_km:
            lo, hi = self.accuracy_ci[t]
            label = f"acc @ {_km(t)} km" + (f" ({SCALES[t]})" if t in SCALES else "")
            rows.append((label, f"{self.accuracy[t]:6.2f}%   95% CI {lo:.2f}-{hi:.2f}"))
        rows += [
            ("median error km (answered)", _fmt(self.median_km, ".1f")),
            ("mean error km (answered)", _fmt(self.mean_km, ".1f")),
            ("GeoScore (all items)", f"{self.geoscore:.1f}   95% CI {self.geoscore_ci[0]:.1f}-{self.geoscore_ci[1]:.1f}"),
        ]
        if self.country_acc is not None:
            rows += [
                ("country accuracy", f"{self.country_acc:.2f}%"),
                ("region accuracy", f"{_fmt(self.region_acc, '.2f')}%"),
                ("city accuracy", f"{_fmt(self.city_acc, '.2f')}%"),
            ]
        if self.llm_calls is not None:
            rows += [
                ("LLM calls", str(self.llm_calls)),
                ("tokens in / out", f"{self.prompt_tokens} / {self.completion_tokens}"),
                ("cost US$", _fmt(self.cost_usd, ".4f", none="unknown (model without a price)")),
            ]
        if self.latency_p50_s is not None:
            rows.append(("latency p50 / p95 s", f"{self.latency_p50_s:.2f} / {self.latency_p95_s:.2f}"))
        width = max(len(name) for name, _ in rows)
        lines = [title] if title else []
        lines += [f"{name:<{width}}  {value}" for name, value in rows]
        return "\n".join(lines)


def _km(t: float) -> str:
    return f"{t:g}"


def _fmt(value: float | None, spec: str, none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


# ---- plain functions -------------------------------------------------------------


def distances_km(items: Sequence[ScoredItem]) -> np.ndarray:
    """Great-circle error per item; NaN for an unanswered item."""
    truth = np.array([(i.truth_lat, i.truth_lon) for i in items], dtype=float).reshape(-1, 2)
    pred = np.array(
        [(i.pred_lat, i.pred_lon) if i.answered else (np.nan, np.nan) for i in items], dtype=float
    ).reshape(-1, 2)
    return np.asarray(great_circle_km(truth[:, 0], truth[:, 1], pred[:, 0], pred[:, 1]), dtype=float)


def hits_at(d: np.ndarray, thresholds: Sequence[float] = THRESHOLDS_KM) -> np.ndarray:
    """Boolean (n_items, n_thresholds): within each threshold; NaN (unanswered) is a miss."""
    d = np.asarray(d, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(d, nan=np.inf)[:, None] <= np.asarray(thresholds, dtype=float)[None, :]


def threshold_accuracy(d: np.ndarray, thresholds: Sequence[float] = THRESHOLDS_KM) -> np.ndarray:
    """% of ALL items within each threshold (NaN distance = unanswered = miss)."""
    hits = hits_at(d, thresholds)
    return 100.0 * hits.mean(axis=0) if len(hits) else np.zeros(len(thresholds))


def geoscore(d: Any) -> np.ndarray | float:
    """OSV-5M GeoScore ``5000 exp(-d / 1492.7)``; NaN (unanswered) scores 0."""
    d = np.asarray(d, dtype=float)
    score = np.where(np.isnan(d), 0.0, GEOSCORE_MAX * np.exp(-np.nan_to_num(d) / GEOSCORE_SCALE_KM))
    return float(score) if score.ndim == 0 else score


def bootstrap_ci(
    values: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    max_cells: int = 20_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap CI of the mean of each column of ``values`` (n_items, k).

    Resamples items with replacement ``n_resamples`` times (fixed seed: the same data
    always gives the same interval). Done in chunks of resamples so that an OSV-5M-sized
    test set (210k items) stays within ``max_cells`` gathered values at a time.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    n, k = values.shape
    if n == 0:
        return np.zeros(k), np.zeros(k)
    rng = np.random.default_rng(seed)
    means = np.empty((n_resamples, k))
    chunk = max(1, max_cells // max(1, n * k))
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha], axis=0)
    # Clamp to the point estimate's side: with a handful of items, rounding can put a
    # percentile a hair past it.
    point = values.mean(axis=0)
    return np.minimum(lo, point), np.maximum(hi, point)


def percentile(values: Sequence[float | None], q: float) -> float | None:
    """q-th percentile of the known values; None when there are none."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.percentile(known, q)) if known else None


def load_prices(path: str | Path) -> dict[str, tuple[float, float]]:
    """A price table from YAML: ``model: {input: $/1M, output: $/1M}`` (or ``[in, out]``)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"price table not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read price table {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"price table {path} must map model names to prices")
    prices = {}
    for model, value in data.items():
        try:
            pair = (value["input"], value["output"]) if isinstance(value, dict) else tuple(value)
            prices[str(model).lower()] = (float(pair[0]), float(pair[1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise ConfigError(
                f"price table {path}: {model!r} needs input and output $ per 1M tokens, "
                "e.g. {input: 2.5, output: 10}"
            ) from None
    return prices


def price_of(model: str | None, prices: Mapping[str, tuple[float, float]] = DEFAULT_PRICES) -> tuple[float, float] | None:
    """($ per 1M input, $ per 1M output) of a model, or None when it has no price.

    "openai/gpt-4o-2024-08-06" finds "gpt-4o": the provider prefix and a dated or
    numbered snapshot suffix are ignored, nothing else (gpt-4o-audio is not gpt-4o).
    """
    if not model:
        return None
    name = model.lower().rsplit("/", 1)[-1]
    table = {k.lower(): v for k, v in prices.items()}
    if name in table:
        return table[name]
    for key in sorted(table, key=len, reverse=True):
        if name.startswith(key) and _SNAPSHOT.match(name[len(key):]):
            return table[key]
    return None


def cost_usd(
    model: str | None, prompt_tokens: int, completion_tokens: int,
    prices: Mapping[str, tuple[float, float]] = DEFAULT_PRICES,
) -> float | None:
    """Cost in US$ of the tokens; 0 without tokens; None for a model without a price."""
    if not prompt_tokens and not completion_tokens:
        return 0.0
    price = price_of(model, prices)
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


def admin_accuracy(items: Sequence[ScoredItem]) -> tuple[float, float, float]:
    """% of ALL items whose prediction has the truth's country / region / city.

    Unanswered items and open-water labels (empty) are misses. Names compare
    case-insensitively; a two-letter truth country compares with the ISO code.
    """
    from agent.geo import reverse_geocode

    n = len(items)
    if n == 0:
        return 0.0, 0.0, 0.0
    need_truth = [i for i in items if i.truth_country is None or i.truth_region is None or i.truth_city is None]
    truth_places = dict(zip(
        (id(i) for i in need_truth),
        reverse_geocode([(i.truth_lat, i.truth_lon) for i in need_truth]),
        strict=True,
    ))
    answered = [i for i in items if i.answered]
    pred_places = dict(zip(
        (id(i) for i in answered),
        reverse_geocode([(i.pred_lat, i.pred_lon) for i in answered]),
        strict=True,
    ))
    country = region = city = 0
    for item in answered:
        pred = pred_places[id(item)]
        geo = truth_places.get(id(item))
        t_country = item.truth_country if item.truth_country is not None else geo.country_code
        t_region = item.truth_region if item.truth_region is not None else geo.region
        t_city = item.truth_city if item.truth_city is not None else geo.city
        if not _same_country(t_country, pred):
            continue
        country += 1
        if not _same(t_region, pred.region):
            continue
        region += 1
        city += _same(t_city, pred.city)
    return 100.0 * country / n, 100.0 * region / n, 100.0 * city / n


def _same(a: str, b: str) -> bool:
    a, b = (a or "").strip().casefold(), (b or "").strip().casefold()
    return bool(a) and a == b


def _same_country(truth: str, pred: Any) -> bool:
    truth = (truth or "").strip()
    if len(truth) == 2:
        return _same(truth, pred.country_code)
    return _same(truth, pred.country) or _same(truth, pred.country_code)


def compute_metrics(
    items: Sequence[ScoredItem],
    *,
    thresholds: Sequence[float] = THRESHOLDS_KM,
    geography: bool = True,
    prices: Mapping[str, tuple[float, float]] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Metrics:
    """All metrics of one system over its truth set (every item, answered or not)."""
    thresholds = tuple(thresholds)
    prices = DEFAULT_PRICES if prices is None else prices
    for item in items:
        if item.status not in STATUSES:
            raise ConfigError(f"item {item.item_id}: unknown status {item.status!r} (one of {', '.join(STATUSES)})")
    d = distances_km(items)
    hits = hits_at(d, thresholds)
    scores = geoscore(d) if len(items) else np.zeros(0)
    ci_lo, ci_hi = bootstrap_ci(np.column_stack([hits, scores]) if len(items) else np.zeros((0, len(thresholds) + 1)),
                                n_resamples=n_resamples, seed=seed)
    acc = threshold_accuracy(d, thresholds)
    answered_d = d[~np.isnan(d)]
    counts = {s: sum(1 for i in items if i.status == s) for s in STATUSES}
    n_answered = int((~np.isnan(d)).sum())
    country = region = city = None
    if geography:
        country, region, city = admin_accuracy(items)
    named = named_country_accuracy(items)

    ran = [i for i in items if i.status != "missing"]
    usage_known = bool(ran) and all(i.llm_calls is not None for i in ran)
    llm_calls = prompt_tokens = completion_tokens = None
    cost: float | None = None
    if usage_known:
        llm_calls = sum(i.llm_calls or 0 for i in ran)
        prompt_tokens = sum(i.prompt_tokens or 0 for i in ran)
        completion_tokens = sum(i.completion_tokens or 0 for i in ran)
        costs = [cost_usd(i.model, i.prompt_tokens or 0, i.completion_tokens or 0, prices) for i in ran]
        cost = None if any(c is None for c in costs) else float(sum(costs))
    latencies = [i.latency_s for i in ran]

    return Metrics(
        n_items=len(items),
        n_answered=n_answered,
        n_fallback=sum(1 for i in items if i.status == "fallback" and i.answered),
        n_refused=counts["refused"],
        # An LLMGeo answer that names a country without coordinates is an answer, not unparseable.
        n_unparseable=counts["unparseable"] + sum(
            1 for i in items if i.status in ANSWERED_STATUSES and not i.answered and not i.answer_country
        ),
        n_error=counts["error"],
        n_missing=counts["missing"],
        thresholds_km=thresholds,
        accuracy={t: float(a) for t, a in zip(thresholds, acc, strict=True)},
        accuracy_ci={t: (float(ci_lo[j]) * 100, float(ci_hi[j]) * 100) for j, t in enumerate(thresholds)},
        median_km=float(np.median(answered_d)) if len(answered_d) else None,
        mean_km=float(np.mean(answered_d)) if len(answered_d) else None,
        geoscore=float(scores.mean()) if len(items) else 0.0,
        geoscore_ci=(float(ci_lo[-1]), float(ci_hi[-1])),
        country_acc=country,
        region_acc=region,
        city_acc=city,
        llm_calls=llm_calls,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        models=sorted({i.model for i in ran if i.model}),
        n_self_matched=(
            sum(1 for i in ran if i.excluded_self_matches)
            if ran and any(i.excluded_self_matches is not None for i in ran) else None
        ),
        named_country_acc=named,
    )


def named_country_accuracy(items: Sequence[ScoredItem]) -> float | None:
    """% of ALL items whose model-named country (ISO code) is the truth's (LLMGeo's metric).

    None when no item was asked for a country. Unknown, none and unanswered are misses.
    """
    if not any(i.answer_country is not None for i in items):
        return None
    from agent.geo import country_code, reverse_geocode

    need = [i for i in items if i.truth_country is None]
    truth = dict(zip((id(i) for i in need), reverse_geocode([(i.truth_lat, i.truth_lon) for i in need]), strict=True))
    hits = 0
    for item in items:
        code = item.answer_country or ""
        t = item.truth_country if item.truth_country is not None else truth[id(item)].country_code
        t = t if len(t.strip()) == 2 else country_code(t)
        hits += bool(code) and code.upper() == t.strip().upper()
    return 100.0 * hits / len(items) if items else 0.0
