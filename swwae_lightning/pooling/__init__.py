"""What/where pooling variants (see docs/model.md, "Hard and soft what/where").

``POOLINGS`` holds the registered variants (hard, soft, and any an extension registers);
``unpool`` chooses between unpooling with the where and copying (the paper's ablation).
"""

from __future__ import annotations

from torch import Tensor

from .base import POOLINGS, UNPOOLINGS, Pooling, make_pooling
from .hard import HardPooling, hard_pool, hard_positions, hard_unpool
from .soft import SoftPooling, soft_pool, soft_unpool
from .windows import copy_unpool


def unpool(pooling: Pooling, what: Tensor, where: Tensor | None, k: int, mode: str) -> Tensor:
    """Unpool with the where (the variant's own way) or, with ``mode="copy"``, without it."""
    if mode == "copy":
        return copy_unpool(what, k)
    if mode != "where":
        raise ValueError(f"unpool={mode!r} is not one of {UNPOOLINGS}")
    return pooling.unpool(what, where, k)


__all__ = [
    "POOLINGS",
    "Pooling",
    "make_pooling",
    "UNPOOLINGS",
    "unpool",
    "copy_unpool",
    "HardPooling",
    "SoftPooling",
    "hard_pool",
    "hard_unpool",
    "hard_positions",
    "soft_pool",
    "soft_unpool",
]
