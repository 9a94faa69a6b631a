"""What a feedback log shows: summary statistics (CTR by position, standardised CTR per modality,
satisfaction, abandonment, NDCG, consistency), the side-by-side table and the feedback plots.

Reads the tables `envs.simulation` writes (and any log in the same columns).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from envs.pages import MAX_GRADE, MODALITIES


def _np(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_string(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy()


def standardised_ctr(feedback: pa.Table, reference: str = "doc", max_position: int = 10) -> dict[str, float]:
    """CTR per modality re-weighted to the reference modality's (position, grade) mix.

    Direct standardisation: comparing modalities at *equal relevance and equal position*, so a
    difference is what the user model does with the modality itself (attention, attractiveness).
    """
    mod = _np(feedback, "modality")
    pos = _np(feedback, "position")
    rel = _np(feedback, "relevance")
    click = _np(feedback, "click")
    keep = pos <= max_position
    cell = (pos - 1) * (MAX_GRADE + 1) + rel
    n_cells = max_position * (MAX_GRADE + 1)
    ref = keep & (mod == reference)
    weight = np.bincount(cell[ref], minlength=n_cells).astype(float)
    out = {}
    for m in MODALITIES:
        sel = keep & (mod == m)
        n = np.bincount(cell[sel], minlength=n_cells)
        c = np.bincount(cell[sel], weights=click[sel], minlength=n_cells)
        ok = (n > 0) & (weight > 0)
        out[m] = float((c[ok] / n[ok] * weight[ok]).sum() / weight[ok].sum()) if ok.any() else float("nan")
    return out


def summarise(feedback: pa.Table, pages: pa.Table) -> dict:
    click = _np(feedback, "click").astype(bool)
    pos = _np(feedback, "position")
    mod = _np(feedback, "modality")
    reward = _np(feedback, "reward")
    sess = _np(feedback, "session_id")
    dwell = _np(feedback, "dwell")
    satisfied_row = _np(feedback, "satisfied").astype(bool)
    k = int(pos.max()) if len(pos) else 0
    n_pos = np.bincount(pos, minlength=k + 1)[1:]
    c_pos = np.bincount(pos, weights=click, minlength=k + 1)[1:]
    p_sess = _np(pages, "session_id")
    p_sat = _np(pages, "satisfied")
    p_ab = _np(pages, "abandon")
    # A session ends on its last page (highest query_index): satisfied, abandoned, or out of queries.
    qi = _np(pages, "query_index").astype(np.int64)
    key = np.unique(p_sess, return_inverse=True)[1].astype(np.int64) if len(p_sess) else np.zeros(0, np.int64)
    max_qi = np.full(int(key.max()) + 1 if len(key) else 0, -1, np.int64)
    np.maximum.at(max_qi, key, qi)
    last = qi == max_qi[key]
    n_sessions = int(last.sum())
    is_answer = mod == "answer"
    answer_sat_no_click = satisfied_row & ~click
    cons = _np(pages, "consistency")
    ndcg = _np(pages, "ndcg@10")
    sat_click = satisfied_row & click
    return {
        "sessions": n_sessions,
        "pages": len(p_sess),
        "impressions": len(click),
        "ctr": float(click.mean()) if len(click) else float("nan"),
        "ctr_by_position": (c_pos / np.maximum(n_pos, 1)).round(4).tolist(),
        "ctr_by_modality": {
            m: float(click[mod == m].mean()) if (mod == m).any() else float("nan") for m in MODALITIES
        },
        "ctr_standardised_to_doc": standardised_ctr(feedback),
        "satisfied_click_rate": float(sat_click.sum() / max(click.sum(), 1)),
        "mean_dwell_s": float(dwell[click].mean()) if click.any() else float("nan"),
        "answer_satisfactions_without_click": int(answer_sat_no_click[is_answer].sum()),
        "good_abandonment_rate": float(_np(pages, "good_abandon").mean()),
        "page_satisfaction_rate": float(p_sat.mean()),
        "session_success_rate": float(p_sat[last].mean()) if n_sessions else float("nan"),
        "abandonment_rate": float(p_ab[last].mean()) if n_sessions else float("nan"),
        "pages_per_session": len(p_sess) / max(n_sessions, 1),
        "mean_reward_per_session": float(reward.sum() / max(n_sessions, 1)),
        "mean_reward_per_page": float(reward.sum() / max(len(p_sess), 1)),
        "mean_ndcg@10": float(ndcg.mean()) if len(ndcg) else float("nan"),
        "mean_consistency": float(np.nanmean(cons)) if np.isfinite(cons).any() else float("nan"),
        "distinct_sessions_logged": len(set(sess.tolist())),
    }


def format_summary(summary: dict, title: str | None = None) -> str:
    return format_side_by_side({title or "policy": summary})


def format_side_by_side(summaries: dict[str, dict]) -> str:
    """A table with one column per policy (for `smar simulate` and the demo)."""
    names = list(summaries)
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, fn) -> None:
        rows.append((label, [fn(summaries[n]) for n in names]))

    def f(v: float, p: int = 3) -> str:
        return "nan" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{p}f}"

    add("sessions / pages", lambda s: f"{s['sessions']} / {s['pages']}")
    add("CTR", lambda s: f(s["ctr"]))
    k = max(len(s["ctr_by_position"]) for s in summaries.values())
    for i in range(k):
        add(
            f"  CTR @ position {i + 1}",
            lambda s, i=i: f(s["ctr_by_position"][i]) if i < len(s["ctr_by_position"]) else "",
        )
    for m in MODALITIES:
        add(
            f"  CTR {m} (raw / std. to doc)",
            lambda s, m=m: f"{f(s['ctr_by_modality'][m])} / {f(s['ctr_standardised_to_doc'][m])}",
        )
    add("satisfied-click rate", lambda s: f(s["satisfied_click_rate"]))
    add("answers satisfying w/o click", lambda s: str(s["answer_satisfactions_without_click"]))
    add("good abandonment (pages)", lambda s: f(s["good_abandonment_rate"]))
    add("session success", lambda s: f(s["session_success_rate"]))
    add("abandonment (sessions)", lambda s: f(s["abandonment_rate"]))
    add("pages per session", lambda s: f(s["pages_per_session"], 2))
    add("mean reward / session", lambda s: f(s["mean_reward_per_session"]))
    add("mean NDCG@10 (true)", lambda s: f(s["mean_ndcg@10"]))
    add("mean consistency", lambda s: f(s["mean_consistency"]))
    w0 = max(len(r[0]) for r in rows) + 2
    widths = [max(len(n), *(len(r[1][i]) for r in rows)) + 2 for i, n in enumerate(names)]
    lines = [" " * w0 + "".join(f"{n:>{w}}" for n, w in zip(names, widths))]
    lines += [f"{label:<{w0}}" + "".join(f"{v:>{w}}" for v, w in zip(vals, widths)) for label, vals in rows]
    return "\n".join(lines)


def plot_feedback(feedback: pa.Table, out: str | Path) -> dict[str, Path]:
    """CTR by position per modality, and the dwell distribution per true relevance grade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    mod = _np(feedback, "modality")
    pos = _np(feedback, "position")
    click = _np(feedback, "click")
    rel = _np(feedback, "relevance")
    dwell = _np(feedback, "dwell")
    k = int(pos.max()) if len(pos) else 1
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in MODALITIES:
        sel = mod == m
        n = np.bincount(pos[sel], minlength=k + 1)[1:]
        c = np.bincount(pos[sel], weights=click[sel], minlength=k + 1)[1:]
        ok = n > 0
        ax.plot(np.arange(1, k + 1)[ok], (c[ok] / n[ok]), marker="o", label=m)
    ax.set_xlabel("position")
    ax.set_ylabel("CTR")
    ax.set_title("CTR by position per modality")
    ax.legend()
    fig.tight_layout()
    p1 = out / "ctr_by_position.png"
    fig.savefig(p1, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    clicked = click.astype(bool)
    bins = np.logspace(0, np.log10(max(float(dwell[clicked].max()) if clicked.any() else 10.0, 10.0)), 40)
    for g in range(MAX_GRADE + 1):
        d = dwell[clicked & (rel == g)]
        if len(d):
            ax.hist(d, bins=bins, histtype="step", density=True, label=f"grade {g} (n={len(d)})")
    ax.axvline(30.0, color="k", linestyle="--", linewidth=1, label="30 s")
    ax.set_xscale("log")
    ax.set_xlabel("dwell (s)")
    ax.set_ylabel("density")
    ax.set_title("Dwell after a click, per true relevance grade")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p2 = out / "dwell_by_grade.png"
    fig.savefig(p2, dpi=100)
    plt.close(fig)
    return {"plot_ctr": p1, "plot_dwell": p2}
