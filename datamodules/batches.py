"""A resumable loader over in-memory uint8 tensors.

Small datasets live in memory, so a batch is one fancy-indexing gather, not
``batch_size`` calls of a per-sample ``__getitem__`` and a collate. The loader
remembers how many batches the training loop has consumed (the DataModule marks
each batch Lightning transfers to the device), and Lightning saves that through
``state_dict`` (it does so for every child of a CombinedLoader that has one), so a
mid-epoch resume neither replays nor skips examples.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .sampling import CyclingSampler, EpochSampler


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


class ResumableLoader:
    """Yields the batches of ``plan`` for its current epoch, starting where it left off.

    Lightning's training loop prefetches one batch to detect the end of the epoch, so
    what was yielded is not what was used: the consumer calls ``mark_consumed`` for each
    batch it uses, and only those count in a checkpoint.
    ``sampler`` is the plan so Lightning's ``_set_sampler_epoch`` finds ``set_epoch``;
    Lightning also reads ``batch_sampler`` off anything that has a ``sampler``.
    """

    batch_sampler = None

    def __init__(self, data: InMemoryBatches, plan: EpochSampler | CyclingSampler, num_workers: int = 0):
        self.data, self.sampler, self.num_workers = data, plan, num_workers
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches consumed) from a checkpoint
        self._consumed = 0  # batches of the current pass the consumer has used

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator:
        epoch = self.sampler.epoch
        # A restored position applies once, and only to the pass it was saved in.
        start = self._resume_at[1] if self._resume_at and self._resume_at[0] == epoch else 0
        self._resume_at = None
        remaining = self.sampler.batches()[start:]
        self._consumed = start
        if self.num_workers > 0:
            source = DataLoader(
                self.data, sampler=remaining, batch_size=None, num_workers=self.num_workers, generator=torch.Generator()
            )  # own generator: leaves the global RNG alone
        else:
            source = (self.data[indices] for indices in remaining)
        yield from source

    def mark_consumed(self) -> None:
        self._consumed += 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_consumed": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self._resume_at = (state["epoch"], state["batches_consumed"])
        self._consumed = state["batches_consumed"]
