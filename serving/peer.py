"""The benchmark's peer: a plain FastAPI app under uvicorn, one process, the same model in-process.

It does the same per-request work as the Serve app's /rank (strict validation against the model's
contract, one forward pass, Plackett-Luce exploration with exact propensities, an event id, the
impression appended to the same buffered Parquet writer) but has no Ray, no proxy hop, no batching
and no shared event ledger. `smar bench serve` runs it as `python -m serving.peer` in a subprocess.
"""

from __future__ import annotations

import argparse
import os

import torch
from fastapi import FastAPI, Request, Response

from serving.errors import install_error_handlers, parse_rank
from serving.feedback_log import IMPRESSIONS, LogWriter, impression_row, now_ms
from serving.ledger import new_event_id
from serving.schemas import RankResponse, check_rank, rank_response_json
from serving.scoring import Scorer
from serving.settings import SERVING_TEMPERATURE, AppSettings
from serving.stages import CLOCK, process_cpu_s, thread_time


def build_peer_app(checkpoint: str, log_dir: str, seed: int = 0) -> FastAPI:
    torch.set_num_threads(1)
    settings = AppSettings()
    scorer = Scorer.load(checkpoint)
    gen = torch.Generator().manual_seed(seed)
    writer = LogWriter(
        log_dir,
        IMPRESSIONS,
        "peer",
        settings.logs.impression_max_rows,
        settings.logs.impression_max_age_s,
        stage="log_write",
    )
    counts = {"rank": 0}
    app = FastAPI(title="plain FastAPI peer")

    install_error_handlers(app)

    @app.post("/rank", response_model=RankResponse)
    async def rank(request: Request) -> Response:
        body = await request.body()
        t0 = thread_time()
        req = parse_rank(body)
        t1 = thread_time()
        check_rank(
            req,
            scorer.feature_dims,
            scorer.query_dim,
            scorer.user_dim,
            settings.max_candidates,
            settings.max_item_id_len,
        )
        t2 = thread_time()
        prepared = scorer.prepare(req)
        t3 = thread_time()
        r = scorer.rank([prepared], "plackett_luce", SERVING_TEMPERATURE, gen)[0]
        t4 = thread_time()
        eid = new_event_id()
        t5 = thread_time()
        writer.append([impression_row(eid, now_ms(), "peer", scorer.version, req, r, prepared)])
        t6 = thread_time()
        out = rank_response_json(req, eid, scorer.version, r)
        for stage, dt in zip(
            (
                "parse_validate",
                "contract_check",
                "feature_arrays",
                "event_ids",
                "impression_rows",
                "response_json",
            ),
            (t1 - t0, t2 - t1, t3 - t2, t5 - t4, t6 - t5, thread_time() - t6),
        ):
            CLOCK.add(stage, dt)
        counts["rank"] += 1
        return Response(out, media_type="application/json")

    @app.get("/version")
    async def version() -> dict:
        return {"model_version": scorer.version}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {
            "status": "ok",
            "pid": os.getpid(),
            "process_cpu_s": process_cpu_s(),
            "stages": CLOCK.snapshot(),
            "rank_requests": counts["rank"],
        }

    app.state.log_writer = writer  # main() closes it after uvicorn returns (graceful shutdown)
    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--log-dir", required=True)
    p.add_argument("--port", type=int, default=8010)
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    app = build_peer_app(a.checkpoint, a.log_dir)
    try:
        uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", access_log=False)
    finally:
        app.state.log_writer.close()


if __name__ == "__main__":
    main()
