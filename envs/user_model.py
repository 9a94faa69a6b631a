"""The simulated user: examination, clicks, dwell, satisfaction and the session decision (numpy).

One call simulates a batch of shown slates [B, K] (B pages, K positions). The model combines the
click-model literature collected in REFERENCES.md, with defaults fitted to published search-log
statistics (`envs.calibration` holds the targets, their sources and the fit):

* **Examination**: the base probability of examining position k is a per-position propensity table.
  The default is the examination curve estimated on Baidu-ULTR by intervention harvesting (Hager et
  al. SIGIR 2024, `propensities/global_all_pairs.csv`), scaled by `examination_top` (rank 1);
  positions past the table continue its last ratio.
* **Vertical attention (FCM, Chen et al. WSDM 2012; VCM, Wang et al. SIGIR 2013)**: a visually rich
  result j raises the examination of itself and its neighbours:
  exam'_k = 1 - (1 - exam_k) * prod_j (1 - beta(|k - j|) * v_j), beta(d) = decay^d for d <= radius.
* **Clicks** depend on perceived relevance and presentation: an examined result is clicked with
  probability sigmoid(click_bias + click_grade * grade + click_attractiveness * logit(attractiveness)).
  Attractiveness (thumbnail, snippet, clickbait, the visual modalities' pull) is not relevance, so an
  attractive irrelevant result still draws clicks that do not satisfy: a click-only reward is gameable.
* **Satisfaction** means the same for every modality: a clicked result of true grade g satisfies with
  probability `satisfaction_by_grade[g]` (default: ERR's stop probability R(g) = (2^g - 1) / 16,
  Chapelle et al. CIKM 2009, floored for grade 0). Modalities keep their own dwell: log(dwell) is
  normal with a per-modality spread, and a click is satisfied when its dwell reaches that modality's
  threshold `satisfied_dwell_s[m]` (30 s for documents, Fox et al. TOIS 2005; shorter for images,
  longer for video: the best threshold varies with the result's kind, Kim et al. WSDM 2014). The
  log-dwell centre is placed so that P(dwell >= threshold | grade) is exactly the per-grade
  satisfaction, so dwell is observable evidence and satisfaction does not depend on the modality.
* **Good abandonment**: a relevant direct answer examined within the top `answer_max_position` slots
  satisfies the user without a click with probability `answer_satisfy_prob[grade]`; a log sees it as
  the card's viewport time reaching `answer_viewport_s` (`envs.viewport`, like the dwell threshold).
* **Cascade / DBN stopping**: after a satisfying event the user stops scanning with probability
  `stop_after_satisfied`; later positions are then never examined.
* **Session decision**: a satisfied user ends the session; an unsatisfied one reformulates (sees the
  next page of the same intent) with probability `reformulate_prob`, otherwise abandons.

Vectorisation: given that the user is still scanning at position k, what happens at k depends only
on the item at k. So every position's outcome "if reached" is drawn at once over [B, K], and the
positions actually reached are those before the first stopping event (a cumulative OR along K).
`envs.user_model_reference.simulate_reference` is the slow, obviously-correct per-item loop of the same maths; the tests and
`smar bench simulate` check that the two agree in distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from envs.config_io import JsonConfig
from envs.pages import MAX_GRADE, MODALITY_ID, N_MODALITIES
from envs.viewport import ViewportModel, answer_band_edges, probit, recycled_uniform

ANSWER = MODALITY_ID["answer"]


def _per_modality(name: str, values: tuple[float, ...], lo: float, hi: float) -> None:
    if len(values) != N_MODALITIES:
        raise ValueError(f"UserModelConfig.{name} needs {N_MODALITIES} values (doc, image, video, answer)")
    for v in values:
        if not lo <= v <= hi:
            raise ValueError(f"UserModelConfig.{name} values must lie in [{lo}, {hi}], got {values}")


# Baidu-ULTR examination relative to rank 1, ranks 1..10 (Hager et al. SIGIR 2024, all-pairs
# intervention harvesting, `philipphager/ultr-reproducibility` propensities/global_all_pairs.csv).
BAIDU_ULTR_EXAMINATION = (1.0, 0.674, 0.414, 0.293, 0.208, 0.171, 0.136, 0.117, 0.084, 0.058)
# ERR's satisfaction (stop) probability R(g) = (2^g - 1) / 16 (Chapelle et al. CIKM 2009); grade 0
# is floored at 0.02 so that its dwell distribution stays finite.
ERR_SATISFACTION = (0.02, 0.0625, 0.1875, 0.4375, 0.9375)


@dataclass(frozen=True)
class UserModelConfig(JsonConfig):
    """Parameters of the simulated user. Per-modality tuples are ordered (doc, image, video, answer).

    The defaults are fitted to published search-log statistics with the SMAR reranker as the
    production ranker (`smar bench simulate` prints the fit beside the published figures)."""

    # Examination: per-position propensity (rank 1 = examination_top), then vertical attention.
    position_examination: tuple[float, ...] = BAIDU_ULTR_EXAMINATION
    examination_top: float = 0.68
    vertical_attention: tuple[float, ...] = (0.0, 0.005, 0.007, 0.003)
    attention_decay: float = 0.5  # beta(d) = decay^d: a neighbour one slot away gets half the pull
    attention_radius: int = 1  # slots either side a vertical's attention reaches (0 = only itself)
    # Clicks: P(click | examined) = sigmoid(click_bias + click_grade * grade + click_attractiveness * logit(att)).
    click_bias: float = -1.13
    click_grade: float = 0.15
    click_attractiveness: float = 0.33
    # Satisfaction of a click per true grade 0..4, the same for every modality.
    satisfaction_by_grade: tuple[float, ...] = ERR_SATISFACTION
    # Dwell: per-modality log-normal spread and the dwell that marks a satisfied click.
    dwell_sigma: tuple[float, ...] = (0.8, 0.7, 0.9, 0.75)
    satisfied_dwell_s: tuple[float, ...] = (30.0, 15.0, 60.0, 20.0)
    stop_after_satisfied: float = 0.2  # DBN-style: P(stop scanning | satisfied at this position)
    # Good abandonment: a direct answer within the top `answer_max_position` slots satisfies without
    # a click with this probability per true grade 0..4.
    answer_max_position: int = 3
    answer_satisfy_prob: tuple[float, ...] = (0.0, 0.0, 0.1, 0.3, 0.6)
    # Viewport time of answer cards, the logged evidence of that satisfaction (`envs.viewport`): these
    # set only the scale and spread of the logged seconds, not which answers satisfy.
    answer_viewport_s: float = 5.0
    answer_viewport_sigma: float = 0.75
    # Session: an unsatisfied user reformulates with this probability, else abandons.
    reformulate_prob: float = 0.46

    def __post_init__(self) -> None:
        if not self.position_examination or not all(0.0 < p <= 1.0 for p in self.position_examination):
            raise ValueError("UserModelConfig.position_examination needs probabilities in (0, 1]")
        if not 0.0 < self.examination_top <= 1.0:
            raise ValueError(
                f"UserModelConfig.examination_top must lie in (0, 1], got {self.examination_top}"
            )
        _per_modality("vertical_attention", self.vertical_attention, 0.0, 1.0)
        _per_modality("dwell_sigma", self.dwell_sigma, 1e-3, 10.0)
        _per_modality("satisfied_dwell_s", self.satisfied_dwell_s, 1e-3, 1e6)
        if not (1e-3 <= self.answer_viewport_s <= 1e4 and 1e-3 <= self.answer_viewport_sigma <= 10.0):
            raise ValueError("UserModelConfig.answer_viewport_s, _sigma outside [1e-3, 1e4], [1e-3, 10]")
        for name in ("attention_decay", "stop_after_satisfied", "reformulate_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"UserModelConfig.{name} must lie in [0, 1], got {v}")
        if self.attention_radius < 0 or self.answer_max_position < 0:
            raise ValueError("UserModelConfig.attention_radius and answer_max_position must be >= 0")
        for name in ("click_bias", "click_grade", "click_attractiveness"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"UserModelConfig.{name} must be finite")
        sat = self.satisfaction_by_grade
        if len(sat) != MAX_GRADE + 1 or not all(0.0 < p < 1.0 for p in sat):
            raise ValueError(
                f"UserModelConfig.satisfaction_by_grade needs {MAX_GRADE + 1} probabilities strictly inside (0, 1)"
            )
        ans = self.answer_satisfy_prob
        if len(ans) != MAX_GRADE + 1 or not all(0.0 <= p <= 1.0 for p in ans):
            raise ValueError(
                f"UserModelConfig.answer_satisfy_prob needs {MAX_GRADE + 1} probabilities (grades 0..4)"
            )

    def examination(self, k: int) -> np.ndarray:
        """Base examination of positions 1..k: the table, continued at its last ratio."""
        table = np.asarray(self.position_examination, np.float64)
        if k > len(table):
            ratio = table[-1] / table[-2] if len(table) > 1 else 1.0
            tail = table[-1] * ratio ** np.arange(1, k - len(table) + 1)
            table = np.concatenate([table, tail])
        return self.examination_top * table[:k]


@dataclass
class UserOutcome:
    """What the simulated user did on B shown slates of K positions."""

    examined: np.ndarray  # [B, K] bool
    click: np.ndarray  # [B, K] bool
    dwell: np.ndarray  # [B, K] float32 seconds; 0.0 where not clicked
    satisfied_click: np.ndarray  # [B, K] bool: click with dwell >= threshold
    answer_satisfied: np.ndarray  # [B, K] bool: a direct answer satisfied without a click
    satisfied: np.ndarray  # [B] bool: any satisfied click or answer satisfaction
    good_abandon: np.ndarray  # [B] bool: satisfied by an answer with no click on the page
    abandon: np.ndarray  # [B] bool: left unsatisfied and will not reformulate
    reformulate: np.ndarray  # [B] bool: unsatisfied and issues the next query of the session
    # `viewport`, or the function that draws it on first use (the RL env never reads it, pays nothing)
    viewport_draw: np.ndarray | Callable[[], np.ndarray] = field(default=None, repr=False)

    @property
    def viewport(self) -> np.ndarray:
        """[B, K] float32 seconds an answer card was on screen (>= answer_viewport_s exactly where
        answer_satisfied); 0.0 on every other item."""
        if callable(self.viewport_draw):
            self.viewport_draw = self.viewport_draw()
        return self.viewport_draw

    @property
    def n_clicks(self) -> np.ndarray:
        return self.click.sum(axis=1)


# ---------------------------------------------------------------------------- model maths (vectorised)
def check_inputs(
    relevance: np.ndarray, attractiveness: np.ndarray, modality: np.ndarray, valid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rel = np.asarray(relevance)
    if rel.ndim != 2:
        raise ValueError(f"relevance must be [B, K], got shape {rel.shape}")
    att = np.asarray(attractiveness, np.float64)
    mod = np.asarray(modality)
    val = np.ones(rel.shape, bool) if valid is None else np.asarray(valid, bool)
    for name, a in (("attractiveness", att), ("modality", mod), ("valid", val)):
        if a.shape != rel.shape:
            raise ValueError(f"{name} has shape {a.shape}, relevance has {rel.shape}")
    if rel.size:
        # Padding slots may hold anything; clamp them so the lookups below stay in range.
        rel = np.where(val, rel, 0).astype(np.int64)
        mod = np.where(val, mod, 0).astype(np.int64)
        if rel.min() < 0 or rel.max() > MAX_GRADE:
            raise ValueError(f"relevance of valid items must lie in 0..{MAX_GRADE}")
        if mod.min() < 0 or mod.max() >= N_MODALITIES:
            raise ValueError(f"modality of valid items must lie in 0..{N_MODALITIES - 1}")
        va = att[val]
        if va.size and (va.min() < 0 or va.max() > 1 or np.isnan(va).any()):
            raise ValueError("attractiveness of valid items must lie in [0, 1]")
    return rel.astype(np.int64), np.where(val, att, 0.0), mod.astype(np.int64), val


def examination_probabilities(
    modality: np.ndarray, valid: np.ndarray | None, config: UserModelConfig
) -> np.ndarray:
    """P(examine position k | still scanning), [B, K]: the position table raised by vertical attention.

    The same code path the vectorised model uses (so golden tests on it test the model)."""
    model = UserModel(config)
    modality = np.asarray(modality)
    code = model.codes(np.zeros(modality.shape, np.int8), modality, valid)
    e = 1.0 - model._miss(np.ascontiguousarray(code.T)).T
    return np.where(code != model.PAD_CODE, e, 0.0)


def dwell_log_params(
    relevance: np.ndarray, modality: np.ndarray, config: UserModelConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of log(dwell seconds) per item: mu = log(threshold[m]) + sigma[m] * Phi^-1(sat[g]),
    so that P(dwell >= threshold[m] | grade g) = satisfaction_by_grade[g] for every modality m."""
    modality = np.asarray(modality, np.int64)
    relevance = np.asarray(relevance, np.int64)
    sigma = np.asarray(config.dwell_sigma)[modality]
    z = probit(np.asarray(config.satisfaction_by_grade))[relevance]
    mu = np.log(np.asarray(config.satisfied_dwell_s))[modality] + sigma * z
    return mu, sigma


