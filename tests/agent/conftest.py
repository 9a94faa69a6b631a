"""Agent tests run torch single-threaded.

On this shared 2-core machine torch's intra-op thread pool makes small ops (softmax over a [16, 6]
tensor) take ~15 ms instead of ~4 us whenever the other core is busy: the pool waits for a core.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tiny_world, tmp_path_factory):
    """A tiny but real pretrain run (single-modal rankers, merge, SMAR reranker) on the tiny world."""
    from dataclasses import replace

    from pretrain.config import PretrainConfig
    from pretrain.runtime import torch_threads
    from pretrain.train import run_pretrain

    d = PretrainConfig()
    cfg = replace(
        d,
        single_modal=replace(d.single_modal, epochs=4, hidden=16),
        train=replace(d.train, epochs=4, hidden=16, heads=2, layers=1),
    )
    with torch_threads(1):
        return run_pretrain(tiny_world, tmp_path_factory.mktemp("tiny_run"), cfg, progress=False)
