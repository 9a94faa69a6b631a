"""`smar import --format qilin|crossrank SRC --out DIR`: real dataset files -> the page contract."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretrain.importers.common import SourceFormatError
from pretrain.importers.crossrank import CrossRankConfig, import_crossrank
from pretrain.importers.qilin import QilinConfig, import_qilin
from pretrain.page import PageValidationError


def _modal_map(text: str | dict) -> dict[str, str]:
    if isinstance(text, dict):  # already parsed (a config file or a resolved.yaml)
        return {str(k): str(v) for k, v in text.items()}
    try:
        pairs = [p.split("=", 1) for p in text.split(",") if p]
        return {k.strip(): v.strip() for k, v in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected like 0=doc,1=video, got {text!r}") from None


def _note_types(text: str | dict) -> dict[int, str]:
    if isinstance(text, dict):  # already parsed (a config file or a resolved.yaml)
        return {int(k): str(v) for k, v in text.items()}
    try:
        pairs = [p.split("=", 1) for p in text.split(",") if p]
        return {int(k): v.strip() for k, v in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected like 1=image,2=video, got {text!r}") from None


def _cuts(text: str | list | tuple) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two seconds like 30,120, got {text!r}") from None
    if not 0 < a < b:
        raise argparse.ArgumentTypeError(f"dwell cuts must satisfy 0 < first < second, got {text!r}")
    return a, b


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, choices=("qilin", "crossrank"), help="source dataset")
    p.add_argument("src", help="dataset folder (Qilin: config folders; CrossRank: the Parquet files)")
    p.add_argument("--out", required=True, help="output folder for {split}.parquet and import.json")
    p.add_argument("--text-dim", type=int, default=32, help="hashed bag-of-n-grams width (titles: half)")
    p.add_argument("--query-text-dim", type=int, default=32)
    p.add_argument("--batch-rows", type=int, default=1024, help="search requests per streamed batch")
    p.add_argument("--limit", type=int, default=None, help="import at most N requests per split")
    p.add_argument(
        "--impute-missing",
        action="store_true",
        help="fill null/NaN numeric source values with 0 (default: fail)",
    )
    p.add_argument("--dwell-cuts", type=_cuts, default=(30.0, 120.0), help="qilin: seconds for grades 2|3|4")
    p.add_argument(
        "--note-types",
        type=_note_types,
        default={1: "image", 2: "video"},
        help="qilin note_type -> modality (an exported world: 1=image,2=video,3=doc,4=answer)",
    )
    p.add_argument(
        "--upstream",
        default="auto",
        choices=("auto", "none", "dpr_results", "bm25_results"),
        help="qilin: retrieval list whose [note_idx, score] gives single_modal_score (auto: dpr_results)",
    )
    p.add_argument(
        "--no-query-text",
        action="store_true",
        help="crossrank: `query` is an id, not text (an exported world): group by it, do not hash it",
    )
    p.add_argument(
        "--modal-map", type=_modal_map, default={"0": "doc", "1": "video"}, help="crossrank modal map"
    )


def run(args: argparse.Namespace) -> int:
    common = dict(
        text_dim=args.text_dim,
        query_text_dim=args.query_text_dim,
        batch_rows=args.batch_rows,
        impute_missing=args.impute_missing,
        limit=args.limit,
    )
    try:
        if args.format == "qilin":
            cfg = QilinConfig(
                dwell_cuts=args.dwell_cuts, note_types=args.note_types, upstream=args.upstream, **common
            )
        else:
            cfg = CrossRankConfig(modal_map=args.modal_map, query_text=not args.no_query_text, **common)
    except ValueError as e:
        print(f"smar import: {e}", file=sys.stderr)
        return 2
    try:
        if args.format == "qilin":
            summary = import_qilin(args.src, args.out, cfg)
        else:
            summary = import_crossrank(args.src, args.out, cfg)
    except (SourceFormatError, PageValidationError) as e:
        print(f"smar import: {e}", file=sys.stderr)
        return 1
    for split, s in summary["outputs"].items():
        items = ", ".join(f"{m} {n}" for m, n in s["items"].items())
        grades = "  ".join(f"{m}:{'/'.join(map(str, g))}" for m, g in s["grades"].items())
        print(f"{split:<6} {s['pages']:>8} pages  items: {items}  grades 0-4: {grades}")
    print(f"feature dims {summary['feature_dims']}; wrote {Path(args.out)} in {summary['seconds']} s")
    return 0
