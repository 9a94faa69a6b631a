"""What both writers share: list columns, batches of pages, the upstream scores a world can carry."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa


def list_column(mat: np.ndarray) -> pa.ListArray:
    """(n, k) matrix -> a list<float32> column of n cells of k values."""
    n, k = mat.shape
    return pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32) * k), pa.array(mat.ravel(), pa.float32())
    )


def chunks(n: int, size: int) -> Iterator[np.ndarray]:
    """Consecutive index ranges of at most `size` covering 0..n-1."""
    for s in range(0, n, size):
        yield np.arange(s, min(n, s + size))


def upstream_scores(world, seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """The world's single-modal rankers' scores on every whole-page item (what `smar pretrain` trains)."""
    from pretrain.config import PretrainConfig
    from pretrain.train import prepare

    prep = prepare(world, PretrainConfig(seed=seed), progress)
    return {name: prep.scored[name].pages.single_modal_score for name in ("pool", "valid", "test")}
