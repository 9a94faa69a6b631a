"""A changing world for `smar online --online.drift`: the simulated population shifts at a given round.

The drift transforms the simulator truth of a split (what users respond to), never the pages the
endpoint sees: the features, single-modal scores and query features stay as they were, so a policy
can only notice the change through the feedback it logs. Both the live traffic and the held-out
sessions switch to the drifted truth from round `at_round` on, so the online loop and the frozen copy of
the initial policy are compared on held-out sessions of the same drifted world.

The setting (`smar online --online.drift VALUE`, `OnlineConfig.drift`): null for no drift, a preset's
name, or DriftConfig's fields as a mapping (`{modality: image, relevance_shift: -1}`; a field left out
keeps its default):
  at_round              the first round whose traffic comes from the drifted world
  modality              the modality whose results change (doc, image, video, answer)
  relevance_shift       grades added to that modality's true relevance (clipped to 0..4): a quality
                        shift; dwell and satisfaction follow the true grade in the user model
  attractiveness_scale  factor on that modality's attractiveness (its click-through once examined)
The `default` preset (all defaults): from round 1 on, video results get two grades worse (a catalogue of
worse videos: users still click them, but watch them shorter and are satisfied less).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from envs.config_io import ConfigError, from_dict
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
            raise ValueError("a drift needs at least one round before it (drift at_round >= 1)")
        if self.attractiveness_scale <= 0:
            raise ValueError(f"drift attractiveness_scale must be > 0, got {self.attractiveness_scale}")
        if self.relevance_shift == 0 and self.attractiveness_scale == 1.0:
            raise ValueError("this drift changes nothing (relevance_shift 0, attractiveness_scale 1)")

    def to_json(self) -> dict:
        return asdict(self)


PRESETS: dict[str, DriftConfig] = {"default": DriftConfig()}


def parse_drift(value: DriftConfig | dict | str | None) -> DriftConfig | None:
    """The drift setting -> a DriftConfig (None: no drift). A mapping is loaded strictly (an unknown key
    is an error naming it); a string must name a preset."""
    if value is None or isinstance(value, DriftConfig):
        return value
    if isinstance(value, str):
        if value not in PRESETS:
            raise ConfigError(
                f"drift: unknown preset {value!r} (presets: {', '.join(PRESETS)}; or a mapping of "
                f"{', '.join(f.name for f in fields(DriftConfig))}; or null for none)"
            )
        return PRESETS[value]
    return from_dict(DriftConfig, value, "drift")


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
