"""Budgeted whole-page annotation: the annotator oracle, its cost ledger, candidate bands, iso-label anchors.

Step 2 of SMAR. Only `AnnotatorOracle` ever reads the pool's true cross-modal grades: it keeps them
privately and reveals one item's grade per judgement, counting each in a `CostLedger` and refusing
(`BudgetExceededError`) past the budget. Everything else here, and the training that follows, sees pool
pages whose relevance is -1 except where the oracle answered.

Budget p = fraction of all candidate items in the pool that may be judged (bands and anchors share it).

Candidate bands (authors' code, arXiv 2510.16803): per page and modality, sort by single-modal score
and annotate a band of max(1, round(p * n_m)) items: `top`, `middle` (starting at `band_start` of the
order; the authors' default is the 20-40% band), `bottom` or `random`.

Iso-label anchors. The paper's summaries describe a binary search across modalities for items with
the same page-level label as an anchor item; the released code has none, so this is our reading:
  1. judge the top single-modal item of every modality on the page; the best of these grades, l*,
     found in modality A, is the anchor label (the level that decides the top of the page);
  2. for each level l in (l*, l*-1, ... , `anchor_levels` of them, l >= 1) and each modality m,
     binary-search m's single-modal order for the boundary b_m(l) = number of leading items with
     grade >= l, judging only probed positions (<= ceil(log2(n_m + 1)) judgements; cached grades are
     reused, so a modality whose top is already below l costs nothing);
  3. assuming grades fall monotonically along each single-modal order (what a good g^m gives), every
     item above b_A(l) in modality A is preferred to every item below b_B(l) in modality B != A:
     cross-modal preference pairs that align the modalities' scales at level l.
Probed items' grades are also kept as ordinary page labels. Anchoring runs first on a seeded subset
of pages with `anchor_share` of the budget; bands then use the rest (unused anchor budget included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from envs.config_io import JsonConfig
from envs.pages import Pages
from envs.world import Split

BANDS = ("top", "middle", "bottom", "random")


class BudgetExceededError(RuntimeError):
    """The oracle was asked for a judgement beyond the annotation budget."""


@dataclass
class CostLedger:
    """Every judgement the oracle made: counts, unique items, and the log (item, kind)."""

    total_items: int  # all candidate items of the annotated split
    budget: int  # maximum number of judgements
    judgements: int = 0
    log: list[tuple[int, str]] = field(default_factory=list)
    unique_items: set[int] = field(default_factory=set)

    def record(self, item: int, kind: str) -> None:
        self.judgements += 1
        self.log.append((item, kind))
        self.unique_items.add(item)

    @property
    def fraction(self) -> float:
        """Judgements as a fraction of all candidate items (the annotation cost reported)."""
        return self.judgements / self.total_items if self.total_items else 0.0

    @property
    def remaining(self) -> int:
        return self.budget - self.judgements

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, kind in self.log:
            out[kind] = out.get(kind, 0) + 1
        return out

    def to_json(self) -> dict:
        return {
            "judgements": self.judgements,
            "unique_items": len(self.unique_items),
            "total_items": self.total_items,
            "budget": self.budget,
            "fraction": self.fraction,
            "by_kind": self.by_kind(),
        }


class AnnotatorOracle:
    """Reveals true cross-modal grades of a split's items, one judgement at a time, within a budget.

    The truth is copied into a name-mangled private attribute and never returned wholesale.
    """

    def __init__(self, split: Split, budget_fraction: float = 1.0) -> None:
        if not 0.0 <= budget_fraction <= 1.0:
            raise ValueError(f"budget_fraction must be in [0, 1], got {budget_fraction}")
        n = split.pages.n_items
        if len(split.truth.relevance) != n:
            raise ValueError(f"truth has {len(split.truth.relevance)} items, pages {n}")
        self.__grades = np.asarray(split.truth.relevance, np.int8).copy()
        self.ledger = CostLedger(total_items=n, budget=int(math.floor(budget_fraction * n + 1e-9)))

    def judge(self, item: int, kind: str = "band") -> int:
        """The true grade (0-4) of item index `item` of the split; one judgement on the ledger."""
        item = int(item)
        if not 0 <= item < len(self.__grades):
            raise IndexError(f"item {item} out of range (split has {len(self.__grades)} items)")
        if self.ledger.judgements >= self.ledger.budget:
            raise BudgetExceededError(
                f"annotation budget of {self.ledger.budget} judgements "
                f"({self.ledger.budget / max(self.ledger.total_items, 1):.1%} of items) is spent"
            )
        self.ledger.record(item, kind)
        return int(self.__grades[item])


@dataclass(frozen=True)
class AnnotationConfig(JsonConfig):
    """How the budget is spent. Defaults: the authors' middle band (from 20%) plus iso-label anchors."""

    budget: float = 0.1  # fraction of candidate items judged (bands + anchors)
    band: str = "middle"
    band_start: float = 0.2  # start of the middle band in each modality's single-modal order
    anchors: bool = True
    anchor_share: float = 0.3  # share of the budget reserved for anchors (unused part goes to bands)
    anchor_levels: int = 1  # label boundaries searched per anchored page: l*, l*-1, ...
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        if self.band not in BANDS:
            raise ValueError(f"band must be one of {BANDS}, got {self.band!r}")
        if not 0.0 <= self.band_start < 1.0:
            raise ValueError(f"band_start must be in [0, 1), got {self.band_start}")
        if not 0.0 <= self.anchor_share <= 1.0:
            raise ValueError(f"anchor_share must be in [0, 1], got {self.anchor_share}")
        if self.anchor_levels < 1:
            raise ValueError(f"anchor_levels must be >= 1, got {self.anchor_levels}")


