"""Held-out evidence settings: how many plays each figure gets, and clear errors on bad settings."""

import pytest

from agent.online.heldout import HeldoutConfig


def test_served_plan_plays_repeats_in_all() -> None:
    assert HeldoutConfig().served_plan() == (16, 2)  # 32 plays: 16 slates per page x 2 plays
    assert HeldoutConfig(repeats=4, served_samples=2).served_plan() == (2, 2)  # an older run's setting
    assert HeldoutConfig(repeats=1).served_plan() == (1, 1)  # never more slates than plays
    assert HeldoutConfig(repeats=6, served_samples=4).served_plan() == (4, 1)


@pytest.mark.parametrize("bad", [{"repeats": 0}, {"served_samples": 0}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="heldout needs"):
        HeldoutConfig(**bad)
