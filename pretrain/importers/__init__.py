"""Real-data importers: Qilin and CrossRank Parquet files -> the page contract (`smar import`)."""

from pretrain.importers.common import SourceFormatError
from pretrain.importers.crossrank import CrossRankConfig, import_crossrank
from pretrain.importers.qilin import QilinConfig, import_qilin
from pretrain.importers.text import hash_texts

__all__ = [
    "CrossRankConfig",
    "QilinConfig",
    "SourceFormatError",
    "hash_texts",
    "import_crossrank",
    "import_qilin",
]
