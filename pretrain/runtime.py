"""Thread settings for CPU training on a small shared machine.

Intra-op parallelism on 2 shared cores makes small-tensor training many times slower (threads spin
against each other and against other processes), so training loops run single-threaded by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, restoring the previous setting afterwards."""
    prev = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(prev)
