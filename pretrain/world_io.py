"""Write and read a synthetic world as Parquet (`smar world`).

Folder layout:
  world.json                     WorldConfig and summary
  single_modal/{modality}.parquet  single-modal labelled pages (labels comparable within a modality)
  {pool,valid,test,traffic}.parquet  whole pages (pool labels hidden)
  truth/{split}.parquet          simulator-only truth per item: relevance, attractiveness, intent
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from envs.atomic_io import write_json_atomic, write_parquet_atomic
from envs.pages import MODALITIES, Pages
from envs.world import WHOLE_PAGE_SPLITS, ItemTruth, Split, World, WorldConfig, format_summary, generate_world
from pretrain.page import read_pages, write_pages


def _truth_table(pages: Pages, truth: ItemTruth) -> pa.Table:
    return pa.table(
        {
            "page_id": pa.array(pages.page_id[pages.page_of_item].astype(str)),
            "item_id": pa.array(pages.item_id.astype(str)),
            "relevance": pa.array(truth.relevance, pa.int8()),
            "attractiveness": pa.array(truth.attractiveness, pa.float32()),
            "preferred_modality": pa.array(truth.preferred_modality[pages.page_of_item], pa.int8()),
        }
    )


def _read_truth(path: Path, pages: Pages) -> ItemTruth:
    t = pq.read_table(path)
    if t.column("item_id").to_pylist() != pages.item_id.tolist():
        raise ValueError(f"{path}: truth rows are not aligned with the pages' items")
    pref = t.column("preferred_modality").to_numpy()[pages.offsets[:-1]] if len(pages) else np.zeros(0)
    return ItemTruth(
        t.column("relevance").to_numpy().astype(np.int8),
        t.column("attractiveness").to_numpy().astype(np.float32),
        np.asarray(pref, np.int8),
    )


def save_world(world: World, out: str | Path) -> Path:
    out = Path(out)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    (out / "single_modal").mkdir(parents=True, exist_ok=True)
    for m, split in world.single_modal.items():
        write_pages(split.pages, out / "single_modal" / f"{m}.parquet")
        write_parquet_atomic(
            _truth_table(split.pages, split.truth), out / "truth" / f"single_modal_{m}.parquet"
        )
    for name, split in world.whole_page_splits().items():
        write_pages(split.pages, out / f"{name}.parquet")
        write_parquet_atomic(_truth_table(split.pages, split.truth), out / "truth" / f"{name}.parquet")
    meta = {"config": world.config.to_json(), "summary": world.summary()}
    write_json_atomic(out / "world.json", meta)
    return out


def load_world(path: str | Path) -> World:
    path = Path(path)
    if not (path / "world.json").exists():
        raise FileNotFoundError(f"{path} is not a world folder (no world.json); create one with `smar world`")
    cfg = WorldConfig.from_json(json.loads((path / "world.json").read_text())["config"])
    single = {}
    for m in MODALITIES:
        pages = read_pages(path / "single_modal" / f"{m}.parquet")
        single[m] = Split(pages, _read_truth(path / "truth" / f"single_modal_{m}.parquet", pages))
    splits = {}
    for name in WHOLE_PAGE_SPLITS:
        pages = read_pages(path / f"{name}.parquet")
        splits[name] = Split(pages, _read_truth(path / "truth" / f"{name}.parquet", pages))
    return World(config=cfg, single_modal=single, **splits)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_class_arguments(WorldConfig, "world")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    world = generate_world(args.world)
    out = save_world(world, args.out)
    summary = world.summary()
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    print(f"wrote {out}")
    return 0