@dataclass
class Annotation:
    """The result: pages with revealed grades (-1 elsewhere), anchor pairs, and the cost."""

    pages: Pages  # relevance >= 0 only on judged items
    pairs: list[np.ndarray]  # per page: (n_pairs, 2) local item indices, first preferred
    ledger: CostLedger
    anchored_pages: int = 0
    band_pages: int = 0

    def summary(self) -> dict:
        return {
            **self.ledger.to_json(),
            "anchored_pages": self.anchored_pages,
            "band_pages": self.band_pages,
            "anchor_pairs": int(sum(len(p) for p in self.pairs)),
            "labelled_items": int((self.pages.relevance >= 0).sum()),
        }


class _PageJudge:
    """Judgements for one page through the oracle, cached so no item is ever judged twice."""

    def __init__(self, oracle: AnnotatorOracle, offset: int, known: dict[int, int]) -> None:
        self.oracle, self.offset, self.known = oracle, offset, known

    def __call__(self, local: int, kind: str) -> int:
        if local not in self.known:
            self.known[local] = self.oracle.judge(self.offset + local, kind)
        return self.known[local]


def modality_orders(pages: Pages, p: int) -> dict[int, np.ndarray]:
    """Per modality id: local item indices of page p sorted by single-modal score, best first."""
    sl = pages.item_slice(p)
    score = pages.single_modal_score[sl]
    if np.isnan(score).any():
        raise ValueError(
            f"page {pages.page_id[p]!r}: field 'single_modal_score' is missing; run the rankers first"
        )
    mod = pages.modality[sl]
    out = {}
    for mid in np.unique(mod):
        idx = np.nonzero(mod == mid)[0]
        out[int(mid)] = idx[np.argsort(-score[idx], kind="stable")]
    return out


def boundary_search(order: np.ndarray, level: int, judge) -> int:
    """Number of leading items of `order` with grade >= level, by binary search (grades assumed
    non-increasing along `order`). Asks `judge(local_index)` at <= ceil(log2(len(order) + 1)) positions."""
    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        if judge(int(order[mid])) >= level:
            lo = mid + 1
        else:
            hi = mid
    return lo


def band_positions(n: int, width: int, cfg: AnnotationConfig, rng: np.random.Generator) -> np.ndarray:
    """Positions (in single-modal order) of the annotated band for a modality with n items."""
    width = min(max(width, 0), n)
    if cfg.band == "top":
        return np.arange(width)
    if cfg.band == "bottom":
        return np.arange(n - width, n)
    if cfg.band == "random":
        return np.sort(rng.choice(n, width, replace=False))
    start = min(int(math.floor(cfg.band_start * n)), n - width)
    return np.arange(start, start + width)


