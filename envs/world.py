"""The synthetic search world: a stand-in for a multimodal search engine, deterministic by seed.

Why it looks like this: SMAR exists because single-modal ranker scores are not comparable across
modalities. The world therefore has one *cross-modal* truth (a graded relevance 0-4 that includes how
well a modality fits the query's intent) but exposes each modality through its own feature map, with
its own dimension, distribution and numeric scale. Single-modal training data is abundant but labelled
only within a modality; whole pages (mixing modalities) are scarce and must be annotated.

Latent model, per query q (with user u) and item i of modality m:
  * intent: a preferred modality t_q (doc/image/video/answer) with strength s_q; the modality fit is
    fit_q(m) = (1 - s_q) * base(m) + s_q * 1[m = t_q], nudged by the user's modality affinity.
  * topic: the query has a topic direction z_q (a unit vector in `topic_dim` dimensions), carried in
    its features through the query projection (a reformulation rewords the query, keeps the topic);
    every candidate has its own topic direction z_i, carried in its features through the modality's
    feature map. The topical match is the squashed cosine match = (1 + cos(z_q, z_i)) / 2.
  * item latents: topic, quality, clickbait, and a nuisance factor.
  * utility = w_match*match + w_quality*quality + w_fit*fit_q(m) + noise; relevance = grade(utility).
  * single-modal label = grade of the within-modality part (match, quality) with per-modality cut
    points, so it orders items like the true grade within a modality but not across modalities.
  * attractiveness (thumbnails, clickbait) rises with match and clickbait and with visual modalities:
    correlated with relevance but distinct from it.
  * observed features = per-modality nonlinear transform of a random projection of the latents plus
    noise; answer/doc/video/image differ in dimension and scale (counts, [0,1], seconds, [-1,1]).

Why the match is a query-item function. In real search, within-modality relevance is mostly topical
match between a query and a result: no property of the result alone says whether it matches, so a
ranker learns it from many distinct queries. That is the asymmetry SMAR leans on: single-modal teams
have many queries per modality (`single_modal_queries`, millions in production), while a whole-page
annotation pool has few (a fifth of `queries`, times `reformulations`). An item-only match would let
a few hundred pool queries teach the within-modality order as well as the abundant single-modal data,
which removes the reason to transfer it from the single-modal rankers.

Candidate topics. A retrieval stage is recall-oriented: a query's candidates range from on-topic to
off-topic. Each candidate's cosine to the query topic is drawn as c = 2*Beta(2, 2) - 1 (symmetric in
[-1, 1]) and its topic direction is z_i = c*z_q + sqrt(1 - c^2)*u with u a random unit vector
orthogonal to z_q. Hence match = (1 + c)/2 ~ Beta(2, 2), the same marginal as the item-only match
it replaces, so grade and label distributions are unchanged; and because c is symmetric around 0
the candidates' topics average out on a page, so the page itself does not reveal the query topic:
only the query features do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from envs.config_io import JsonConfig
from envs.pages import MAX_GRADE, MODALITIES, N_MODALITIES, Pages

WHOLE_PAGE_SPLITS = ("pool", "valid", "test", "traffic")


@dataclass(frozen=True)
class WorldConfig(JsonConfig):
    """Size and shape of the synthetic world. Defaults are the built-in demo world."""

    seed: int = 0
    queries: int = 1000  # whole-page queries, split by `split_fractions`
    candidates_per_modality: int = 10
    reformulations: int = 3  # pages per whole-page query (a session's reformulations)
    split_fractions: tuple[float, float, float, float] = (0.2, 0.1, 0.2, 0.5)  # pool, valid, test, traffic
    single_modal_queries: int = 4000  # per modality; abundant single-modal labelled data (20x the pool)
    users: int = 500
    query_dim: int = 20  # >= 4 + topic_dim: the query features carry the intent and the topic
    user_dim: int = 6
    feature_dims: dict[str, int] = field(
        default_factory=lambda: {"doc": 24, "image": 16, "video": 20, "answer": 12}
    )
    intent_probs: tuple[float, float, float, float] = (0.4, 0.2, 0.25, 0.15)  # preferred modality
    w_match: float = 0.45
    w_quality: float = 0.2
    w_fit: float = 0.35
    utility_noise: float = 0.03
    grade_cuts: tuple[float, float, float, float] = (0.36, 0.48, 0.6, 0.72)
    feature_noise: float = 0.35
    # Query-item topical match (see the module docstring). Real topic spaces are high-dimensional;
    # the number of distinct queries needed to learn a match grows with this dimension.
    topic_dim: int = 16

    def __post_init__(self) -> None:
        if set(self.feature_dims) != set(MODALITIES):
            raise ValueError(f"feature_dims must name exactly {MODALITIES}, got {sorted(self.feature_dims)}")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must sum to 1, got {self.split_fractions}")
        if self.queries < 10 or self.candidates_per_modality < 2:
            raise ValueError("a world needs at least 10 queries and 2 candidates per modality")
        if self.topic_dim < 2:
            raise ValueError(f"topic_dim must be >= 2 (a cosine needs a direction), got {self.topic_dim}")
        if self.query_dim < N_MODALITIES + self.topic_dim:
            raise ValueError(
                f"query_dim ({self.query_dim}) must be >= {N_MODALITIES} + topic_dim ({self.topic_dim}) "
                "so that query features carry the intent and the topic"
            )


@dataclass
class ItemTruth:
    """Simulator-only truth per item, aligned with a `Pages` batch. Learners never read this."""

    relevance: np.ndarray  # (T,) int8, true cross-modal grade 0..4
    attractiveness: np.ndarray  # (T,) float32 in (0, 1)
    preferred_modality: np.ndarray  # (P,) int8, the query's intent


@dataclass
class Split:
    """Pages as a learner may see them, plus the truth only the simulator and oracle may read."""

    pages: Pages
    truth: ItemTruth


@dataclass
class World:
    config: WorldConfig
    single_modal: dict[str, Split]  # per modality; `relevance` holds within-modality labels
    pool: Split  # whole pages for budgeted annotation; public relevance hidden (-1)
    valid: Split
    test: Split
    traffic: Split  # whole pages for the simulated users (RL and online traffic)

    def whole_page_splits(self) -> dict[str, Split]:
        return {name: getattr(self, name) for name in WHOLE_PAGE_SPLITS}

    def summary(self) -> dict:
        """Counts per split and label distributions per modality (for `smar world`)."""
        out: dict = {"config": self.config.to_json(), "splits": {}}
        for name, split in [(f"single_modal/{m}", s) for m, s in self.single_modal.items()] + list(
            self.whole_page_splits().items()
        ):
            p = split.pages
            mods = {}
            for mid, m in enumerate(MODALITIES):
                sel = p.modality == mid
                if not sel.any():
                    continue
                labels = (
                    split.pages.relevance if (split.pages.relevance >= 0).all() else split.truth.relevance
                )
                grades = labels[sel]
                mods[m] = {
                    "items": int(sel.sum()),
                    "grades": np.bincount(grades, minlength=MAX_GRADE + 1).tolist(),
                    "feature_abs_mean": float(np.abs(p.features[sel][:, : p.feature_dims[m]]).mean()),
                }
            out["splits"][name] = {"pages": len(p), "items": p.n_items, "modalities": mods}
        return out


class _FeatureMaps:
    """Per-modality random projections and nonlinearities from latents to observed features.

    Item latents, in column order: quality, clickbait, the item's topic (`topic_dim` columns, scaled so
    the topic carries a fixed share of each feature's variance whatever `topic_dim`), one nuisance.
    The topic and the nuisance together carry about the variance the four nuisance factors of the
    item-only-match world did, so each modality's feature scale is unchanged.
    """

    N_NUISANCE = 1
    TOPIC_VARIANCE = 3.2  # summed over the topic columns (a unit vector times sqrt of this)

    BASE_COLUMNS = 7  # projection columns drawn from the generator's main stream

    def __init__(self, cfg: WorldConfig, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.n_latent = 2 + cfg.topic_dim + self.N_NUISANCE
        # The first 7 columns take the same draws as the item-only-match world's 7-latent projection,
        # further columns come from their own stream: the generator's later draws (user, query and the
        # single-modal cut points) stay the same whatever `topic_dim`, so label distributions compare.
        extra_rng = np.random.default_rng([cfg.seed, 0, 2])
        self.proj = {}
        for m in MODALITIES:
            d = cfg.feature_dims[m]
            a = rng.normal(0.0, 1.0, (d, self.BASE_COLUMNS))
            extra = extra_rng.normal(0.0, 1.0, (d, max(self.n_latent - self.BASE_COLUMNS, 0)))
            a = np.concatenate([a, extra], axis=1)[:, : self.n_latent]
            a[:, 0] *= 1.6  # quality drives features as strongly as before
            self.proj[m] = (a, rng.normal(0.0, 0.5, d))

    def latents(
        self, quality: np.ndarray, clickbait: np.ndarray, topic: np.ndarray, nuisance: np.ndarray
    ) -> np.ndarray:
        scale = np.sqrt(self.TOPIC_VARIANCE)
        return np.column_stack([quality - 0.5, clickbait - 0.25, topic * scale, nuisance])

    def __call__(self, m: str, latents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        a, b = self.proj[m]
        z = latents @ a.T + b + rng.normal(0.0, self.cfg.feature_noise, (len(latents), len(b)))
        if m == "doc":  # engagement-count-like: heavy-tailed, large
            return np.round(np.exp(1.2 * z) * 40.0)
        if m == "image":  # visual scores in [0, 1]
            return 1.0 / (1.0 + np.exp(-z))
        if m == "video":  # seconds-like durations and watch statistics
            return np.log1p(np.exp(z)) * 90.0
        return np.tanh(0.8 * z)  # answer: LLM self-scores in [-1, 1]


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _grade(u: np.ndarray, cuts: tuple[float, ...]) -> np.ndarray:
    return np.digitize(u, cuts).astype(np.int8)


class WorldGenerator:
    """Draws queries, users and candidate items. `generate()` builds the standard splits."""

    BASE_FIT = np.array([0.55, 0.35, 0.35, 0.45])  # how acceptable each modality is off-intent
    ATTRACT_BIAS = np.array([-0.6, 0.5, 0.7, -0.2])  # visual results draw the eye

    def __init__(self, cfg: WorldConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        self.maps = _FeatureMaps(cfg, rng)
        self.user_affinity = rng.normal(0.0, 0.12, (cfg.users, N_MODALITIES))
        self.user_latent = rng.normal(0.0, 1.0, (cfg.users, 2))
        self.user_proj = rng.normal(0.0, 1.0, (cfg.user_dim, N_MODALITIES + 2))
        # Query latents: intent (one-hot times strength, 4) and topic (topic_dim, unit vector * sqrt(dim)).
        # An 8 x 5 block takes the draws of the item-only-match world's default projection (8 features;
        # intent + a noise latent), the rest comes from its own stream, so that the draws below (the
        # single-modal cut points) are the same as there and label distributions stay comparable.
        base = rng.normal(0.0, 1.0, (8, N_MODALITIES + 1))
        proj = np.random.default_rng([cfg.seed, 0, 1]).normal(
            0.0, 1.0, (cfg.query_dim, N_MODALITIES + cfg.topic_dim)
        )
        r, c = min(cfg.query_dim, 8), min(N_MODALITIES + cfg.topic_dim, N_MODALITIES + 1)
        proj[:r, :c] = base[:r, :c]
        self.query_proj = proj
        # Per-modality cut points for single-modal labels: each modality's labels use its own scale.
        self.sm_cuts = {m: tuple(np.sort(rng.uniform(0.25, 0.8, MAX_GRADE))) for m in MODALITIES}

    # ------------------------------------------------------------------ draws
    def _user_features(self, users: np.ndarray) -> np.ndarray:
        lat = np.concatenate([self.user_affinity[users] * 8.0, self.user_latent[users]], axis=1)
        return np.tanh(lat @ self.user_proj.T * 0.5)

    def _queries(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        intent = rng.choice(N_MODALITIES, size=n, p=np.array(self.cfg.intent_probs))
        strength = rng.uniform(0.4, 1.0, n)
        topic = _unit(rng.normal(0.0, 1.0, (n, self.cfg.topic_dim)))
        onehot = np.eye(N_MODALITIES)[intent]
        qlat = np.concatenate([onehot * strength[:, None], topic * np.sqrt(self.cfg.topic_dim)], axis=1)
        qfeat = qlat @ self.query_proj.T + rng.normal(0.0, 0.15, (n, self.cfg.query_dim))
        return {"intent": intent, "strength": strength, "topic": topic, "features": qfeat}

    def _items(
        self,
        rng: np.random.Generator,
        modality: str,
        n: int,
        fit: float | np.ndarray,
        query_topic: np.ndarray,
    ) -> dict[str, np.ndarray]:
        cfg = self.cfg
        mid = MODALITIES.index(modality)
        # Retrieved candidates spread from off- to on-topic: cosine c to the query topic, symmetric in
        # [-1, 1]; the item's topic is c * z_q plus sqrt(1 - c^2) times a random orthogonal direction.
        cos = 2.0 * rng.beta(2.0, 2.0, n) - 1.0
        u = rng.normal(0.0, 1.0, (n, cfg.topic_dim))
        u = _unit(u - (u @ query_topic)[:, None] * query_topic[None, :])
        topic = cos[:, None] * query_topic[None, :] + np.sqrt(1.0 - cos**2)[:, None] * u
        match = (1.0 + np.sum(topic * query_topic[None, :], axis=1)) / 2.0  # squashed cosine, in [0, 1]
        quality = rng.beta(2.5, 2.0, n)
        clickbait = rng.beta(1.5, 4.0, n)
        nuisance = rng.normal(0.0, 1.0, (n, self.maps.N_NUISANCE))
        feats = self.maps(modality, self.maps.latents(quality, clickbait, topic, nuisance), rng)
        within = (cfg.w_match * match + cfg.w_quality * quality) / (cfg.w_match + cfg.w_quality)
        noise = rng.normal(0.0, cfg.utility_noise, n)
        utility = cfg.w_match * match + cfg.w_quality * quality + cfg.w_fit * fit + noise
        attract_logit = self.ATTRACT_BIAS[mid] + 2.5 * (match - 0.5) + 4.0 * (clickbait - 0.25)
        attract = 1.0 / (1.0 + np.exp(-(attract_logit + rng.normal(0.0, 0.3, n))))
        return {
            "features": feats.astype(np.float32),
            "match": match,  # simulator-only latents, for tests: never put into Pages
            "topic": topic,
            "relevance": _grade(utility, cfg.grade_cuts),
            "sm_label": _grade(within + noise, self.sm_cuts[modality]),
            "attractiveness": attract.astype(np.float32),
        }

    def _fit(self, intent: np.ndarray, strength: np.ndarray, users: np.ndarray) -> np.ndarray:
        """Modality fit per (query, modality), (n, 4), in [0, 1]."""
        onehot = np.eye(N_MODALITIES)[intent]
        fit = (1 - strength[:, None]) * self.BASE_FIT + strength[:, None] * onehot
        return np.clip(fit + self.user_affinity[users], 0.0, 1.0)

    # ------------------------------------------------------------------ pages
    def whole_pages(self, rng: np.random.Generator, n_queries: int, prefix: str) -> Split:
        """`n_queries` intents x `reformulations` pages, each with K candidates of every modality."""
        cfg = self.cfg
        k, r = cfg.candidates_per_modality, cfg.reformulations
        q = self._queries(rng, n_queries)
        users = rng.integers(0, cfg.users, n_queries)
        fit = self._fit(q["intent"], q["strength"], users)
        ufeat = self._user_features(users)
        dmax = max(cfg.feature_dims.values())
        page_ids, query_ids, qf, uf, pref = [], [], [], [], []
        item_ids, mods, feats, rel, attract = [], [], [], [], []
        for qi in range(n_queries):
            for ri in range(r):
                pid = f"{prefix}-q{qi:05d}-r{ri}"
                page_ids.append(pid)
                query_ids.append(f"{prefix}-q{qi:05d}")
                # A reformulation keeps the intent but words it differently (query features shift).
                qf.append(q["features"][qi] + rng.normal(0.0, 0.1, cfg.query_dim) * (ri > 0))
                uf.append(ufeat[qi])
                pref.append(q["intent"][qi])
                for mid, m in enumerate(MODALITIES):
                    it = self._items(rng, m, k, fit[qi, mid], q["topic"][qi])
                    f = np.zeros((k, dmax), np.float32)
                    f[:, : cfg.feature_dims[m]] = it["features"]
                    feats.append(f)
                    mods.append(np.full(k, mid, np.int8))
                    rel.append(it["relevance"])
                    attract.append(it["attractiveness"])
                    item_ids.extend(f"{pid}-{m}{j}" for j in range(k))
        n_pages = len(page_ids)
        pages = Pages(
            page_id=np.array(page_ids, dtype=object),
            query_id=np.array(query_ids, dtype=object),
            query_features=np.array(qf, np.float32),
            user_features=np.array(uf, np.float32),
            offsets=np.arange(n_pages + 1, dtype=np.int64) * k * N_MODALITIES,
            item_id=np.array(item_ids, dtype=object),
            modality=np.concatenate(mods),
            features=np.concatenate(feats),
            feature_dims=dict(cfg.feature_dims),
        )
        truth = ItemTruth(np.concatenate(rel), np.concatenate(attract), np.array(pref, np.int8))
        pages.relevance = truth.relevance.copy()
        return Split(pages, truth)

    def single_modal_pages(self, rng: np.random.Generator, modality: str, n_queries: int) -> Split:
        """Pages of one modality with within-modality labels (as a single-modal team would have)."""
        cfg = self.cfg
        k = cfg.candidates_per_modality * 2
        mid = MODALITIES.index(modality)
        q = self._queries(rng, n_queries)
        users = rng.integers(0, cfg.users, n_queries)
        fit = self._fit(q["intent"], q["strength"], users)[:, mid]
        dmax = max(cfg.feature_dims.values())
        feats, sm, rel, attract = [], [], [], []
        for qi in range(n_queries):
            it = self._items(rng, modality, k, fit[qi], q["topic"][qi])
            f = np.zeros((k, dmax), np.float32)
            f[:, : cfg.feature_dims[modality]] = it["features"]
            feats.append(f)
            sm.append(it["sm_label"])
            rel.append(it["relevance"])
            attract.append(it["attractiveness"])
        page_ids = [f"sm-{modality}-q{qi:05d}" for qi in range(n_queries)]
        pages = Pages(
            page_id=np.array(page_ids, dtype=object),
            query_id=np.array(page_ids, dtype=object),
            query_features=q["features"].astype(np.float32),
            user_features=self._user_features(users).astype(np.float32),
            offsets=np.arange(n_queries + 1, dtype=np.int64) * k,
            item_id=np.array([f"{p}-{modality}{j}" for p in page_ids for j in range(k)], dtype=object),
            modality=np.full(n_queries * k, mid, np.int8),
            features=np.concatenate(feats),
            feature_dims=dict(cfg.feature_dims),
            relevance=np.concatenate(sm),
        )
        truth = ItemTruth(np.concatenate(rel), np.concatenate(attract), q["intent"].astype(np.int8))
        return Split(pages, truth)

    def generate(self) -> World:
        cfg = self.cfg
        counts = np.floor(np.array(cfg.split_fractions) * cfg.queries).astype(int)
        counts[-1] = cfg.queries - counts[:-1].sum()
        splits = {}
        for si, (name, n) in enumerate(zip(WHOLE_PAGE_SPLITS, counts)):
            splits[name] = self.whole_pages(np.random.default_rng([cfg.seed, 1, si]), int(n), name)
        # The pool is what budgeted annotation works on: its labels are hidden from learners.
        splits["pool"].pages.relevance = np.full(splits["pool"].pages.n_items, -1, np.int8)
        single = {
            m: self.single_modal_pages(np.random.default_rng([cfg.seed, 2, mi]), m, cfg.single_modal_queries)
            for mi, m in enumerate(MODALITIES)
        }
        return World(config=cfg, single_modal=single, **splits)


def generate_world(cfg: WorldConfig | None = None) -> World:
    return WorldGenerator(cfg or WorldConfig()).generate()


def format_summary(summary: dict) -> str:
    """A human-readable table of a world summary."""
    lines = [f"world (seed {summary['config']['seed']}):"]
    lines.append(f"  {'split':<22}{'pages':>7}{'items':>9}  grades 0/1/2/3/4 per modality (|feature| mean)")
    for name, s in summary["splits"].items():
        mods = "  ".join(
            f"{m}:{'/'.join(str(g) for g in v['grades'])} ({v['feature_abs_mean']:.3g})"
            for m, v in s["modalities"].items()
        )
        lines.append(f"  {name:<22}{s['pages']:>7}{s['items']:>9}  {mods}")
    return "\n".join(lines)
