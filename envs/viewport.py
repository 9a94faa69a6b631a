"""Viewport time of direct answers: what a log can see of an answer that satisfied without a click.

An answer that satisfies on the page draws no click, so a click log cannot tell good abandonment from
bad. Production engines observe it through the answer card's *viewport time*, how long the card was
on screen: on mobile, per-result viewport duration tracks gaze duration closely, and a relevant answer
shows in the viewport data (an irrelevant one: more scrolling past it and more time below it) --
Lagun, Hsieh, Webster & Navalpakkam, SIGIR 2014, "Towards better measurement of attention and
satisfaction in mobile search". Williams et al. (WWW 2016, "Detecting good abandonment in mobile
search") detect good abandonment from such reading-time and gesture signals.

The simulated signal is built in the style of the dwell model (`envs.user_model.dwell_log_params`):
log(viewport seconds) of an answer of grade g is normal with spread `answer_viewport_sigma` and mean
log(threshold) + sigma * Phi^-1(p_g), p_g = `answer_satisfy_prob[g]` clipped to [0.02, 0.98], and an
answer satisfied without a click exactly when its viewport reached `answer_viewport_s`. So, as with
dwell and satisfied clicks, the threshold is exact evidence in the simulator, and relevant answers are
viewed longer. (Real viewport evidence is noisier: Williams et al. reach 75% accuracy with all their
features; the simulator models none of that noise.) The threshold and the spread set only the scale
and the shape of the logged seconds, never a probability: which answers satisfy is decided by the user
model as before. Only answer cards get a viewport (0 elsewhere); a clicked answer's satisfaction is
its dwell's, and its viewport stays below the threshold.

The draw needs no new random numbers: the user model's per-item uniform is recycled from within the
band it fell in (`recycled_uniform`), which is again uniform and independent of every decision the
band made, so the clicks, dwell and satisfaction of any seed are exactly what they were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # envs.user_model imports this module
    from envs.user_model import UserModelConfig

_P_CLIP = (0.02, 0.98)  # keeps every grade's log-viewport centre finite (grade 0 never satisfies)
_EPS = 1e-7

# Acklam's rational approximation of the standard normal quantile (relative error < 1.2e-9),
# vectorised: the env package has no scipy.
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)  # fmt: skip
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


def _poly(coef: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    out = np.full_like(x, coef[0])
    for c in coef[1:]:
        out = out * x + c
    return out


def probit(q: np.ndarray) -> np.ndarray:
    """Phi^-1(q) for q in (0, 1), float64 (Acklam's algorithm)."""
    q = np.clip(np.asarray(q, np.float64), 1e-300, 1.0 - 1e-16)
    lo, hi = 0.02425, 1.0 - 0.02425
    out = np.empty_like(q)
    mid = (q >= lo) & (q <= hi)
    r = q[mid] - 0.5
    s = r * r
    out[mid] = _poly(_A, s) * r / (_poly(_B, s) * s + 1.0)
    tail = ~mid
    t = np.sqrt(-2.0 * np.log(np.where(q[tail] < 0.5, q[tail], 1.0 - q[tail])))
    x = _poly(_C, t) / (_poly(_D, t) * t + 1.0)
    out[tail] = np.where(q[tail] < 0.5, x, -x)
    return out


def recycled_uniform(u: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The position of u inside the band it fell in, rescaled to (0, 1).

    u: [n] uniforms; edges: [n, m + 1] non-decreasing band edges from 0 to 1. Given the band, u is
    uniform on it, so the result is uniform and independent of which band was hit."""
    u = np.asarray(u, np.float64)
    edges = np.asarray(edges, np.float64)
    band = (u[:, None] >= edges[:, 1:-1]).sum(axis=1)
    lo = np.take_along_axis(edges, band[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(edges, band[:, None] + 1, axis=1)[:, 0]
    return np.clip((u - lo) / np.maximum(hi - lo, 1e-30), _EPS, 1.0 - _EPS)


def answer_viewport_threshold(config: UserModelConfig) -> float:
    """Viewport (seconds) at or above which a logged unclicked answer counts as satisfied."""
    return float(config.answer_viewport_s)


class ViewportModel:
    """Per-grade parameters of answer viewport time, computed once per user-model config."""

    def __init__(self, config: UserModelConfig) -> None:
        p = np.clip(np.asarray(config.answer_satisfy_prob, np.float64), *_P_CLIP)
        self.p = p  # [grade] P(viewport >= threshold) of an examined top answer, clipped
        self.sigma = float(config.answer_viewport_sigma)
        self.mu = np.log(config.answer_viewport_s) + self.sigma * probit(p)  # [grade]
        thr = np.float32(config.answer_viewport_s)
        # The float32 range on each side of the threshold, so rounding never moves a draw across it.
        self.at_or_above = (
            thr if float(thr) >= config.answer_viewport_s else np.nextafter(thr, np.float32(np.inf))
        )
        self.below = np.nextafter(self.at_or_above, np.float32(0.0))

    def seconds(self, satisfied: np.ndarray, grade: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """Viewport seconds (float32) of answer cards: from the upper tail (>= the threshold) of the
        grade's log-normal where the answer satisfied without a click, from the lower tail elsewhere,
        by inverse CDF of `uniform` (in (0, 1)). viewport >= answer_viewport_s exactly when satisfied."""
        sat = np.asarray(satisfied, bool)
        grade = np.asarray(grade, np.int64)
        p = self.p[grade]
        r = np.clip(np.asarray(uniform, np.float64), _EPS, 1.0 - _EPS)
        q = np.where(sat, 1.0 - p + r * p, r * (1.0 - p))
        v = np.exp(self.mu[grade] + self.sigma * probit(q)).astype(np.float32)
        return np.where(sat, np.maximum(v, self.at_or_above), np.minimum(v, self.below)).astype(np.float32)


def viewport_seconds(
    satisfied: np.ndarray, grade: np.ndarray, uniform: np.ndarray, config: UserModelConfig
) -> np.ndarray:
    """`ViewportModel(config).seconds(...)` in one call (the reference loop and tests)."""
    return ViewportModel(config).seconds(satisfied, grade, uniform)


def answer_band_edges(a: np.ndarray, w: np.ndarray, e: np.ndarray, s: float) -> np.ndarray:
    """The user model's bands of one item's uniform ([n, 7] edges; `envs.user_model.UserModel._simulate`):
    answer satisfies and stops | satisfies, goes on | click, stop if satisfied | click, go on |
    examined, nothing | not examined."""
    a, w, e = (np.asarray(x, np.float64) for x in (a, w, e))
    zero, one = np.zeros_like(a), np.ones_like(a)
    return np.stack([zero, a * s, a, a + w * s, a + w, np.maximum(e, a + w), one], axis=1)
