"""Window layouts shared by the poolings: a k x k window as two tensor axes, never a Python loop."""

from __future__ import annotations

import torch
from torch import Tensor


def to_windows(z: Tensor, k: int) -> Tensor:
    """(B, C, H, W), any layout -> contiguous (B, C, k, k, H/k, W/k): the window offset (dy, dx) becomes two outer axes.

    One copy; after it every per-window reduction runs over an outer axis with a
    contiguous, vectorized inner loop, where on the (..., k, W/k, k) view it ran a
    k-long inner loop per window, several times slower on CPUs. (A permuted copy here
    runs about 4x faster than ``pixel_unshuffle`` on CPU.)
    """
    h, w = z.shape[2:]
    # unflatten is a view in any memory layout, so a channels-last map needs no NCHW copy first.
    return z.unflatten(2, (h // k, k)).unflatten(4, (w // k, k)).permute(0, 1, 3, 5, 2, 4).contiguous()


def from_windows(v: Tensor) -> Tensor:
    """Inverse of ``to_windows``: (B, C, k, k, H/k, W/k) -> contiguous (B, C, H, W)."""
    b, c, k, _, hk, wk = v.shape
    out = v.new_empty(b, c, hk * k, wk * k)
    out.view(b, c, hk, k, wk, k).permute(0, 1, 3, 5, 2, 4).copy_(v)  # faster than pixel_shuffle on CPU
    return out


def offsets(k: int, like: Tensor) -> Tensor:
    """0..k-1 shaped (k, 1, 1) to broadcast against a (..., k, H/k, W/k) axis."""
    return torch.arange(k, device=like.device, dtype=like.dtype).view(k, 1, 1)


def stack_offsets(dy: Tensor, dx: Tensor) -> Tensor:
    """(B, C, h, w) twice -> (B, C, h, w, 2), stored as (B, C, 2, h, w): stacking on the last axis
    interleaves, ~8x slower."""
    return torch.stack((dy, dx), dim=2).movedim(2, -1)


def copy_unpool(what: Tensor, k: int) -> Tensor:
    """Unpooling without the where: the value fills its whole window (nearest upsampling)."""
    b, c, hk, wk = what.shape
    return from_windows(what[:, :, None, None].expand(b, c, k, k, hk, wk))
