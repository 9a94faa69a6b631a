"""`smar export`: a synthetic world as files in a real dataset's published schema, the same schema
`smar import` reads (pretrain.importers).

It makes the real-data path testable end to end, and measurable at any size, without the datasets.
Modules: the settings `config` (`ExportConfig`), the CrossRank writer `crossrank`, the Qilin writer
`qilin` (each documents its layout and mapping), shared helpers `common`, the command `cli`.
"""

from pretrain.export.common import upstream_scores
from pretrain.export.config import FORMATS, ExportConfig
from pretrain.export.crossrank import MODAL_CODES, MODAL_MAP, MODAL_MAP_ARG, QueryTokens, export_crossrank
from pretrain.export.qilin import (
    NOTE_TYPES,
    NOTE_TYPES_ARG,
    QILIN_NOTE_TYPES,
    export_qilin,
    qilin_click_dwell,
    qilin_slots,
)

__all__ = [
    "FORMATS",
    "MODAL_CODES",
    "MODAL_MAP",
    "MODAL_MAP_ARG",
    "NOTE_TYPES",
    "NOTE_TYPES_ARG",
    "QILIN_NOTE_TYPES",
    "ExportConfig",
    "QueryTokens",
    "export_crossrank",
    "export_qilin",
    "qilin_click_dwell",
    "qilin_slots",
    "upstream_scores",
]
