"""The user model's maths as a slow, obviously-correct loop over sessions and positions.

`envs.user_model.UserModel` is the vectorised implementation; the tests and the speed bench check it
against this one (same distribution of outcomes, and the speed ratio).
"""

from __future__ import annotations

import math

import numpy as np

from envs.user_model import (
    ANSWER,
    UserModelConfig,
    UserOutcome,
    check_inputs,
    click_probability,
    dwell_log_params,
)
from envs.viewport import viewport_seconds


def simulate_reference(
    relevance: np.ndarray,
    attractiveness: np.ndarray,
    modality: np.ndarray,
    valid: np.ndarray | None,
    rng: np.random.Generator,
    config: UserModelConfig | None = None,
) -> UserOutcome:
    """The same user, one page and one position at a time in plain Python (tests and benchmark only).

    Written to be read against the module docstring, not to be fast: the user scans down the page,
    and each step follows the story literally.
    """
    c = config or UserModelConfig()
    rel_a, att_a, mod_a, val_a = check_inputs(relevance, attractiveness, modality, valid)
    rel_l, att_l, mod_l, val_l = rel_a.tolist(), att_a.tolist(), mod_a.tolist(), val_a.tolist()
    b, k = rel_a.shape
    out = {
        name: np.zeros((b, k), bool) for name in ("examined", "click", "satisfied_click", "answer_satisfied")
    }
    dwell_out = np.zeros((b, k), np.float32)
    page = {name: np.zeros(b, bool) for name in ("satisfied", "good_abandon", "abandon", "reformulate")}
    for p in range(b):
        rel, att, mod, val = rel_l[p], att_l[p], mod_l[p], val_l[p]
        satisfied = False
        any_click = False
        any_answer = False
        for pos in range(k):
            if not val[pos]:
                continue
            # Examination: PBM base, then every visible vertical within reach pulls attention here.
            not_examined = 1.0 - float(c.examination(pos + 1)[pos])
            for j in range(k):
                dist = abs(j - pos)
                if val[j] and dist <= c.attention_radius:
                    not_examined *= 1.0 - (c.attention_decay**dist) * c.vertical_attention[mod[j]]
            if rng.random() >= 1.0 - not_examined:
                continue
            out["examined"][p, pos] = True
            satisfied_here = False
            if (
                mod[pos] == ANSWER
                and pos < c.answer_max_position
                and rng.random() < c.answer_satisfy_prob[rel[pos]]
            ):
                out["answer_satisfied"][p, pos] = True
                any_answer = True
                satisfied_here = True
            elif rng.random() < float(click_probability(rel[pos], att[pos], c)):
                out["click"][p, pos] = True
                any_click = True
                mu, sigma = dwell_log_params(np.array([rel[pos]]), np.array([mod[pos]]), c)
                dwell = math.exp(float(mu[0]) + float(sigma[0]) * rng.standard_normal())
                dwell_out[p, pos] = dwell
                if dwell >= c.satisfied_dwell_s[mod[pos]]:
                    out["satisfied_click"][p, pos] = True
                    satisfied_here = True
            if satisfied_here:
                satisfied = True
                if rng.random() < c.stop_after_satisfied:
                    break
        page["satisfied"][p] = satisfied
        page["good_abandon"][p] = any_answer and not any_click
        if not satisfied:
            if rng.random() < c.reformulate_prob:
                page["reformulate"][p] = True
            else:
                page["abandon"][p] = True
    # Every answer card's viewport: the grade's log-normal, above the threshold iff it satisfied.
    answer = val_a & (mod_a == ANSWER)
    viewport = np.zeros((b, k), np.float32)
    viewport[answer] = viewport_seconds(
        out["answer_satisfied"][answer], rel_a[answer], rng.random(int(answer.sum())), c
    )
    return UserOutcome(dwell=dwell_out, viewport_draw=viewport, **out, **page)
