"""eval.metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.geo import EARTH_RADIUS_KM
from eval.metrics import (
    THRESHOLDS_KM,
    ScoredItem,
    bootstrap_ci,
    compute_metrics,
    cost_usd,
    distances_km,
    geoscore,
    load_prices,
    price_of,
    threshold_accuracy,
)
from rag_store.errors import ConfigError

ONE_DEGREE = math.pi * EARTH_RADIUS_KM / 180  # 111.195 km


def item(i, truth, pred=None, status="ok", **kw) -> ScoredItem:
    return ScoredItem(str(i), truth[0], truth[1], *(pred or (None, None)), status=status, **kw)


def test_distances_on_hand_computed_cases():
    items = [
        item(0, (10.0, 20.0), (10.0, 20.0)),  # identical: 0
        item(1, (0.0, 0.0), (0.0, 180.0)),  # antipodes: pi R
        item(2, (0.0, 179.5), (0.0, -179.5)),  # across the date line: 1 degree
        item(3, (90.0, 0.0), (-90.0, 0.0)),  # pole to pole: pi R
        item(4, (0.0, 0.0), status="refused"),  # unanswered: NaN
    ]
    d = distances_km(items)
    assert d[0] == 0.0
    assert d[1] == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert d[2] == pytest.approx(ONE_DEGREE)
    assert d[3] == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert math.isnan(d[4])


def test_threshold_accuracy_counts_unanswered_as_misses():
    # Distances 0, 10, 100, 500, 2000, 5000 km and four unanswered: 10 items.
    d = np.array([0, 10, 100, 500, 2000, 5000] + [np.nan] * 4, dtype=float)
    acc = threshold_accuracy(d, THRESHOLDS_KM)
    assert acc.tolist() == pytest.approx([10.0, 20.0, 30.0, 40.0, 50.0])
    # A distance equal to the threshold is within it.
    assert threshold_accuracy(np.array([25.0]), [25])[0] == 100.0


def test_geoscore_values():
    assert geoscore(0.0) == 5000.0
    assert geoscore(1492.7) == pytest.approx(5000 / math.e)
    assert geoscore(float("nan")) == 0.0
    assert geoscore(np.array([0.0, np.nan])).tolist() == [5000.0, 0.0]


def test_bootstrap_ci_contains_the_point_estimate_and_collapses_for_constant_data():
    rng = np.random.default_rng(1)
    hits = rng.random((400, 3)) < np.array([0.1, 0.5, 0.9])
    lo, hi = bootstrap_ci(hits.astype(float), n_resamples=1000, seed=0)
    point = hits.mean(axis=0)
    assert np.all(lo <= point) and np.all(point <= hi)
    assert np.all(hi - lo > 0.02)  # 400 binary items: a CI several points wide
    assert np.all(hi - lo < 0.15)
    # Same seed, same interval.
    lo2, hi2 = bootstrap_ci(hits.astype(float), n_resamples=1000, seed=0)
    assert np.array_equal(lo, lo2) and np.array_equal(hi, hi2)
    lo, hi = bootstrap_ci(np.ones((50, 2)), n_resamples=200)
    assert lo.tolist() == [1.0, 1.0] and hi.tolist() == [1.0, 1.0]
    # Chunked resampling (tiny max_cells) gives a valid interval too.
    lo, hi = bootstrap_ci(hits[:, :1].astype(float), n_resamples=100, max_cells=1000)
    assert lo[0] <= point[0] <= hi[0]


def test_compute_metrics_mixed_answers_over_the_whole_truth_set():
    paris = (48.8566, 2.3522)
    items = [
        item("a", paris, paris, model="gpt-4o-mini", llm_calls=2, prompt_tokens=1000, completion_tokens=100, latency_s=1.0),
        item("b", (0.0, 179.5), (0.0, -179.5), status="fallback", llm_calls=0, prompt_tokens=0, completion_tokens=0, latency_s=3.0),
        item("c", (0.0, 0.0), (0.0, 180.0), model="gpt-4o-mini", llm_calls=1, prompt_tokens=500, completion_tokens=50, latency_s=2.0),
        item("d", paris, (0.0, 0.0), status="error", llm_calls=1, prompt_tokens=0, completion_tokens=0, latency_s=5.0),
        item("e", paris, status="refused", model="gpt-4o-mini", llm_calls=1, prompt_tokens=800, completion_tokens=10, latency_s=4.0),
        item("f", paris, status="missing"),
    ]
    m = compute_metrics(items, geography=False, n_resamples=200)
    assert m.n_items == 6
    assert (m.n_answered, m.n_fallback, m.n_refused, m.n_error, m.n_missing) == (3, 1, 1, 1, 1)
    assert m.n_failed == 2
    assert m.answer_rate == pytest.approx(50.0)
    # 0 km, 111 km, 20015 km answered; the error row's (0, 0) must not count.
    assert m.accuracy[1] == pytest.approx(100 / 6)
    assert m.accuracy[25] == pytest.approx(100 / 6)
    assert m.accuracy[200] == pytest.approx(200 / 6)
    assert m.accuracy[2500] == pytest.approx(200 / 6)
    assert m.median_km == pytest.approx(ONE_DEGREE)
    assert m.mean_km == pytest.approx((0 + ONE_DEGREE + math.pi * EARTH_RADIUS_KM) / 3)
    expected_score = (5000 + 5000 * math.exp(-ONE_DEGREE / 1492.7) + 5000 * math.exp(-math.pi * EARTH_RADIUS_KM / 1492.7)) / 6
    assert m.geoscore == pytest.approx(expected_score)
    for t in THRESHOLDS_KM:
        lo, hi = m.accuracy_ci[t]
        assert lo <= m.accuracy[t] <= hi
    assert m.llm_calls == 5
    assert (m.prompt_tokens, m.completion_tokens) == (2300, 160)
    assert m.cost_usd == pytest.approx((2300 * 0.15 + 160 * 0.60) / 1e6)
    assert m.latency_p50_s == pytest.approx(3.0)  # the missing item has no latency
    assert m.latency_p95_s == pytest.approx(4.8)
    data = m.to_dict()
    assert data["acc_200km"] == pytest.approx(200 / 6) and data["n_failed"] == 2
    table = m.table()
    assert "33.33%" in table and "missing (no prediction)        1" in table


def test_ok_status_without_coordinates_is_unparseable_not_answered():
    m = compute_metrics([item(1, (0, 0), status="ok"), item(2, (0, 0), (0, 0))], geography=False, n_resamples=50)
    assert (m.n_answered, m.n_unparseable) == (1, 1)
    assert m.accuracy[1] == 50.0


def test_unknown_usage_and_unknown_model_give_no_cost():
    # A predictions CSV: usage unknown.
    m = compute_metrics([item(1, (0, 0), (0, 0))], geography=False, n_resamples=50)
    assert m.llm_calls is None and m.cost_usd is None and m.latency_p50_s is None
    # A model without a price: cost None, not 0.
    m = compute_metrics([item(1, (0, 0), (0, 0), model="my-local-vlm", llm_calls=1, prompt_tokens=10, completion_tokens=5)],
                        geography=False, n_resamples=50)
    assert m.llm_calls == 1 and m.cost_usd is None
    # Retrieval only: genuinely free.
    m = compute_metrics([item(1, (0, 0), (0, 0), llm_calls=0, prompt_tokens=0, completion_tokens=0)],
                        geography=False, n_resamples=50)
    assert m.cost_usd == 0.0


def test_price_lookup():
    assert price_of("gpt-4o-mini") == (0.15, 0.60)
    assert price_of("openai/gpt-4o-2024-08-06") == (2.50, 10.00)
    assert price_of("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert price_of("gpt-4o-audio-preview") is None
    assert price_of(None) is None
    assert cost_usd("gemini-2.0-flash", 1_000_000, 1_000_000) == pytest.approx(0.50)
    assert cost_usd("unknown", 0, 0) == 0.0


def test_load_prices(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("my-vlm: {input: 1.0, output: 2.0}\nother: [0.5, 0.5]\n")
    prices = load_prices(path)
    assert prices == {"my-vlm": (1.0, 2.0), "other": (0.5, 0.5)}
    m = compute_metrics([item(1, (0, 0), (0, 0), model="my-vlm", llm_calls=1, prompt_tokens=1_000_000, completion_tokens=0)],
                        geography=False, prices=prices, n_resamples=50)
    assert m.cost_usd == pytest.approx(1.0)
    path.write_text("my-vlm: {input: 1.0}\n")
    with pytest.raises(ConfigError, match="my-vlm"):
        load_prices(path)
    with pytest.raises(ConfigError, match="not found"):
        load_prices(tmp_path / "nope.yaml")


def test_country_region_city_accuracy():
    paris, lyon, london, toronto_paris = (48.8566, 2.3522), (45.764, 4.8357), (51.5074, -0.1278), (43.2, -80.38333)
    items = [
        item(1, paris, (48.86, 2.35)),  # same city
        item(2, paris, lyon),  # same country, other region
        item(3, paris, london),  # other country
        item(4, paris, toronto_paris),  # a "Paris" in Ontario: not Paris
        item(5, paris, status="refused"),  # unanswered: a miss everywhere
    ]
    m = compute_metrics(items, n_resamples=50)
    assert m.country_acc == pytest.approx(40.0)
    assert m.region_acc == pytest.approx(20.0)
    assert m.city_acc == pytest.approx(20.0)


def test_truth_labels_from_the_truth_set_are_used():
    # OSV-5M style truth columns: country as an ISO code, region and city as names.
    items = [
        item(1, (48.8566, 2.3522), (48.86, 2.35), truth_country="FR", truth_region="ile-de-france", truth_city="Paris"),
        item(2, (48.8566, 2.3522), (48.86, 2.35), truth_country="France", truth_region="Elsewhere", truth_city="Paris"),
        item(3, (48.8566, 2.3522), (48.86, 2.35), truth_country="DE", truth_region="Ile-de-France", truth_city="Paris"),
    ]
    m = compute_metrics(items, n_resamples=50)
    assert m.country_acc == pytest.approx(200 / 3)
    assert m.region_acc == pytest.approx(100 / 3)
    assert m.city_acc == pytest.approx(100 / 3)


def test_unknown_status_is_rejected():
    with pytest.raises(ConfigError, match="status 'maybe'"):
        compute_metrics([item(1, (0, 0), (0, 0), status="maybe")], geography=False)
