"""Published results to read ours against: accuracy (%) at 1 / 25 / 200 / 750 / 2500 km.

Numbers are as printed in each paper's main table, on the full test set
(Im2GPS3k: 2997 photos; YFCC4k: 4536 photos). A run on a subset of a test set
(e.g. ``im2gps3k-dev``) is shown beside the full-set anchors, flagged as a subset.
"""

from __future__ import annotations

from dataclasses import dataclass

from eval.metrics import THRESHOLDS_KM


@dataclass(frozen=True)
class Citation:
    authors: str
    title: str
    venue: str
    year: int

    def __str__(self) -> str:
        return f'{self.authors}, "{self.title}", {self.venue} {self.year}'


@dataclass(frozen=True)
class Anchor:
    """One published method on one test set."""

    method: str
    dataset: str
    accuracy: tuple[float, float, float, float, float]  # at THRESHOLDS_KM
    citation: Citation

    def accuracy_at(self) -> dict[float, float]:
        return dict(zip(THRESHOLDS_KM, self.accuracy, strict=True))


IMG2LOC = Citation(
    "Zhou et al.",
    "Img2Loc: Revisiting Image Geolocalization using Multi-modality Foundation Models "
    "and Image-based Retrieval-Augmented Generation",
    "SIGIR", 2024,
)
G3 = Citation(
    "Jia et al.",
    "G3: An Effective and Adaptive Framework for Worldwide Geolocalization Using "
    "Large Multi-Modality Models",
    "NeurIPS", 2024,
)
GEOCLIP = Citation(
    "Vivanco Cepeda et al.",
    "GeoCLIP: Clip-Inspired Alignment between Locations and Images for Effective "
    "Worldwide Geo-localization",
    "NeurIPS", 2023,
)
PIGEON = Citation("Haas et al.", "PIGEON: Predicting Image Geolocations", "CVPR", 2024)

ANCHORS: dict[str, tuple[Anchor, ...]] = {
    "im2gps3k": (
        Anchor("Img2Loc (GPT-4V)", "im2gps3k", (17.10, 45.14, 57.87, 72.91, 84.68), IMG2LOC),
        Anchor("G3 (GPT-4V)", "im2gps3k", (16.65, 40.94, 55.56, 71.24, 84.68), G3),
        Anchor("GeoCLIP", "im2gps3k", (14.11, 34.47, 50.65, 69.67, 83.82), GEOCLIP),
        Anchor("PIGEOTTO", "im2gps3k", (11.3, 36.7, 53.8, 72.4, 85.3), PIGEON),
    ),
    "yfcc4k": (
        Anchor("Img2Loc (GPT-4V)", "yfcc4k", (14.11, 29.57, 41.40, 59.27, 76.88), IMG2LOC),
        Anchor("G3 (GPT-4V)", "yfcc4k", (23.99, 35.89, 46.98, 64.26, 78.15), G3),
        Anchor("GeoCLIP", "yfcc4k", (9.59, 19.31, 32.63, 55.0, 74.69), GEOCLIP),
    ),
}


def canonical_dataset(name: str | None) -> tuple[str | None, bool]:
    """(test set with anchors, whether ``name`` is only a subset of it) for a dataset name.

    "Im2GPS3k" -> ("im2gps3k", False); "im2gps3k-dev" -> ("im2gps3k", True);
    a dataset without published anchors -> (None, False).
    """
    if not name:
        return None, False
    key = name.strip().lower().replace("_", "-").replace(" ", "")
    if key in ANCHORS:
        return key, False
    for dataset in ANCHORS:
        if key.startswith(dataset + "-"):
            return dataset, True
    return None, False


def anchors_for(name: str | None) -> tuple[Anchor, ...]:
    """The published anchors of a test set; empty for a dataset without any."""
    dataset, _ = canonical_dataset(name)
    return ANCHORS.get(dataset, ()) if dataset else ()


LLMGEO = Citation(
    "Wang et al.",
    "LLMGeo: Benchmarking Large Language Models on Image Geolocation In-the-wild",
    "arXiv 2405.20363", 2024,
)


@dataclass(frozen=True)
class CountryAnchor:
    """A published country accuracy (%) of one model with one LLMGeo prompt."""

    model: str
    config: str  # the geoagent config that follows the prompt
    accuracy: float
    citation: Citation = LLMGEO


# LLMGeo's table "LLMs' accuracy results with different prompts before finetune", on its own
# test set (1,000 Google Street View images, 82 countries; not Im2GPS3k), as given in the
# repository README (github.com/yeyimilk/LLMGeo). S-5-shot / D-5-shot are the static and
# dynamic 5-shot prompts; GPT-4V has no few-shot figures there.
LLMGEO_COUNTRY: tuple[CountryAnchor, ...] = (
    CountryAnchor("GPT-4V", "llmgeo-basic", 10.2),
    CountryAnchor("GPT-4V", "llmgeo-must-answer", 51.3),
    CountryAnchor("GPT-4V", "llmgeo-tips", 42.2),
    CountryAnchor("Gemini", "llmgeo-basic", 66.6),
    CountryAnchor("Gemini", "llmgeo-must-answer", 66.0),
    CountryAnchor("Gemini", "llmgeo-tips", 67.0),
    CountryAnchor("Gemini", "llmgeo-few-shot-static", 74.1),
    CountryAnchor("Gemini", "llmgeo-few-shot-dynamic", 73.6),
)


def country_anchors_for(configs: list[str]) -> tuple[CountryAnchor, ...]:
    """LLMGeo's published country accuracies of the prompts among ``configs``."""
    return tuple(a for a in LLMGEO_COUNTRY if a.config in configs)
