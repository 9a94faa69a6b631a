"""Training-loop plumbing: thread settings for CPU training on a small shared machine, a garbage
collector that skips the set-up's objects, and the best epoch's weights for early stopping.

Intra-op parallelism on 2 shared cores makes small-tensor training many times slower (threads spin
against each other and against other processes), so training loops run single-threaded by default.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Run the block with every object alive now moved out of the cyclic garbage collector's view
    (`gc.freeze`), restoring them afterwards. A training loop after its set-up holds hundreds of
    thousands of long-lived objects (data, Ray, RLlib); each full collection would walk all of them
    (a tenth of a second or more, every few iterations) while only the loop's new objects can be
    garbage. Nothing computed changes."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class BestWeights:
    """Early stopping on a selection score: keeps the weights of the best epoch so far and says when
    `patience` epochs in a row have not beaten it. An epoch beats the best when its score exceeds the
    best by more than `min_gain` (or by at least `min_gain` with `keep_ties`: a tie then keeps the
    later, longer-trained weights)."""

    patience: int
    min_gain: float = 0.0
    keep_ties: bool = False
    best: float = -1.0
    epoch: int = -1
    bad: int = 0
    state: dict[str, torch.Tensor] | None = None

    def update(self, score: float, epoch: int, module: torch.nn.Module) -> bool:
        """Record one epoch's score (and `module`'s weights when it is the best); True: stop now."""
        limit = self.best + self.min_gain
        if score >= limit if self.keep_ties else score > limit:
            self.best, self.epoch, self.bad = score, epoch, 0
            self.state = {k: t.clone() for k, t in module.state_dict().items()}
            return False
        self.bad += 1
        return self.bad >= self.patience

    def restore(self, module: torch.nn.Module) -> None:
        """Load the best epoch's weights into `module` and put it in eval mode."""
        module.load_state_dict(self.state)
        module.eval()
