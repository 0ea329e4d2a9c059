"""Shared fixtures: the sample data beside the project, and offline Hugging Face."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may download weights or data.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path(os.environ.get("GEOAGENT_SAMPLE", ROOT.parent / "shared" / "data" / "im2gps3k-dev"))


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The Im2GPS3k dev sample (990 photos); tests that need it skip when it is absent."""
    if not (SAMPLE / "im2gps3k-dev.csv").is_file():
        pytest.skip(f"sample data not found at {SAMPLE} (set GEOAGENT_SAMPLE)")
    return SAMPLE
