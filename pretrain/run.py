"""The pretrain run folder: what `smar pretrain` writes and what later stages (SERP, RL, Serve) read.

Layout (the contract between stages; keep it stable):
  RUN/run.json                {"world": path, "config": {...PretrainConfig...}, "reranker_version": str,
                               "metrics": {...}}
  RUN/rankers/{modality}/     single-modal ranker checkpoints (checksummed, atomic)
  RUN/merge.json              calibration of the `merge` baseline (no page labels)
  RUN/reranker/               the SMAR whole-page reranker (pretrain.checkpoint format)
  RUN/scored/{split}.parquet  every whole-page split with single_modal_score filled (pool relevance hidden)

`world` in run.json is relative to RUN when the world lives inside it (so a run folder can be moved),
absolute otherwise. Simulator truth is never copied into the run: `split()` reads it from the world's
`truth/` files, because the SERP simulator needs it and the run should not duplicate it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from envs.atomic_io import write_json_atomic
from envs.pages import MODALITIES, Pages
from envs.world import WHOLE_PAGE_SPLITS, Split
from pretrain.checkpoint import Checkpoint, load_checkpoint
from pretrain.data import DATA_SPLITS, DataConfig
from pretrain.merge import MergeCalibration, MergeScorer
from pretrain.page import read_pages, write_pages
from pretrain.reranker import WholePageReranker
from pretrain.single_modal import SingleModalRankers
from pretrain.world_io import _read_truth

log = logging.getLogger(__name__)

DEFAULT_RUN = "runs/pretrain"  # where every command looks for (or trains) the pretrain run
RUN_JSON = "run.json"
MERGE_JSON = "merge.json"
RERANKER_DIR = "reranker"
RANKERS_DIR = "rankers"
SCORED_DIR = "scored"


def world_reference(root: str | Path, world_dir: str | Path) -> str:
    """How run.json names the world: relative to the run folder if inside it, else absolute."""
    root, world_dir = Path(root).resolve(), Path(world_dir).resolve()
    try:
        return str(world_dir.relative_to(root))
    except ValueError:
        return str(world_dir)


def write_run_json(
    root: str | Path,
    world_dir: str | Path,
    config: dict,
    reranker_version: str,
    metrics: dict,
    data: bool = False,
) -> Path:
    """Write run.json atomically (last step of a run: its presence marks the run complete)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    doc = {
        "world": world_reference(root, world_dir),
        "config": config,
        "reranker_version": reranker_version,
        "metrics": metrics,
        **({"data": True} if data else {}),
    }
    return write_json_atomic(root / RUN_JSON, doc, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_scored(root: str | Path, name: str, pages: Pages) -> Path:
    """Write one scored whole-page split (atomic, via pretrain.page.write_pages)."""
    if name not in WHOLE_PAGE_SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {WHOLE_PAGE_SPLITS}")
    if np.isnan(pages.single_modal_score).any():
        raise ValueError(f"split {name!r}: field 'single_modal_score' must be filled for every item")
    return write_pages(pages, Path(root) / SCORED_DIR / f"{name}.parquet")


class PretrainRun:
    """A complete pretrain run folder, opened read-only. Construct with `PretrainRun.open(path)`."""

    def __init__(self, root: Path, info: dict) -> None:
        self.root = root
        self.info = info
        w = Path(info["world"])
        self.world_dir = (w if w.is_absolute() else root / w).resolve()
        self.reranker_path = root / RERANKER_DIR

    @staticmethod
    def open(root: str | Path) -> PretrainRun:
        """Open a run folder; FileNotFoundError naming what is missing if it is incomplete."""
        root = Path(root).resolve()
        if not (root / RUN_JSON).exists():
            raise FileNotFoundError(
                f"{root} is not a complete pretrain run (no {RUN_JSON}); create one with "
                f"`smar pretrain --out {root}`"
            )
        try:
            info = json.loads((root / RUN_JSON).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{root / RUN_JSON}: not valid JSON ({e})") from e
        for key in ("world", "config", "reranker_version", "metrics"):
            if key not in info:
                raise ValueError(f"{root / RUN_JSON}: missing field {key!r}")
        run = PretrainRun(root, info)
        # A run on imported data (`smar pretrain --data`) has no traffic split and no simulator truth;
        # without a single-modal part it has no rankers either (the data's upstream scores stand in).
        splits = DATA_SPLITS if run.is_data else WHOLE_PAGE_SPLITS
        missing = [
            str(p)
            for p in (
                run.reranker_path / "manifest.json",
                root / MERGE_JSON,
                *(root / SCORED_DIR / f"{s}.parquet" for s in splits),
            )
            if not p.exists()
        ]
        if not run.is_data and not any((root / RANKERS_DIR / m).exists() for m in MODALITIES):
            missing.append(str(root / RANKERS_DIR / "{modality}"))
        if not run.is_data and not (run.world_dir / "truth").exists():
            missing.append(str(run.world_dir / "truth"))
        if missing:
            raise FileNotFoundError(f"pretrain run {root} is incomplete; missing: {', '.join(missing)}")
        return run

    # ------------------------------------------------------------------ run.json fields
    @property
    def is_data(self) -> bool:
        """True for a run on imported real data (`smar pretrain --data`)."""
        return bool(self.info.get("data", False))

    @property
    def config(self) -> dict:
        return self.info["config"]

    @property
    def metrics(self) -> dict:
        return self.info["metrics"]

    @property
    def reranker_version(self) -> str:
        return self.info["reranker_version"]

    # ------------------------------------------------------------------ artefacts
    def scored_pages(self, name: str) -> Pages:
        """Scored pages of a whole-page split, without truth (what a learner may see)."""
        if name not in WHOLE_PAGE_SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {WHOLE_PAGE_SPLITS}")
        return read_pages(self.root / SCORED_DIR / f"{name}.parquet")

    def split(self, name: str) -> Split:
        """Scored pages plus the simulator truth (read from the world's truth/ files)."""
        pages = self.scored_pages(name)
        if self.is_data:
            from pretrain.data import load_data

            data = load_data(self.world_dir, DataConfig(**self.metrics["data"]["config"]))
            return Split(pages, data.whole_page_splits()[name].truth)
        truth_path = self.world_dir / "truth" / f"{name}.parquet"
        if not truth_path.exists():
            raise FileNotFoundError(f"no simulator truth for split {name!r} at {truth_path}")
        return Split(pages, _read_truth(truth_path, pages))

    def reranker(self) -> tuple[WholePageReranker, Checkpoint]:
        """The SMAR whole-page reranker (checksum verified), in eval mode."""
        return load_checkpoint(self.reranker_path)

    def rankers(self) -> SingleModalRankers:
        """The single-modal rankers (each checksum verified); `.score(pages)` -> (T,)."""
        return SingleModalRankers.load(self.root / RANKERS_DIR)

    def merge(self) -> MergeScorer:
        """The `merge` baseline scorer; computes single-modal scores itself for pages that lack them."""
        return MergeScorer(MergeCalibration.load(self.root / MERGE_JSON), rankers=_LazyRankers(self))

    def __repr__(self) -> str:
        return f"PretrainRun({str(self.root)!r}, reranker={self.reranker_version!r})"


class _LazyRankers:
    """Loads the single-modal rankers only if a page without single-modal scores is merged."""

    def __init__(self, run: PretrainRun) -> None:
        self._run = run
        self._rankers: SingleModalRankers | None = None

    def score(self, pages: Pages) -> np.ndarray:
        if self._rankers is None:
            self._rankers = self._run.rankers()
        return self._rankers.score(pages)


def open_or_pretrain(path: str | Path = DEFAULT_RUN, progress: bool = True) -> PretrainRun:
    """The pretrain run at `path`; the default world's SMAR run is trained there first if it is missing."""
    if (Path(path) / RUN_JSON).exists():
        return PretrainRun.open(path)
    from pretrain.runtime import torch_threads
    from pretrain.train import run_pretrain

    log.info("no pretrain run at %s: training the default world's SMAR run there (smar pretrain)", path)
    with torch_threads(1):
        return run_pretrain(None, path, progress=progress)
