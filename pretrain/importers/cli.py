"""`smar import SRC --out DIR --import.format qilin|crossrank [--import.FIELD V ...]`: real dataset files
-> the page contract. Every setting is a field of `ImportConfig` (pretrain.importers.config)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretrain.importers.common import SourceFormatError
from pretrain.importers.config import ImportConfig
from pretrain.importers.crossrank import import_crossrank
from pretrain.importers.qilin import import_qilin
from pretrain.page import PageValidationError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="dataset folder (Qilin: config folders; CrossRank: the Parquet files)")
    p.add_argument("--out", required=True, help="output folder for {split}.parquet and import.json")
    # --import.format and every reader setting: --import.text_dim, --import.note_types (qilin),
    # --import.modal_map (crossrank), ... (a reader reads the ones it has)
    p.add_class_arguments(ImportConfig, "import")


def run(args: argparse.Namespace) -> int:
    cfg: ImportConfig = getattr(args, "import")
    reader = import_qilin if cfg.format == "qilin" else import_crossrank
    try:
        summary = reader(args.src, args.out, cfg.reader_config())
    except (SourceFormatError, PageValidationError) as e:
        print(f"smar import: {e}", file=sys.stderr)
        return 1
    for split, s in summary["outputs"].items():
        items = ", ".join(f"{m} {n}" for m, n in s["items"].items())
        grades = "  ".join(f"{m}:{'/'.join(map(str, g))}" for m, g in s["grades"].items())
        print(f"{split:<6} {s['pages']:>8} pages  items: {items}  grades 0-4: {grades}")
    print(f"feature dims {summary['feature_dims']}; wrote {Path(args.out)} in {summary['seconds']} s")
    return 0
