"""An HTML map of predictions that works offline: land, answers, candidates, neighbours, legend.

Everything the page needs is inline: Leaflet, topojson-client and the Natural Earth
1:110m countries ship with the package (``agent/vendor``, licences in its README), so
the map shows the land, the markers and the legend with no network, fitted to the
markers. When a tile server answers, its tiles are laid over the land (a probe tile is
loaded first, so that offline there are no broken images).

Model text (places) is untrusted: it is HTML-escaped for the tooltips, and the data is
embedded as JSON with ``<`` escaped, so that no reply can close the script element.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path

from rag_store.outputs import write_output

from .prediction import Prediction

TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
TILES_ATTRIBUTION = "&copy; OpenStreetMap contributors"
# Marker colours, by what a marker is; candidates by origin.
COLOURS = {
    "answer": "#d62728",
    "llm": "#1f77b4",
    "gps-gallery": "#9467bd",
    "neighbours": "#ff7f0e",
    "exif": "#2ca02c",
    "neighbour": "#555555",
}
LEGEND = {
    "answer": "answer",
    "llm": "model candidate",
    "gps-gallery": "GeoCLIP GPS-gallery candidate",
    "neighbours": "retrieval candidate",
    "exif": "EXIF GPS",
    "neighbour": "gallery neighbour",
}


@cache
def _vendor(name: str) -> str:
    return files("agent").joinpath("vendor", name).read_text(encoding="utf-8")


def _script_json(data: object) -> str:
    """JSON safe inside <script>: no "</script>", "<!--" or U+2028 can end or break it."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace(
        "\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _markers(predictions: Sequence[Prediction]) -> list[dict]:
    """Every marker: kind, colour, latitude, longitude, radius and an escaped HTML tooltip."""
    from .console import clean_text, short_name

    def esc(text: object) -> str:
        return html.escape(clean_text(text))

    markers: list[dict] = []
    for p in predictions:
        name = esc(short_name(p.image)) if p.image else "photo"
        for n in p.neighbours:
            markers.append({"kind": "neighbour", "lat": n.lat, "lon": n.lon, "r": 3,
                            "tip": f"{name}: gallery neighbour {esc(n.image_id)}<br>similarity {n.similarity:.3f}"})
        for c in p.candidates:
            score = f"{c.score:.3f}" if c.score is not None else "-"
            markers.append({"kind": c.origin if c.origin in COLOURS else "llm", "lat": c.latitude, "lon": c.longitude,
                            "r": 6, "tip": f"{name}: {esc(LEGEND.get(c.origin, c.origin))}<br>{esc(c.place or '')}"
                                           f"<br>score {score}"})
        if p.latitude is not None and p.longitude is not None:
            conf = f"{p.confidence:.0%}" if p.confidence is not None else "n/a"
            markers.append({"kind": "answer", "lat": p.latitude, "lon": p.longitude, "r": 9,
                            "tip": f"<b>{name}</b><br>{esc(p.place or 'unknown place')}<br>"
                                   f"{p.latitude:.4f}, {p.longitude:.4f}<br>confidence {conf}"})
    return markers


def map_html(predictions: Sequence[Prediction], title: str = "geoagent map") -> str:
    """A self-contained HTML page mapping ``predictions`` (see the module docstring)."""
    markers = _markers(predictions)
    kinds = [k for k in COLOURS if any(m["kind"] == k for m in markers)]
    legend = f"<b>{html.escape(title)}</b>" + ("".join(
        f'<div><span class="dot" style="background:{COLOURS[k]}"></span>{html.escape(LEGEND[k])}</div>' for k in kinds
    ) or "<div>no answer to show</div>")
    data = {"markers": markers, "colours": COLOURS, "tiles": TILES, "attribution": TILES_ATTRIBUTION}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_vendor("leaflet.css")}</style>
<style>
html,body,#map{{height:100%;margin:0}}
#map{{background:#cfe2ee}}
.legend{{background:#fff;padding:6px 10px;border-radius:4px;box-shadow:0 1px 4px rgba(0,0,0,.3);font:13px/1.5 system-ui,sans-serif}}
.legend .dot{{display:inline-block;width:11px;height:11px;border-radius:50%;margin-right:6px;vertical-align:-1px;border:1px solid #fff;box-shadow:0 0 0 1px #888}}
.legend b{{display:block;margin-bottom:2px}}
</style>
<script>{_vendor("leaflet.js")}</script>
<script>{_vendor("topojson-client.min.js")}</script>
</head><body><div id="map"></div>
<script>
var DATA = {_script_json(data)};
var WORLD = {_script_json(json.loads(_vendor("countries-110m.json")))};
var map = L.map("map", {{worldCopyJump: true, minZoom: 1}});
// The view first (Leaflet draws vector layers only on a map that has one), fitted to the markers.
var points = DATA.markers.map(function (m) {{ return [m.lat, m.lon]; }});
if (points.length > 1) {{ map.fitBounds(L.latLngBounds(points), {{padding: [40, 40], maxZoom: 12}}); }}
else if (points.length === 1) {{ map.setView(points[0], 6); }}
else {{ map.setView([20, 0], 2); }}
var land = L.geoJSON(topojson.feature(WORLD, WORLD.objects.countries), {{
  style: {{color: "#9a9a8a", weight: 0.7, fillColor: "#f3efe4", fillOpacity: 1}}, interactive: false
}}).addTo(map);
DATA.markers.forEach(function (m) {{
  var c = DATA.colours[m.kind];
  L.circleMarker([m.lat, m.lon], {{radius: m.r, color: m.kind === "answer" ? "#fff" : c, weight: m.kind === "answer" ? 2 : 1,
    fillColor: c, fillOpacity: m.kind === "neighbour" ? 0.6 : 0.9}}).bindTooltip(m.tip).addTo(map);
}});
var legend = L.control({{position: "bottomright"}});
legend.onAdd = function () {{
  var div = L.DomUtil.create("div", "legend");
  div.innerHTML = {_script_json(legend)};
  return div;
}};
legend.addTo(map);
// Tiles only when a tile server answers: offline, the land above is the map.
var probe = new Image();
probe.onload = function () {{
  L.tileLayer(DATA.tiles, {{attribution: DATA.attribution, maxZoom: 18}}).addTo(map);
  land.setStyle({{fillOpacity: 0, opacity: 0}});
}};
probe.src = DATA.tiles.replace("{{z}}", "0").replace("{{x}}", "0").replace("{{y}}", "0");
</script>
</body></html>
"""


def write_map(predictions: Sequence[Prediction], path: str | Path, title: str = "geoagent map") -> Path:
    """Write ``map_html(predictions)`` to ``path`` (atomically, parent folders created) and return it."""
    return write_output(path, map_html(predictions, title), what="map")
