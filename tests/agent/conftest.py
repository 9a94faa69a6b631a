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
