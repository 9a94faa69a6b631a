"""A changing world for `smar online --drift SPEC`: the simulated population shifts at a given round.

The drift transforms the simulator truth of a split (what users respond to), never the pages the
endpoint sees: the features, single-modal scores and query features stay as they were, so a policy
can only notice the change through the feedback it logs. Both the live traffic and the held-out
sessions switch to the drifted truth from round `at_round` on, so the online loop and the frozen copy of
the initial policy are compared on held-out sessions of the same drifted world.

SPEC: "default", "none", or comma-separated key=value pairs, e.g.
    round=2,modality=video,relevance=-2,attractiveness=1.0
  round           the first round whose traffic comes from the drifted world
  modality        the modality whose results change (doc, image, video, answer)
  relevance       grades added to that modality's true relevance (clipped to 0..4): a quality shift;
                  dwell and satisfaction follow the true grade in the user model
  attractiveness  factor on that modality's attractiveness (its click-through once examined)
The default scenario: from round 1 on, video results get two grades worse (a catalogue of worse videos:
users still click them, but watch them shorter and are satisfied less).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from envs.pages import MAX_GRADE, MODALITIES
from envs.world import ItemTruth, Split


@dataclass(frozen=True)
class DriftConfig:
    at_round: int = 1
    modality: str = "video"
    relevance_shift: int = -2
    attractiveness_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"drift modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.at_round < 1:
            raise ValueError("a drift needs at least one round before it (at_round >= 1)")
        if self.attractiveness_scale <= 0:
            raise ValueError(f"attractiveness factor must be > 0, got {self.attractiveness_scale}")
        if self.relevance_shift == 0 and self.attractiveness_scale == 1.0:
            raise ValueError("this drift changes nothing (relevance=0, attractiveness=1)")

    def to_json(self) -> dict:
        return asdict(self)


_KEYS = {
    "round": ("at_round", int),
    "modality": ("modality", str),
    "relevance": ("relevance_shift", int),
    "attractiveness": ("attractiveness_scale", float),
}


def parse_drift(spec: str | dict | None) -> DriftConfig | None:
    """`--drift SPEC` (or the config's dict) -> a DriftConfig; None for no drift."""
    if spec is None or spec in ("", "none"):
        return None
    if isinstance(spec, dict):
        return DriftConfig(**spec)
    if spec == "default":
        return DriftConfig()
    kw = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in _KEYS:
            raise ValueError(f"bad drift spec part {part!r}: expected one of {sorted(_KEYS)} as key=value")
        name, cast = _KEYS[key.strip()]
        kw[name] = cast(value.strip())
    return DriftConfig(**kw)


def drift_split(split: Split, cfg: DriftConfig) -> Split:
    """The same pages with the drifted truth (a new Split; the input is left untouched)."""
    mid = MODALITIES.index(cfg.modality)
    sel = split.pages.modality == mid
    relevance = split.truth.relevance.astype(np.int16)
    relevance[sel] = np.clip(relevance[sel] + cfg.relevance_shift, 0, MAX_GRADE)
    relevance = relevance.astype(split.truth.relevance.dtype)
    attract = split.truth.attractiveness.copy()
    attract[sel] = np.clip(attract[sel] * cfg.attractiveness_scale, 1e-4, 1 - 1e-4)
    truth = ItemTruth(relevance, attract, split.truth.preferred_modality.copy())
    pages = split.pages
    if (pages.relevance >= 0).all():  # pages that carried the true grade carry the drifted one
        pages = replace(pages, relevance=relevance.copy())
    return Split(pages, truth)
