"""A Leaflet map (folium) of a prediction: the answer, its candidates, and the gallery neighbours."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rag_store.outputs import write_output

from .prediction import Prediction

ORIGIN_COLOURS = {"llm": "blue", "gps-gallery": "purple", "neighbours": "gray", "exif": "green"}


def write_map(predictions: Sequence[Prediction], path: str | Path) -> Path:
    """Write an HTML map of ``predictions`` to ``path`` and return it."""
    import folium

    answered = [p for p in predictions if p.latitude is not None]
    centre = (answered[0].latitude, answered[0].longitude) if answered else (20.0, 0.0)
    fmap = folium.Map(location=centre, zoom_start=3 if answered else 2)
    for p in predictions:
        for n in p.neighbours:
            folium.CircleMarker(
                (n.lat, n.lon), radius=3, color="gray", fill=True,
                tooltip=f"neighbour {n.image_id} (similarity {n.similarity:.3f})",
            ).add_to(fmap)
        for c in p.candidates:
            folium.CircleMarker(
                (c.latitude, c.longitude), radius=6, color=ORIGIN_COLOURS.get(c.origin, "blue"), fill=True,
                tooltip=f"{c.origin} candidate {c.place} (score {c.score})",
            ).add_to(fmap)
        if p.latitude is not None:
            folium.Marker(
                (p.latitude, p.longitude),
                tooltip=f"{p.image}: {p.place} ({p.latitude:.4f}, {p.longitude:.4f})",
                icon=folium.Icon(color="red"),
            ).add_to(fmap)
    return write_output(path, fmap.get_root().render(), what="map")
