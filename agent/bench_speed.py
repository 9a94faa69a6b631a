"""`smar bench agent --bench.speed_against TREE`: training speed of this code against another source tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.bench_report import stats

if TYPE_CHECKING:
    from agent.train import TrainConfig


# Run in a child process inside a source tree: one `train_policy` whose algo.train() calls are timed
# (wall and CPU), so the same measurement works on this code and on an older checkout of it.
_TIMED_TRAIN = """
import json, sys, time
from ray.rllib.algorithms.algorithm import Algorithm
from agent.train import TrainConfig, train_policy
rec, orig = [], Algorithm.train
def train(self):
    w, c = time.perf_counter(), time.process_time()
    out = orig(self)
    rec.append([time.perf_counter() - w, time.process_time() - c])
    return out
Algorithm.train = train
res = train_policy(TrainConfig(**json.loads(sys.argv[1])))
print("TIMED " + json.dumps({"iterations": rec, "env_steps": res.env_steps}))
"""


def speed_comparison(cfg, current: TrainConfig, out: Path) -> dict:
    """Training speed of this code against the code in `cfg.speed_against` (e.g. `git archive
    COMMIT | tar -x -C DIR`), side by side: `cfg.speed_repeats` rounds, each one run of each tree
    (alternating, so both see the same machine load), every run `cfg.speed_iterations` PPO
    iterations of ppo_constrained seed 0 with each tree's own defaults (this tree: `current`, the
    bench's). The first iteration (warm-up) is left out; env steps per wall and per CPU second of
    the driver (which samples and learns: no remote env runners) and the ratios."""
    trees = {"reference": Path(cfg.speed_against).resolve(), "current": Path(__file__).resolve().parents[1]}
    base = {
        "run": str(Path(cfg.run).resolve()),
        "iterations": cfg.speed_iterations,
        "seed": 0,
        "progress": False,
        "checkpoint_every": 0,
        "eval_every": 0,
        "eval_repeats": 1,
        "final_eval_repeats": 1,
    }
    settings = {**current.to_json(), **base}
    rounds: dict[str, list[dict]] = {k: [] for k in trees}
    for r in range(cfg.speed_repeats):
        for name, tree in trees.items():
            run_cfg = dict(settings if name == "current" else base, out=str(out / "speed" / f"{name}{r}"))
            env = {**os.environ, "PYTHONPATH": str(tree)}
            proc = subprocess.run(
                [sys.executable, "-c", _TIMED_TRAIN, json.dumps(run_cfg)],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
            )
            if proc.returncode:  # the child's own error, not only its exit status
                raise RuntimeError(f"timed run of {name} tree failed:\n{proc.stderr[-3000:]}")
            line = next(x for x in proc.stdout.splitlines() if x.startswith("TIMED "))
            rec = json.loads(line[len("TIMED ") :])
            its = rec["iterations"][1:]
            steps = rec["env_steps"] * len(its) / len(rec["iterations"])
            rounds[name].append(
                {
                    "env_steps_per_s": steps / sum(w for w, _ in its),
                    "env_steps_per_cpu_s": steps / sum(c for _, c in its),
                    "iteration_wall_s": [round(w, 3) for w, _ in its],
                    "iteration_cpu_s": [round(c, 3) for _, c in its],
                }
            )
            print(
                f"speed round {r} {name}: {rounds[name][-1]['env_steps_per_s']:.0f} env steps/s", flush=True
            )
    result = {"trees": {k: str(v) for k, v in trees.items()}, "rounds": rounds}
    for key in ("env_steps_per_s", "env_steps_per_cpu_s"):
        ratios = [c[key] / ref[key] for c, ref in zip(rounds["current"], rounds["reference"])]
        result[f"speedup_{key}"] = stats(ratios)
    return result
