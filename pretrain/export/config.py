"""Every setting of `smar export`, each with its one default (`--export.FIELD`, derived by jsonargparse;
the writers' keyword defaults read them from here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from envs.config_io import JsonConfig

FORMATS = ("crossrank", "qilin")
UPSTREAM = ("auto", "rankers", "none")


@dataclass(frozen=True, kw_only=True)
class ExportConfig(JsonConfig):
    """`smar export`: the target schema and how the world is written in it."""

    format: Literal["crossrank", "qilin"]
    single_modal: bool = True  # crossrank: also write the single-modal part (SingleModal_*.parquet)
    batch_pages: int = 2048  # pages per written batch (memory stays bounded by the world itself)
    # Upstream (single-modal) scores written: the world's single-modal rankers' ("rankers"; qilin's under
    # "auto", it has no single-modal part) or the pages' own ("none"; crossrank's under "auto", whose
    # single-modal part carries the labels).
    upstream: Literal["auto", "rankers", "none"] = "auto"
    upstream_seed: int = 0  # seed of the rankers behind upstream "rankers"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.upstream not in UPSTREAM:
            raise ValueError(f"upstream must be one of {UPSTREAM}, got {self.upstream!r}")
        if self.batch_pages < 1:
            raise ValueError(f"batch_pages must be at least 1, got {self.batch_pages}")

    @property
    def upstream_source(self) -> str:
        """ "rankers" or "none", with "auto" resolved for the format."""
        if self.upstream != "auto":
            return self.upstream
        return "rankers" if self.format == "qilin" else "none"
