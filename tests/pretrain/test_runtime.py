"""Training-loop plumbing (pretrain.runtime)."""

from __future__ import annotations

import gc

import torch

from pretrain.runtime import frozen_heap, torch_threads


def test_frozen_heap_hides_the_objects_alive_at_entry_and_restores_them():
    kept = [[i] for i in range(100)]
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() >= before + len(kept)
        cycle: list = []
        cycle.append(cycle)  # garbage made inside the block is still collected
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0 and len(kept) == 100


def test_torch_threads_restores_the_setting():
    prev = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == prev