def satisfied_click_probability(relevance: int, modality: int, config: UserModelConfig) -> float:
    """P(dwell >= threshold[modality] | click) = 1 - Phi((log(threshold) - mu) / sigma)."""
    mu, sigma = dwell_log_params(np.array([relevance]), np.array([modality]), config)
    z = (math.log(config.satisfied_dwell_s[modality]) - float(mu[0])) / float(sigma[0])
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def click_probability(
    relevance: np.ndarray, attractiveness: np.ndarray, config: UserModelConfig
) -> np.ndarray:
    """P(click | examined) = sigmoid(click_bias + click_grade * grade + click_attractiveness * logit(att))."""
    att = np.clip(np.asarray(attractiveness, np.float64), 1e-6, 1.0 - 1e-6)
    logit = (
        config.click_bias
        + config.click_grade * np.asarray(relevance, np.float64)
        + config.click_attractiveness * np.log(att / (1.0 - att))
    )
    return 1.0 / (1.0 + np.exp(-logit))


def satisfied_dwell_thresholds(config: UserModelConfig) -> np.ndarray:
    """Per-modality dwell (seconds) at or above which a logged click counts as satisfied."""
    return np.asarray(config.satisfied_dwell_s, np.float64)


class UserModel:
    """Vectorised simulated user over batches of shown slates.

    Speed matters (the RL env, the traffic simulator and offline simulation all call it), so the
    per-item parameters are looked up from small tables indexed by code = modality * 5 + grade,
    arithmetic is float32, and dwell noise is drawn only for the clicks that happen.
    """

    PAD_CODE = N_MODALITIES * (MAX_GRADE + 1)
    CHUNK = 2048  # pages per vectorised block

    def __init__(self, config: UserModelConfig | dict | None = None) -> None:
        if isinstance(config, dict):
            config = UserModelConfig.from_json(config)
        self.config = c = config or UserModelConfig()
        n_codes = self.PAD_CODE + 1
        mod = np.repeat(np.arange(N_MODALITIES), MAX_GRADE + 1)
        grade = np.tile(np.arange(MAX_GRADE + 1), N_MODALITIES)
        mu, sigma = dwell_log_params(grade, mod, c)

        def table(values: np.ndarray, pad: float) -> np.ndarray:
            return np.append(values, pad).astype(np.float32)[:n_codes]

        self._pull = table(np.asarray(c.vertical_attention)[mod], 0.0)  # v_m
        self._answer_p = table(np.where(mod == ANSWER, np.asarray(c.answer_satisfy_prob)[grade], 0.0), 0.0)
        self._mu = table(mu, 0.0)
        self._sigma = table(sigma, 1.0)
        self._log_threshold = table(np.log(np.asarray(c.satisfied_dwell_s))[mod], 0.0)
        self._click_logit = table(c.click_bias + c.click_grade * grade, -30.0)
        self._is_answer = np.append(mod == ANSWER, False)[:n_codes]
        self._viewport = ViewportModel(c)

    def codes(self, relevance: np.ndarray, modality: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """Validated per-item table codes [B, K] (PAD_CODE on padding)."""
        rel = np.asarray(relevance)
        mod = np.asarray(modality)
        if rel.ndim != 2:
            raise ValueError(f"relevance must be [B, K], got shape {rel.shape}")
        if mod.shape != rel.shape:
            raise ValueError(f"modality has shape {mod.shape}, relevance has {rel.shape}")
        code = mod.astype(np.int16) * (MAX_GRADE + 1) + rel.astype(np.int16)
        if valid is not None:
            valid = np.asarray(valid, bool)
            if valid.shape != rel.shape:
                raise ValueError(f"valid has shape {valid.shape}, relevance has {rel.shape}")
            code = np.where(valid, code, self.PAD_CODE)
            rel = np.where(valid, rel, 0)
            mod = np.where(valid, mod, 0)
        if rel.size and (rel.min() < 0 or rel.max() > MAX_GRADE):
            raise ValueError(f"relevance of valid items must lie in 0..{MAX_GRADE}")
        if mod.size and (mod.min() < 0 or mod.max() >= N_MODALITIES):
            raise ValueError(f"modality of valid items must lie in 0..{N_MODALITIES - 1}")
        return code

    def simulate(
        self,
        relevance: np.ndarray,
        attractiveness: np.ndarray,
        modality: np.ndarray,
        valid: np.ndarray | None,
        rng: np.random.Generator,
    ) -> UserOutcome:
        """Simulate one user per shown slate. Inputs [B, K] in shown order; `valid` masks padding."""
        code = self.codes(relevance, modality, valid)
        att = np.asarray(attractiveness, np.float32)
        if att.shape != code.shape:
            raise ValueError(f"attractiveness has shape {att.shape}, relevance has {code.shape}")
        padded = valid is not None and bool((code == self.PAD_CODE).any())
        if padded:
            att = np.where(code != self.PAD_CODE, att, np.float32(0.0))
        if att.size and not (att.min() >= 0.0 and att.max() <= 1.0):
            raise ValueError("attractiveness of valid items must lie in [0, 1]")
        b = code.shape[0]
        if b <= self.CHUNK:
            return self._simulate(code, att, padded, rng)
        # Chunks keep the working set in cache, which one huge batch spills.
        parts = [
            self._simulate(code[i : i + self.CHUNK], att[i : i + self.CHUNK], padded, rng)
            for i in range(0, b, self.CHUNK)
        ]
        eager = [f.name for f in fields(UserOutcome) if f.name != "viewport_draw"]  # the viewport stays lazy
        return UserOutcome(
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in eager},
            viewport_draw=lambda: np.concatenate([p.viewport for p in parts]),
        )

    def _miss(self, code: np.ndarray) -> np.ndarray:
        """P(not examined | reached), [K, B] from codes [K, B]:
        (1 - exam_k) * prod_{|j - k| <= radius} (1 - decay^|j - k| * v_j)."""
        c = self.config
        k, b = code.shape
        pull = self._pull.take(code)
        miss = np.empty((k, b), np.float32)
        miss[:] = (1.0 - c.examination(k)).astype(np.float32)[:, None]
        for d in range(min(c.attention_radius, k - 1) + 1):
            f = 1.0 - np.float32(c.attention_decay**d) * pull  # source j's pull on j +- d
            if d == 0:
                miss *= f
            else:
                miss[d:] *= f[: k - d]
                miss[:-d] *= f[d:]
        return miss

    def _simulate(
        self, code: np.ndarray, att: np.ndarray, padded: bool, rng: np.random.Generator
    ) -> UserOutcome:
        """One block of pages. Works in a [K, B] layout so every step along the slate is a contiguous
        row operation; the outputs are returned as [B, K] (transposed views)."""
        c = self.config
        b, k = code.shape
        code = np.ascontiguousarray(code.T)
        att = np.ascontiguousarray(att.T)
        # One uniform per item decides examination, answer satisfaction, click and stopping by
        # splitting [0, 1) into bands (uniform recycling: within a band, the position of u is again
        # uniform and independent of which band was hit):
        #   [0, a*s) answer satisfies, stops | [a*s, a) answer satisfies, goes on
        #   [a, a + w) click (its stop decision: (u - a) < w * s, used only if the dwell satisfies)
        #   [a + w, e) examined, nothing     | [e, 1) not examined
        # with e = P(examine), a = e * P(answer satisfies), w = e * (1 - P(answer)) * P(click).
        u = rng.random((k, b), dtype=np.float32)
        u_page = rng.random(b, dtype=np.float32)
        miss = self._miss(code)
        e = 1.0 - miss
        if padded:
            e[code == self.PAD_CODE] = 0.0
        p_ans = self._answer_p.take(code)
        p_ans[c.answer_max_position :] = 0.0
        att_c = np.clip(att, np.float32(1e-6), np.float32(1.0 - 1e-6))
        logit = self._click_logit.take(code) + np.float32(c.click_attractiveness) * np.log(
            att_c / (1.0 - att_c)
        )
        p_click = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        a = e * p_ans
        w = (e - a) * p_click
        s = np.float32(c.stop_after_satisfied)
        ans_if = u < a
        click_if = (u >= a) & (u < a + w)
        # Dwell only for clicks: log(dwell) = mu + sigma * z.
        idx = np.flatnonzero(click_if)
        cc = code.ravel().take(idx)
        log_d = self._mu.take(cc) + self._sigma.take(cc) * rng.standard_normal(len(idx), dtype=np.float32)
        sat = log_d >= self._log_threshold.take(cc)
        sat_click_if = np.zeros((k, b), bool)
        sat_click_if.ravel()[idx[sat]] = True
        stop_if = (u < a * s) | (sat_click_if & (u - a < w * s))
        # Reached position k <=> no stop at positions < k (a running OR down the slate).
        reached = np.ones((k, b), bool)
        if k > 1:
            np.logical_or.accumulate(stop_if[:-1], axis=0, out=reached[1:])
            np.logical_not(reached[1:], out=reached[1:])
        click = click_if & reached
        sat_click = sat_click_if & reached
        ans = ans_if & reached
        dwell = np.zeros((k, b), np.float32)
        dwell.ravel()[idx] = np.exp(log_d)
        dwell *= click
        ans_any = ans.any(axis=0)
        satisfied = sat_click.any(axis=0) | ans_any
        reformulate = ~satisfied & (u_page < np.float32(c.reformulate_prob))

        def draw_viewport() -> np.ndarray:  # recycles each answer's own uniform: no new draws
            viewport = np.zeros((k, b), np.float32)
            ia = np.flatnonzero(self._is_answer.take(code))
            if ia.size:
                edges = answer_band_edges(a.ravel()[ia], w.ravel()[ia], e.ravel()[ia], float(s))
                r = recycled_uniform(u.ravel()[ia], edges)
                grade = code.ravel()[ia] % (MAX_GRADE + 1)
                viewport.ravel()[ia] = self._viewport.seconds(ans.ravel()[ia], grade, r)
            return viewport.T

        return UserOutcome(
            examined=((u < e) & reached).T,
            click=click.T,
            dwell=dwell.T,
            satisfied_click=sat_click.T,
            answer_satisfied=ans.T,
            satisfied=satisfied,
            good_abandon=ans_any & ~click.any(axis=0),
            abandon=~satisfied & ~reformulate,
            reformulate=reformulate,
            viewport_draw=draw_viewport,
        )
