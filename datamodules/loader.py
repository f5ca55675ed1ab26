"""A resumable loader over in-memory uint8 tensors.

Small datasets live in memory, so a batch is one fancy-indexing gather, not
``batch_size`` calls of a per-sample ``__getitem__`` and a collate. The loader
remembers how many batches the training loop has consumed, and Lightning saves
that through ``state_dict`` (it does so for every child of a CombinedLoader that
has one), so a mid-epoch resume neither replays nor skips examples.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .sampling import CyclingPlan, EpochPlan


class InMemoryBatches:
    """Indexing with a tensor of indices returns a whole batch."""

    def __init__(self, images: Tensor, labels: Tensor | None = None):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: Tensor):
        if self.labels is None:
            return self.images[indices]
        return self.images[indices], self.labels[indices]


def _no_pending() -> int:
    return 0


class ResumableLoader:
    """Yields the batches of ``plan`` for its current epoch, starting where it left off.

    ``pending`` returns how many yielded batches the consumer has fetched but not
    used yet: Lightning's training loop prefetches one batch to detect the end of
    the epoch, and a checkpoint written at that moment must not count it.
    ``sampler`` is the plan so Lightning's ``_set_sampler_epoch`` finds ``set_epoch``;
    Lightning also reads ``batch_sampler`` off anything that has a ``sampler``.
    """

    batch_sampler = None

    def __init__(self, data: InMemoryBatches, plan: EpochPlan | CyclingPlan, num_workers: int = 0,
                 pending: Callable[[], int] = _no_pending):
        self.data, self.sampler, self.num_workers, self.pending = data, plan, num_workers, pending
        self._start = 0  # batches of the current epoch already consumed before (re)starting
        self._yielded = 0  # batches of the current epoch handed out so far

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.sampler.epoch:
            self.sampler.set_epoch(epoch)
            self._start = self._yielded = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator:
        remaining = self.sampler.batches()[self._start :]
        self._yielded = self._start
        if self.num_workers > 0:
            source = DataLoader(self.data, sampler=remaining, batch_size=None, num_workers=self.num_workers,
                                generator=torch.Generator())  # own generator: leaves the global RNG alone
        else:
            source = (self.data[indices] for indices in remaining)
        for batch in source:
            self._yielded += 1
            yield batch
        # A finished pass starts the next one from the beginning.
        self._start = self._yielded = 0

    def state_dict(self) -> dict[str, int]:
        consumed = self._yielded - self.pending() if self._yielded else self._start
        return {"epoch": self.sampler.epoch, "batches_consumed": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self._start = self._yielded = state["batches_consumed"]
