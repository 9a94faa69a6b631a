"""Every setting of `smar import`, each with its one default.

The two readers share the feature settings (`FeatureSettings`); each adds its own (`QilinSettings`,
`CrossRankSettings`). `QilinConfig` / `CrossRankConfig` are what a reader takes; `ImportConfig` is the
command's (`--import.FIELD`, derived by jsonargparse): the format plus every setting of both readers,
built from the same classes, so a default lives in one place only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from envs.config_io import JsonConfig
from envs.pages import MODALITIES, MODALITY_ID

FORMATS = ("qilin", "crossrank")
NOTE_TYPE_MODALITY = {1: "image", 2: "video"}  # Qilin's published note types
UPSTREAM_COLUMNS = ("dpr_results", "bm25_results")  # Qilin's retrieval lists of [note_idx, score] pairs


@dataclass(frozen=True)
class FeatureSettings:
    """How text and numbers become features, and how much is read at a time (both readers)."""

    text_dim: int = 32  # hashed note content / abstract width (titles use text_dim // 2)
    query_text_dim: int = 32
    cat_buckets: int = 8  # hashed one-hot width for categorical codes
    batch_rows: int = 1024  # search requests per streamed batch
    impute_missing: bool = False  # fill null/NaN numeric source values with 0 instead of failing
    limit: int | None = None  # at most this many requests per split (trial runs)
    max_chars: int = 512

    @property
    def title_dim(self) -> int:
        return max(self.text_dim // 2, 1)


@dataclass(frozen=True)
class QilinSettings:
    """Qilin's own settings: labels from dwell, note types, the upstream retrieval list."""

    dwell_cuts: tuple[float, float] = (30.0, 120.0)  # seconds: grade 2 | 3 | 4
    # note_type -> modality. The release has 1 (image-text) and 2 (video); other codes (written by
    # `smar export --export.format qilin` for a world's documents and answers) need an explicit entry.
    note_types: dict[int, str] = field(default_factory=lambda: dict(NOTE_TYPE_MODALITY))
    # Where single_modal_score comes from: the score of the note in this retrieval list of the
    # request ("auto": dpr_results when the search files have it), or "none" (all unknown).
    upstream: str = "auto"

    def _check_qilin(self) -> None:
        """Keys as ints (a YAML/JSON mapping may carry them as strings), then the checks."""
        try:
            object.__setattr__(self, "note_types", {int(k): str(v) for k, v in self.note_types.items()})
        except ValueError:
            raise ValueError(f"note_types keys must be integers, got {list(self.note_types)}") from None
        bad = [m for m in self.note_types.values() if m not in MODALITY_ID]
        if bad:
            raise ValueError(f"note_types targets must be modalities {tuple(MODALITY_ID)}, got {bad}")
        if self.upstream not in ("auto", "none", *UPSTREAM_COLUMNS):
            raise ValueError(
                f"upstream must be auto, none or one of {UPSTREAM_COLUMNS}, got {self.upstream!r}"
            )
        a, b = self.dwell_cuts
        if not 0 < a < b:
            raise ValueError(f"dwell cuts must satisfy 0 < first < second, got {self.dwell_cuts}")


@dataclass(frozen=True)
class CrossRankSettings:
    """CrossRank's own settings: what each `modal` code is, whether `query` is text."""

    modal_map: dict[str, str] = field(default_factory=lambda: {"0": "doc", "1": "video"})
    # False: `query` is an identifier, not text (as in `smar export`'s copies): it still groups the
    # pages but is not hashed into query features, where it would only be noise.
    query_text: bool = True

    def _check_crossrank(self) -> None:
        object.__setattr__(self, "modal_map", {str(k): str(v) for k, v in self.modal_map.items()})
        bad = [m for m in self.modal_map.values() if m not in MODALITIES]
        if bad:
            raise ValueError(f"modal_map targets must be among {MODALITIES}, got {bad}")


@dataclass(frozen=True)
class QilinConfig(QilinSettings, FeatureSettings):
    """How Qilin fields become features and labels."""

    def __post_init__(self) -> None:
        self._check_qilin()


@dataclass(frozen=True)
class CrossRankConfig(CrossRankSettings, FeatureSettings):
    """How CrossRank fields become features and labels."""

    def __post_init__(self) -> None:
        self._check_crossrank()


@dataclass(frozen=True, kw_only=True)
class ImportConfig(CrossRankSettings, QilinSettings, FeatureSettings, JsonConfig):
    """`smar import`: the source format and every setting (a reader reads the ones it has)."""

    format: Literal["qilin", "crossrank"]

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        self._check_qilin()
        self._check_crossrank()

    def reader_config(self) -> QilinConfig | CrossRankConfig:
        """The chosen reader's config, from this command's settings."""
        cls = QilinConfig if self.format == "qilin" else CrossRankConfig
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})


__all__ = [
    "FORMATS",
    "NOTE_TYPE_MODALITY",
    "UPSTREAM_COLUMNS",
    "CrossRankConfig",
    "FeatureSettings",
    "ImportConfig",
    "QilinConfig",
]
