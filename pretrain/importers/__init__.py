"""Real-data importers: Qilin and CrossRank Parquet files -> the page contract (`smar import`)."""

from pretrain.importers.common import SourceFormatError
from pretrain.importers.config import CrossRankConfig, ImportConfig, QilinConfig
from pretrain.importers.crossrank import import_crossrank
from pretrain.importers.qilin import import_qilin
from pretrain.importers.text import hash_texts

__all__ = [
    "CrossRankConfig",
    "ImportConfig",
    "QilinConfig",
    "SourceFormatError",
    "hash_texts",
    "import_crossrank",
    "import_qilin",
]
