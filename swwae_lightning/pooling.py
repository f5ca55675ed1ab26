"""What/where pooling and unpooling (SWWAE_SPEC.md, "Hard and soft what/where").

Every function works on the (B, C, H/k, k, W/k, k) view of a feature map, so a
k x k window is two tensor axes: no Python loop over windows and no unfold copy.

Shapes of the *where*:
- hard: int64 (B, C, H/k, W/k), flat switch index into the H x W map, exactly
  what ``F.max_pool2d(return_indices=True)`` returns (so ``F.max_unpool2d`` reads it);
- soft: float (B, C, H/k, W/k, 2), the (dy, dx) offset inside the window, each in [0, k-1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

POOLINGS = ("hard", "soft")
UNPOOLINGS = ("where", "copy")


def _windows(z: Tensor, k: int) -> Tensor:
    """(B, C, H, W) -> (B, C, H/k, k, W/k, k) view (no copy)."""
    b, c, h, w = z.shape
    return z.view(b, c, h // k, k, w // k, k)


def _merge_windows(v: Tensor) -> Tensor:
    """(B, C, H/k, k, W/k, k) -> (B, C, H, W)."""
    b, c, hk, k, wk, _ = v.shape
    return v.reshape(b, c, hk * k, wk * k)


def hard_pool(z: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """what = max over each k x k window, where = flat index of that max (the switch)."""
    return F.max_pool2d(z, k, k, return_indices=True)


def hard_unpool(what: Tensor, where: Tensor, k: int) -> Tensor:
    """Put each value back at its switch, zeros elsewhere.

    Same result as ``F.max_unpool2d`` and as fast, but a scatter, which PyTorch
    allows under ``use_deterministic_algorithms`` (max_unpool2d does not).
    """
    b, c, hk, wk = what.shape
    flat = what.new_zeros(b, c, hk * k * wk * k).scatter(2, where.flatten(2), what.flatten(2))
    return flat.view(b, c, hk * k, wk * k)


def soft_pool(z: Tensor, k: int, beta: float) -> tuple[Tensor, Tensor]:
    """Soft max and soft argmax over each window (Goroshin et al. 2015, eq. for m_k and p_k).

    w = softmax(beta * z) inside the window; what = sum w*z; where = sum w*(dy, dx).
    """
    zw = _windows(z, k)
    logits = beta * zw
    # Softmax over the two window axes (3 and 5), stabilised by the window max.
    logits = logits - logits.amax(dim=(3, 5), keepdim=True).detach()
    e = logits.exp()
    weights = e / e.sum(dim=(3, 5), keepdim=True)
    what = (weights * zw).sum(dim=(3, 5))
    offsets = torch.arange(k, device=z.device, dtype=weights.dtype)
    dy = (weights.sum(dim=5) * offsets.view(k, 1)).sum(dim=3)  # marginal over rows
    dx = (weights.sum(dim=3) * offsets).sum(dim=4)  # marginal over columns
    return what, torch.stack((dy, dx), dim=-1)


def _tent(position: Tensor, k: int) -> Tensor:
    """Bilinear weights of a real position over the k integer positions of a window.

    tent(j) = max(0, 1 - |j - position|): an integer position gets weight 1 on its
    pixel, a half position 0.5 on each neighbour, and the weights always sum to 1
    for positions in [0, k-1], so splatting preserves mass.
    """
    offsets = torch.arange(k, device=position.device, dtype=position.dtype)
    return (1 - (offsets - position.unsqueeze(-1)).abs()).clamp(min=0)


def soft_unpool(what: Tensor, where: Tensor, k: int) -> Tensor:
    """Bilinear splat of each value at its real-valued (dy, dx) inside its window."""
    wy = _tent(where[..., 0], k)  # (B, C, H/k, W/k, k)
    wx = _tent(where[..., 1], k)
    # out[b, c, i, y, j, x] = what[b, c, i, j] * wy[b, c, i, j, y] * wx[b, c, i, j, x]
    out = what[:, :, :, None, :, None] * wy.permute(0, 1, 2, 4, 3)[..., None] * wx[:, :, :, None, :, :]
    return _merge_windows(out)


def copy_unpool(what: Tensor, k: int) -> Tensor:
    """Unpooling without the where: the value fills its whole window (nearest upsampling)."""
    b, c, hk, wk = what.shape
    return _merge_windows(what[:, :, :, None, :, None].expand(b, c, hk, k, wk, k))


def pool(z: Tensor, k: int, pooling: str, beta: float) -> tuple[Tensor, Tensor]:
    if pooling == "hard":
        return hard_pool(z, k)
    if pooling == "soft":
        return soft_pool(z, k, beta)
    raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")


def unpool(what: Tensor, where: Tensor, k: int, unpooling: str) -> Tensor:
    """Unpool with the where (hard or soft, told apart by the where's dtype) or by copying."""
    if unpooling == "copy":
        return copy_unpool(what, k)
    if unpooling != "where":
        raise ValueError(f"unpool={unpooling!r} is not one of {UNPOOLINGS}")
    if where.dtype == torch.int64:
        return hard_unpool(what, where, k)
    return soft_unpool(what, where, k)


def switch_positions(where: Tensor, k: int) -> Tensor:
    """The (dy, dx) offset of each switch inside its window, float (B, C, H/k, W/k, 2).

    Hard switches are flat indices into the H x W map; soft ones are already offsets.
    Used by the switch-map pictures and the equivariance study.
    """
    if where.dtype != torch.int64:
        return where
    width = where.shape[-1] * k
    row, col = where // width, where % width
    return torch.stack((row % k, col % k), dim=-1).to(torch.float32)
