"""Which examples are labeled, which are validation, and in what order batches come.

Everything here is a pure function of (seed, epoch, rank, world size): no global
RNG, so every rank and every resumed run draws exactly the same thing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def seeded_generator(*parts: int) -> torch.Generator:
    # hash() of a tuple of ints is stable across processes (PYTHONHASHSEED only salts str/bytes).
    return torch.Generator().manual_seed(hash(tuple(parts)) & 0x7FFF_FFFF_FFFF_FFFF)


def hold_out_validation(num_train: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Split the training split into (rest, validation) index sets, seeded."""
    if not 0 <= val_size < num_train:
        raise ValueError(
            f"val_size={val_size} must be in [0, {num_train}) for a training split of {num_train} examples"
        )
    perm = torch.randperm(num_train, generator=seeded_generator(seed, 0x7A1))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def check_label_count(num_labels: int, num_classes: int) -> None:
    if num_labels <= 0 or num_labels % num_classes:
        raise ValueError(
            f"labels={num_labels} must be a positive multiple of the {num_classes} classes "
            f"(balanced: the same count per class), e.g. {num_classes * max(1, round(num_labels / num_classes))}"
        )


def balanced_labeled_indices(
    labels: Tensor, candidates: Tensor, num_labels: int, num_classes: int, seed: int
) -> Tensor:
    """num_labels indices from ``candidates``, num_labels / num_classes of each class, seeded."""
    check_label_count(num_labels, num_classes)
    per_class = num_labels // num_classes
    generator = seeded_generator(seed, 0x1AB)
    chosen = []
    for c in range(num_classes):
        pool = candidates[labels[candidates] == c]
        if len(pool) < per_class:
            raise ValueError(
                f"labels={num_labels} asks for {per_class} examples of class {c}, "
                f"but the training split (after validation) holds only {len(pool)}"
            )
        chosen.append(pool[torch.randperm(len(pool), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


class EpochSampler:
    """One shuffled pass over ``num_examples`` per epoch, sharded over ranks.

    Rank r takes every world_size-th example of the epoch's permutation, so shards
    are disjoint and together cover each example exactly once. Every rank gets the
    same number of batches (the shard is split into ``len(self)`` near-equal
    batches), which DDP needs to keep its collectives in step. With ``full_batches``
    every batch holds exactly ``batch_size`` examples and the epoch's remainder (a
    different one each epoch) is left out: one shape for every step.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        epoch: int = 0,
        full_batches: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be >= 1")
        if num_examples < world_size:
            raise ValueError(f"{num_examples} examples cannot be shared by {world_size} ranks")
        if full_batches and num_examples // world_size < batch_size:
            raise ValueError(
                f"--full-batches: batches of {batch_size} need at least {batch_size * world_size} examples "
                f"({world_size} rank(s)); there are {num_examples}: lower the batch size or leave out --full-batches"
            )
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.epoch = rank, world_size, shuffle, epoch
        self.full_batches = full_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.full_batches:  # every rank's shard holds at least num_examples // world_size
            return self.num_examples // self.world_size // self.batch_size
        return math.ceil(math.ceil(self.num_examples / self.world_size) / self.batch_size)

    def batches(self) -> list[Tensor]:
        if self.shuffle:
            order = torch.randperm(self.num_examples, generator=seeded_generator(self.seed, self.epoch, 0xE0C))
        else:
            order = torch.arange(self.num_examples)
        shard = order[self.rank :: self.world_size]
        if self.full_batches:
            return list(shard[: len(self) * self.batch_size].split(self.batch_size))
        return list(torch.tensor_split(shard, len(self)))


class CyclingSampler:
    """``num_batches`` batches drawn from a stream of reshuffled passes over a small set.

    Used for the labeled set: it is much smaller than the unlabeled pool, so one
    unlabeled epoch cycles through it many times. Each cycle is a fresh
    permutation seeded by (seed, epoch, cycle), sharded over ranks like
    EpochSampler, so the order differs from one cycle to the next on every rank
    (unlike re-iterating a DataLoader whose DistributedSampler epoch is fixed).
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        num_batches: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be >= 1")
        if num_examples < world_size:
            raise ValueError(f"{num_examples} labeled examples cannot be shared by {world_size} ranks")
        self.num_examples, self.batch_size, self.num_batches, self.seed = num_examples, batch_size, num_batches, seed
        self.rank, self.world_size, self.epoch = rank, world_size, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    @property
    def cycles_per_epoch(self) -> float:
        """How many times one epoch goes through the whole set (all ranks together)."""
        return self.num_batches * self.batch_size * self.world_size / self.num_examples

    def batches(self) -> list[Tensor]:
        needed = self.num_batches * self.batch_size
        stream, have, cycle = [], 0, 0
        while have < needed:
            perm = torch.randperm(self.num_examples, generator=seeded_generator(self.seed, self.epoch, cycle, 0xC1C))
            shard = perm[self.rank :: self.world_size]
            stream.append(shard)
            have += len(shard)
            cycle += 1
        return list(torch.cat(stream)[:needed].split(self.batch_size))
