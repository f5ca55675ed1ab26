"""Hard what/where: the max of each window and its switch, the flat index of that max."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import POOLINGS, Pooling


def hard_pool(z: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """what = max over each k x k window, where = flat index of that max (the switch), int64 (B, C, H/k, W/k)."""
    return F.max_pool2d(z, k, k, return_indices=True)


def hard_unpool(what: Tensor, where: Tensor, k: int) -> Tensor:
    """Put each value back at its switch, zeros elsewhere.

    Same result as ``F.max_unpool2d`` and as fast, but a scatter, which PyTorch
    allows under ``use_deterministic_algorithms`` (max_unpool2d does not).
    """
    b, c, hk, wk = what.shape
    flat = what.new_zeros(b, c, hk * k * wk * k).scatter(2, where.flatten(2), what.flatten(2))
    return flat.view(b, c, hk * k, wk * k)


def hard_positions(where: Tensor, k: int) -> Tensor:
    """Flat indices into the H x W map -> (dy, dx) inside the window, float (B, C, H/k, W/k, 2)."""
    width = where.shape[-1] * k
    row, col = where // width, where % width
    return torch.stack((row % k, col % k), dim=-1).to(torch.float32)


@POOLINGS.register
class HardPooling(Pooling):
    """Max pooling that keeps its switches (the paper's default)."""

    name = "hard"

    def pool(self, z: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return hard_pool(z, k)

    def unpool(self, what: Tensor, where: Tensor, k: int) -> Tensor:
        return hard_unpool(what, where, k)

    def positions(self, where: Tensor, k: int) -> Tensor:
        return hard_positions(where, k)
