"""The `merge` baseline: single-modal scores merged by per-modality calibration, using no page labels.

What a team without whole-page annotation would ship: run every modality's ranker and interleave by
a calibrated score. Each modality's raw score scale is arbitrary, so each is mapped to a common scale
fitted on that modality's own single-modal data only:

* `quantile` (default): the empirical CDF of the modality's single-modal scores (piecewise linear
  through `knots` quantiles), so "top 10% of images" and "top 10% of docs" tie.
* `zscore`: (score - mean_m) / std_m.

Both are monotone per modality, so `merge` keeps every single-modal order (consistency 1) but knows
nothing about which modality suits the query: exactly what page-level supervision adds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs.atomic_io import write_json_atomic
from envs.pages import MODALITIES, MODALITY_ID, Pages

FORMAT = "smar-merge/1"


@dataclass
class MergeCalibration:
    """Per-modality monotone maps from a single-modal score to a shared scale."""

    method: str = "quantile"
    knots: dict[str, list[float]] = field(default_factory=dict)  # quantile: score at each level
    levels: list[float] = field(default_factory=list)  # quantile levels in [0, 1]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def fit(
        scores_by_modality: dict[str, np.ndarray], method: str = "quantile", n_knots: int = 201
    ) -> MergeCalibration:
        """Fit on single-modal scores (modality -> (n,) scores of that modality's own data)."""
        if method not in ("quantile", "zscore"):
            raise ValueError(f"merge method must be 'quantile' or 'zscore', got {method!r}")
        levels = np.linspace(0.0, 1.0, n_knots)
        cal = MergeCalibration(method=method, levels=levels.tolist())
        for m, s in scores_by_modality.items():
            s = np.asarray(s, np.float64)
            s = s[np.isfinite(s)]
            if len(s) < 2:
                raise ValueError(f"merge calibration for {m!r} needs >= 2 finite scores, got {len(s)}")
            cal.knots[m] = np.quantile(s, levels).tolist()
            cal.mean[m] = float(s.mean())
            cal.std[m] = float(max(s.std(), 1e-6))
        return cal

    def calibrate(self, scores: np.ndarray, modality: np.ndarray) -> np.ndarray:
        """Map (T,) single-modal scores of items with the given modality ids to the shared scale."""
        scores = np.asarray(scores, np.float64)
        if np.isnan(scores).any():
            raise ValueError("merge: field 'single_modal_score' has unknown (NaN) entries")
        out = np.zeros(len(scores), np.float64)
        for mid in np.unique(modality):
            m = MODALITIES[int(mid)]
            if m not in self.mean:
                raise ValueError(f"merge: no calibration for modality {m!r}")
            sel = modality == mid
            if self.method == "zscore":
                out[sel] = (scores[sel] - self.mean[m]) / self.std[m]
            else:
                # Strictly increasing knots (ties in data would flatten the map), and a linear tail
                # beyond the range so scores outside the fitted data still keep their order.
                k = np.maximum.accumulate(np.asarray(self.knots[m]) + np.arange(len(self.levels)) * 1e-9)
                lv = np.asarray(self.levels)
                x = scores[sel]
                y = np.interp(x, k, lv)
                span = max(k[-1] - k[0], 1e-9)
                y = np.where(x > k[-1], 1.0 + (x - k[-1]) / span, y)
                y = np.where(x < k[0], (x - k[0]) / span, y)
                out[sel] = y
        return out.astype(np.float32)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "method": self.method,
            "levels": self.levels,
            "knots": self.knots,
            "mean": self.mean,
            "std": self.std,
        }

    @staticmethod
    def from_json(d: dict) -> MergeCalibration:
        if d.get("format") != FORMAT:
            raise ValueError(f"merge calibration format {d.get('format')!r}, expected {FORMAT!r}")
        return MergeCalibration(d["method"], d["knots"], d["levels"], d["mean"], d["std"])

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())

    @staticmethod
    def load(path: str | Path) -> MergeCalibration:
        return MergeCalibration.from_json(json.loads(Path(path).read_text()))


class MergeScorer:
    """`.score(pages)`: calibrated single-modal scores; computes missing single-modal scores if given rankers."""

    def __init__(self, calibration: MergeCalibration, rankers=None) -> None:
        self.calibration = calibration
        self.rankers = rankers  # optional SingleModalRankers for pages without single_modal_score

    def score(self, pages: Pages) -> np.ndarray:
        s = pages.single_modal_score
        if np.isnan(s).any():
            if self.rankers is None:
                raise ValueError(
                    "merge: pages lack 'single_modal_score' and no single-modal rankers were given"
                )
            s = self.rankers.score(pages)
        return self.calibration.calibrate(s, pages.modality)


def fit_merge(rankers, single_modal: dict[str, Pages], method: str = "quantile") -> MergeCalibration:
    """Fit the calibration on each modality's single-modal pages scored by its own ranker (no page labels)."""
    scores = {}
    for m, pages in single_modal.items():
        sel = pages.modality == MODALITY_ID[m]
        scores[m] = rankers.score(pages)[sel]
    return MergeCalibration.fit(scores, method)
