"""The one place CLIP weights are loaded: the ``clip``, ``streetclip`` and ``geoclip`` encoders.

``load_clip_vision`` finds CLIP's vision tower and projection in a local folder, the
Hugging Face cache or (when allowed) the Hub. ``check_geoclip_backbone`` holds what
GeoCLIP's image head needs from that tower. Nothing here imports the encoder registry
(``rag_store.encoders``) or GeoCLIP (``rag_store.geoclip``): both import this module.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .errors import EncoderUnavailable

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
STREETCLIP = "geolocal/StreetCLIP"

# What GeoCLIP's released image head was trained on: CLIP ViT-L/14 image embeddings of
# 224 px crops. Only these three values are a contract: a tower that differs in them
# either cannot feed the head (projection) or feeds it embeddings of another geometry
# (patches, resolution), e.g. StreetCLIP (ViT-L/14 at 336 px). Depth and width are not
# checked, so that tiny random towers of the right shape can stand in for tests.
GEOCLIP_BACKBONE = {"patch_size": 14, "image_size": 224, "projection_dim": 768}
# ViT-L/14's width and depth: a tower of GeoCLIP's shape but another size holds other weights.
VIT_L14 = {"hidden_size": 1024, "num_hidden_layers": 24}


class BackboneWarning(UserWarning):
    """CLIP weights that have GeoCLIP's shape but may not be the model it was trained on."""


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def load_clip_vision(model_id: str):
    """CLIP's vision tower with its projection, from a local dir or the HF cache, else the Hub.

    Raises ``EncoderUnavailable`` naming the model and how to provide its weights.
    """
    from transformers import AutoConfig, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the text tower's unused weights are expected
    attempts = [True] if (_hf_offline() or os.path.isdir(model_id)) else [True, False]
    last: Exception | None = None
    for local_only in attempts:
        try:
            config = AutoConfig.from_pretrained(model_id, local_files_only=local_only)
            if getattr(config, "vision_config", None) is not None:
                # A full CLIP checkpoint: its visual projection has the top-level
                # projection_dim, which the vision sub-config need not repeat.
                vision = config.vision_config
                vision.projection_dim = config.projection_dim
                config = vision
            model = CLIPVisionModelWithProjection.from_pretrained(
                model_id, config=config, local_files_only=local_only
            )
            return model.eval()
        except (OSError, ValueError) as exc:
            last = exc
    raise EncoderUnavailable(
        f"CLIP weights {model_id!r} are not on this machine and could not be downloaded. "
        f"Download them where there is network (e.g. `hf download {model_id} --local-dir DIR`) "
        f"and pass the folder as clip:DIR (or geoclip:DIR), or copy them into the Hugging Face "
        f"cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')})"
    ) from last


def _declared_name(model_id: str) -> str | None:
    """The model a checkpoint folder says it is (config.json ``_name_or_path``), else None."""
    if not os.path.isdir(model_id):
        return model_id  # a Hub id names itself
    try:
        config = json.loads((Path(model_id) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = config.get("_name_or_path") if isinstance(config, dict) else None
    return name.strip() if isinstance(name, str) and name.strip() else None


def _is_default_clip(name: str) -> bool:
    # The Hub's config.json of openai/clip-vit-large-patch14 says "clip-vit-large-patch14/";
    # a copy saved from the Hub model says "openai/clip-vit-large-patch14".
    return name.rstrip("/").rsplit("/", 1)[-1] == DEFAULT_CLIP.rsplit("/", 1)[-1]


def check_geoclip_backbone(model, model_id: str) -> None:
    """Refuse a CLIP tower GeoCLIP's image head was not trained for; warn on foreign weights.

    Raises ``EncoderUnavailable`` naming every value of ``GEOCLIP_BACKBONE`` that differs.
    Warns (``BackboneWarning``) when the checkpoint names another model (config.json
    ``_name_or_path``, or the Hub id), or else when the tower is not ViT-L/14's size: the
    head would then run on embeddings it never saw, and give meaningless locations.
    """
    config = model.config
    found = {key: getattr(config, key, None) for key in GEOCLIP_BACKBONE}
    wrong = {k: v for k, v in found.items() if v != GEOCLIP_BACKBONE[k]}
    if wrong:
        got = ", ".join(f"{k} {v}" for k, v in found.items())
        need = ", ".join(f"{k} {v}" for k, v in GEOCLIP_BACKBONE.items())
        raise EncoderUnavailable(
            f"GeoCLIP's image head was trained on {DEFAULT_CLIP} ({need}); {model_id!r} has "
            f"{got}. Use geoclip (or geoclip:DIR with a copy of {DEFAULT_CLIP})"
        )
    name = _declared_name(model_id)
    size = {key: getattr(config, key, None) for key in VIT_L14}
    if name is not None and not _is_default_clip(name):
        warnings.warn(
            f"geoclip:{model_id}: the weights say they are {name!r}, not {DEFAULT_CLIP}; "
            f"GeoCLIP's image head was trained on {DEFAULT_CLIP} and its locations may be meaningless",
            BackboneWarning,
            stacklevel=2,
        )
    elif size != VIT_L14:
        # (A checkpoint saved by transformers >= 5 records no name: its size still tells.)
        found_size = ", ".join(f"{k} {v}" for k, v in size.items())
        warnings.warn(
            f"geoclip:{model_id}: this CLIP tower has {found_size}, not ViT-L/14's "
            f"{', '.join(f'{k} {v}' for k, v in VIT_L14.items())}: its weights are not {DEFAULT_CLIP}'s, "
            f"and GeoCLIP's locations from it may be meaningless",
            BackboneWarning,
            stacklevel=2,
        )
