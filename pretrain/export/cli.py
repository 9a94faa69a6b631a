"""`smar export WORLD --out SRC --export.format crossrank|qilin [--export.FIELD V ...]`: a world as
files in a real dataset's schema. Every setting is a field of `ExportConfig` (pretrain.export.config)."""

from __future__ import annotations

import argparse
import shlex

from pretrain.export.common import upstream_scores
from pretrain.export.config import ExportConfig
from pretrain.export.crossrank import MODAL_MAP_ARG, export_crossrank
from pretrain.export.qilin import NOTE_TYPES_ARG, export_qilin


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("world", help="world folder (`smar world --out WORLD`)")
    p.add_argument("--out", required=True, help="output folder for the dataset files")
    # --export.format, --export.single_modal, --export.batch_pages, --export.upstream, --export.upstream_seed
    p.add_class_arguments(ExportConfig, "export")


def import_hint(cfg: ExportConfig, src: str) -> str:
    """The `smar import` command that reads what `cfg` wrote to `src`."""
    head = f"smar import {shlex.quote(str(src))} --out DIR --import.format {cfg.format}"
    if cfg.format == "qilin":
        return f"{head} --import.note_types {shlex.quote(NOTE_TYPES_ARG)}"
    return f"{head} --import.modal_map {shlex.quote(MODAL_MAP_ARG)} --import.query_text false"


def run(args: argparse.Namespace) -> int:
    from pretrain.world_io import load_world

    cfg: ExportConfig = args.export
    world = load_world(args.world)
    scores = upstream_scores(world, cfg.upstream_seed) if cfg.upstream_source == "rankers" else None
    if cfg.format == "qilin":
        s = export_qilin(world, args.out, scores, batch_pages=cfg.batch_pages)
    else:
        s = export_crossrank(
            world, args.out, single_modal=cfg.single_modal, batch_pages=cfg.batch_pages, scores=scores
        )
    rows = ", ".join(f"{k} {v}" for k, v in s["rows"].items())
    print(f"wrote {args.out}: {rows} search rows in {s['seconds']} s")
    if s.get("dropped_features"):
        print(
            f"item features beyond the schema's numeric columns dropped per modality: {s['dropped_features']}"
        )
    print(f"import with: {import_hint(cfg, args.out)}")
    return 0
