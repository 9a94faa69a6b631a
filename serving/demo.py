"""The serving stage of `smar demo`: start the app, rank simulator pages over HTTP, send the simulated
users' feedback, shut down cleanly, and summarise what was logged.

    from serving.demo import serving_demo
    summary = serving_demo(checkpoint_dir, world.traffic, out / "serve", n_pages=8)

Feedback comes from the project's simulated user (`envs.user_model.UserModel`) looking at the ranking
the app actually returned, so the logged clicks are what a learner would see online.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def serving_demo(
    checkpoint: str | Path,
    split: Any,
    out: str | Path,
    n_pages: int = 8,
    seed: int = 0,
    port: int | None = None,
    num_cpus: float = 1.0,
) -> dict[str, Any]:
    """Serve `checkpoint`, rank `n_pages` pages of `split` (an envs.world.Split), feed back simulated
    clicks, shut down. Returns a summary (also printed)."""
    import ray

    from envs.user_model import UserModel
    from serving import deploy
    from serving.client import RerankerClient, feedback_items, page_request
    from serving.feedback_log import read_logs
    from serving.registry import Registry
    from serving.settings import load_config, with_overrides

    out = Path(out)
    reg = Registry(out / "registry")
    version = reg.publish(checkpoint)
    cfg = with_overrides(
        load_config(),
        port=port or deploy.free_port(),
        num_cpus=num_cpus,
        args={"registry": str(reg.root), "log_dir": str(out / "logs")},
    )
    owns = not ray.is_initialized()
    if owns:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    pages, truth = split.pages, split.truth
    user, rng = UserModel(), np.random.default_rng(seed)
    clicks = accepted = 0
    try:
        url = deploy.deploy(cfg)
        print(f"  serving {version} at {url}")
        with RerankerClient(url) as client:
            for p in range(min(n_pages, len(pages))):
                res = client.rank(page_request(pages, p, explore=True))
                sl = pages.item_slice(p)
                index = {str(pages.item_id[t]): t for t in range(sl.start, sl.stop)}
                shown = np.array([index[r["item_id"]] for r in res["ranking"]])
                mod = pages.modality[shown].astype(np.int64)
                o = user.simulate(
                    truth.relevance[shown][None], truth.attractiveness[shown][None], mod[None], None, rng
                )
                ids = [r["item_id"] for r in res["ranking"]]
                items = feedback_items(ids, o.click[0], o.dwell[0], mod, o.viewport[0])
                ack = client.feedback(res["event_id"], items)
                clicks += int(o.click.sum())
                accepted += ack["status"] == "accepted"
                print(
                    f"  page {pages.page_id[p]}: top {res['ranking'][0]['item_id']}, "
                    f"{int(o.click.sum())} click(s), feedback {ack['status']}"
                )
    finally:
        deploy.shutdown()  # graceful: replicas flush their logs
        if owns:
            ray.shutdown()
    logs = read_logs(out / "logs")
    summary = {
        "model_version": version,
        "pages_ranked": int(logs.num_rows),
        "feedback_accepted": accepted,
        "clicks": clicks,
        "logged_with_feedback": int(sum(c is not None for c in logs["click"].to_pylist())),
        "log_dir": str(out / "logs"),
    }
    print(f"  logged {summary['pages_ranked']} impressions, {summary['logged_with_feedback']} with feedback")
    return summary
