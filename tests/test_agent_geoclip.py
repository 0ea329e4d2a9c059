"""The chain with the geoclip encoder: GPS-gallery candidates and G3's image-location verification.

GeoCLIP's CLIP ViT-L/14 backbone cannot be fetched here, so a tiny random CLIP with 768-d
projections stands in for it; GeoCLIP's real image head, location encoder and 100K GPS
gallery (the first 3000 coordinates) are used as shipped.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from agent import GeoAgent, Settings
from rag_store import (
    Gallery,
    build_gps_gallery,
    create_encoder,
    index_source,
    load_image,
    open_client,
)
from rag_store.geoclip import load_location_encoder
from tests.imagegen import tiny_clip_dir
from tests.openai_server import OpenAIServer


def cosine(image_embedding: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """G3's check computed here from the two GeoCLIP encoders' outputs, not by the chain's code."""
    locations = np.asarray(load_location_encoder().embed(coords), dtype=np.float64)
    locations /= np.linalg.norm(locations, axis=1, keepdims=True)
    image = np.asarray(image_embedding, dtype=np.float64).reshape(-1)
    return locations @ (image / np.linalg.norm(image))


@pytest.fixture(scope="module")
def geoclip_store(sample_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("geoclip")
    # GeoCLIP's tower shape (ViT-L/14: 224 px, patch 14, 768-d), tiny otherwise: it warns so.
    clip = tiny_clip_dir(root / "clip", projection_dim=768, seed=3, image_size=224, patch_size=14)
    with pytest.warns(UserWarning, match="hidden_size 32"):
        encoder = create_encoder(f"geoclip:{clip}")
    rows = list(csv.reader((sample_dir / "im2gps3k-dev.csv").open()))
    subset = root / "subset.csv"
    with subset.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows[:21])
    client = open_client(root / "store")
    gallery = Gallery.open(client, "gallery", encoder_name=encoder.name, dim=encoder.dim, create=True)
    assert index_source(subset, gallery, encoder, images=sample_dir / "images").added == 20
    build_gps_gallery(client, limit=3000)
    photo = sample_dir / "images" / rows[30][0]
    return root / "store", encoder, photo


def test_retrieval_only_uses_gps_gallery_and_geoclip_verification(geoclip_store):
    store, encoder, photo = geoclip_store
    p = GeoAgent.from_settings(Settings(store=str(store))).locate(photo)
    assert p.status == "ok" and p.source == "retrieval" and p.verification == "geoclip"
    origins = {c.origin for c in p.candidates}
    assert origins == {"gps-gallery", "neighbours"}
    # Each score is the cosine between the photo's GeoCLIP embedding and the candidate's location.
    emb = encoder.embed([load_image(photo)])[0]
    coords = np.array([(c.latitude, c.longitude) for c in p.candidates])
    assert np.allclose([c.score for c in p.candidates], cosine(emb, coords), atol=1e-4)
    assert [c.score for c in p.candidates] == sorted((c.score for c in p.candidates), reverse=True)
    assert (p.latitude, p.longitude) == (p.candidates[0].latitude, p.candidates[0].longitude)


def test_g3_verification_picks_the_model_candidate_geoclip_prefers(geoclip_store):
    store, encoder, photo = geoclip_store
    emb = encoder.embed([load_image(photo)])[0]
    options = [(48.8566, 2.3522), (-33.8688, 151.2093), (-1.2921, 36.8219), (40.7128, -74.006)]
    best = options[int(np.argmax(cosine(emb, np.array(options))))]
    answer = json.dumps({"clues": [], "reasoning": "", "candidates": [
        {"latitude": lat, "longitude": lon, "place": f"option {i}", "confidence": 0.5} for i, (lat, lon) in enumerate(options)
    ]})
    with OpenAIServer(default=answer) as srv:
        agent = GeoAgent.from_settings(Settings(
            store=str(store), model="test-vlm", base_url=srv.base_url, api_key="sk-test",
            variants=(0, 5), use_gps_gallery=False, max_retries=0,
        ))
        p = agent.locate(photo)
    llm = [c for c in p.candidates if c.origin == "llm"]
    assert len(llm) == 4 and all(c.votes == 2 for c in llm)
    top_llm = max(llm, key=lambda c: c.score)
    assert (top_llm.latitude, top_llm.longitude) == best
    assert p.verification == "geoclip"
    assert (p.latitude, p.longitude) == (p.candidates[0].latitude, p.candidates[0].longitude)