def _anchor_worst_case(orders: dict[int, np.ndarray], levels: int) -> int:
    return len(orders) + levels * sum(math.ceil(math.log2(len(o) + 1)) for o in orders.values())


def anchor_page(
    orders: dict[int, np.ndarray], judge, levels: int = 1
) -> tuple[np.ndarray, dict[int, dict[int, int]]]:
    """Iso-label anchors on one page. Returns (pairs (k, 2) of local indices, boundaries[level][mid])."""
    tops = {mid: judge(int(o[0]), "anchor") for mid, o in orders.items() if len(o)}
    if not tops:
        return np.zeros((0, 2), np.int64), {}
    best = max(tops.values())
    pairs: set[tuple[int, int]] = set()
    bounds: dict[int, dict[int, int]] = {}
    for level in range(best, max(best - levels, 0), -1):
        b = {mid: boundary_search(o, level, lambda i: judge(i, "anchor")) for mid, o in orders.items()}
        bounds[level] = b
        for a, oa in orders.items():
            above = oa[: b[a]]
            for c, oc in orders.items():
                if c == a:
                    continue
                for i in above:
                    for j in oc[b[c] :]:
                        pairs.add((int(i), int(j)))
    arr = np.array(sorted(pairs), np.int64).reshape(-1, 2)
    return arr, bounds


def annotate(pages: Pages, oracle: AnnotatorOracle, cfg: AnnotationConfig) -> Annotation:
    """Spend the oracle's budget on `pages` (the split the oracle was built on) per `cfg`."""
    if oracle.ledger.total_items != pages.n_items:
        raise ValueError("the oracle was built on a different split than these pages")
    rng = np.random.default_rng([cfg.seed, 17])
    order = rng.permutation(len(pages))
    known: list[dict[int, int]] = [{} for _ in range(len(pages))]
    pairs = [np.zeros((0, 2), np.int64) for _ in range(len(pages))]
    ledger = oracle.ledger
    anchored = np.zeros(len(pages), bool)
    if cfg.anchors:
        anchor_budget = int(math.floor(cfg.anchor_share * ledger.budget))
        for p in order:
            orders = modality_orders(pages, p)
            spent = ledger.judgements
            if spent + _anchor_worst_case(orders, cfg.anchor_levels) > anchor_budget:
                break
            judge = _PageJudge(oracle, int(pages.offsets[p]), known[p])
            pairs[p], _ = anchor_page(orders, judge, cfg.anchor_levels)
            anchored[p] = True
    n_band = 0
    for p in order:
        if anchored[p]:
            continue
        orders = modality_orders(pages, p)
        wanted = []
        for o in orders.values():
            width = max(1, int(round(cfg.budget * len(o))))
            wanted.extend(int(o[k]) for k in band_positions(len(o), width, cfg, rng))
        cost = sum(1 for i in wanted if i not in known[p])
        if cost > ledger.remaining:
            break
        judge = _PageJudge(oracle, int(pages.offsets[p]), known[p])
        for i in wanted:
            judge(i, "band")
        n_band += 1
    relevance = np.full(pages.n_items, -1, np.int8)
    for p, k in enumerate(known):
        for local, grade in k.items():
            relevance[pages.offsets[p] + local] = grade
    return Annotation(
        pages=pages.with_items(relevance=relevance),
        pairs=pairs,
        ledger=ledger,
        anchored_pages=int(anchored.sum()),
        band_pages=n_band,
    )


def annotate_all(pages: Pages, oracle: AnnotatorOracle) -> Annotation:
    """Full supervision (the SFT baseline): judge every item, through the same oracle and ledger."""
    relevance = np.array([oracle.judge(i, "full") for i in range(pages.n_items)], np.int8)
    return Annotation(
        pages=pages.with_items(relevance=relevance),
        pairs=[np.zeros((0, 2), np.int64) for _ in range(len(pages))],
        ledger=oracle.ledger,
        band_pages=len(pages),
    )
