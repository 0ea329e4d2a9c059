"""How well ``Prediction.confidence`` is calibrated: accuracy per confidence bin, and the ECE.

``confidence`` says how much of the evidence agrees with the answer to within 750 km
(``agent.prediction.CONFIDENCE_MEANING``). Read as a probability, it should match the
share of answers that are right. Per bin of confidence this module gives that share at
25 km (city) and 750 km (country) and the expected calibration error (Guo et al., ICML
2017): ``ECE = sum_b n_b / N * |accuracy_b - mean confidence_b|``. Only answered items
carry a confidence, so the bins hold answered items only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CALIBRATION_KM: tuple[float, ...] = (25.0, 750.0)
N_BINS = 5


@dataclass
class CalibrationBin:
    lo: float
    hi: float
    n: int
    mean_confidence: float | None
    accuracy: dict[float, float | None]  # share within each threshold, 0..1


@dataclass
class Calibration:
    bins: list[CalibrationBin]
    ece: dict[float, float | None]  # per threshold; None without items
    n: int  # answered items with a confidence
    n_without: int = 0  # answered items that carry no confidence (older records)
    thresholds_km: tuple[float, ...] = field(default=CALIBRATION_KM)


def calibration(
    confidence: np.ndarray, distance_km: np.ndarray, thresholds_km: tuple[float, ...] = CALIBRATION_KM,
    n_bins: int = N_BINS,
) -> Calibration:
    """Bin answered items by confidence (equal widths over 0..1, the last bin closed)."""
    confidence = np.asarray(confidence, dtype=float)
    distance_km = np.asarray(distance_km, dtype=float)
    known = np.isfinite(confidence) & np.isfinite(distance_km)
    conf, dist = np.clip(confidence[known], 0.0, 1.0), distance_km[known]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.minimum(np.searchsorted(edges, conf, side="right") - 1, n_bins - 1)
    bins = []
    gaps = {t: 0.0 for t in thresholds_km}
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        mean_conf = float(conf[mask].mean()) if n else None
        accuracy = {t: (float((dist[mask] <= t).mean()) if n else None) for t in thresholds_km}
        for t in thresholds_km:
            if n:
                gaps[t] += n * abs(accuracy[t] - mean_conf)
        bins.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), n, mean_conf, accuracy))
    total = len(conf)
    ece = {t: (gaps[t] / total if total else None) for t in thresholds_km}
    return Calibration(bins, ece, total, int((~known & np.isfinite(distance_km)).sum()), tuple(thresholds_km))
