"""What/where pooling and unpooling (SWWAE_SPEC.md, "Hard and soft what/where").

A k x k window is always two tensor axes, never a Python loop: hard pooling uses
``max_pool2d`` and a scatter; soft pooling copies the map once into a (B, C, k, k, H/k, W/k)
layout so that every per-window reduction runs over outer axes with contiguous inner loops.

Shapes of the *where*:
- hard: int64 (B, C, H/k, W/k), flat switch index into the H x W map, exactly
  what ``F.max_pool2d(return_indices=True)`` returns (so ``F.max_unpool2d`` reads it);
- soft: float (B, C, H/k, W/k, 2), the (dy, dx) offset inside the window, each in [0, k-1]
  (a view of a (B, C, 2, H/k, W/k) tensor: reshape it, do not ``view`` it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

POOLINGS = ("hard", "soft")
UNPOOLINGS = ("where", "copy")


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


# exp(-80) ~ 2e-35 is still a normal float32: below that, exp() and everything that
# touches its result fall into denormals, which run ~30x slower on x86 CPUs, and the
# weights they would give are zero to float precision anyway.
_MIN_EXPONENT = -80.0


def _to_windows(z: Tensor, k: int) -> Tensor:
    """(B, C, H, W), any layout -> contiguous (B, C, k, k, H/k, W/k): the window offset (dy, dx) becomes two outer axes.

    One copy; after it every per-window reduction runs over an outer axis with a
    contiguous, vectorized inner loop, where on the (..., k, W/k, k) view it ran a
    k-long inner loop per window, several times slower on CPUs. (A permuted copy here
    runs about 4x faster than ``pixel_unshuffle`` on CPU.)
    """
    h, w = z.shape[2:]
    # unflatten is a view in any memory layout, so a channels-last map needs no NCHW copy first.
    return z.unflatten(2, (h // k, k)).unflatten(4, (w // k, k)).permute(0, 1, 3, 5, 2, 4).contiguous()


def _from_windows(v: Tensor) -> Tensor:
    """Inverse of ``_to_windows``: (B, C, k, k, H/k, W/k) -> contiguous (B, C, H, W)."""
    b, c, k, _, hk, wk = v.shape
    out = v.new_empty(b, c, hk * k, wk * k)
    out.view(b, c, hk, k, wk, k).permute(0, 1, 3, 5, 2, 4).copy_(v)  # faster than pixel_shuffle on CPU
    return out


def _offsets(k: int, like: Tensor) -> Tensor:
    """0..k-1 shaped (k, 1, 1) to broadcast against a (..., k, H/k, W/k) axis."""
    return torch.arange(k, device=like.device, dtype=like.dtype).view(k, 1, 1)


def _stack_offsets(dy: Tensor, dx: Tensor) -> Tensor:
    """(B, C, h, w) twice -> (B, C, h, w, 2), stored as (B, C, 2, h, w): stacking on the last axis interleaves, ~8x slower."""
    return torch.stack((dy, dx), dim=2).movedim(2, -1)


class _SoftPool(torch.autograd.Function):
    """Soft max / soft argmax per window with a hand-written backward.

    Autograd through the same formulas builds a dozen full-resolution intermediates;
    the gradient has a closed form that needs one pass (Goroshin et al. 2015):
        d what / d z_i = w_i (1 + beta (z_i - what))
        d dy   / d z_i = beta w_i (y_i - dy)      (and likewise for dx)
    """

    @staticmethod
    def forward(ctx, z: Tensor, k: int, beta: float):
        zw = _to_windows(z, k)  # (B, C, k, k, h, w)
        flat = zw.flatten(2, 3)
        weights = (flat - flat.amax(dim=2, keepdim=True)).mul_(beta).clamp_(min=_MIN_EXPONENT).exp_()
        weights.div_(weights.sum(dim=2, keepdim=True))
        what = (weights * flat).sum(dim=2)
        weights = weights.view_as(zw)
        offsets = _offsets(k, z)
        dy = weights.sum(dim=3).mul_(offsets).sum(dim=2)  # row marginal . row offsets
        dx = weights.sum(dim=2).mul_(offsets).sum(dim=2)  # column marginal . column offsets
        ctx.save_for_backward(zw, weights, what, dy, dx)
        ctx.beta = beta
        return what, _stack_offsets(dy, dx)

    @staticmethod
    def backward(ctx, grad_what: Tensor, grad_where: Tensor):
        zw, weights, what, dy, dx = ctx.saved_tensors
        beta = ctx.beta
        offsets = _offsets(zw.shape[2], zw)
        g_what, g_dy, g_dx = grad_what.contiguous(), grad_where[..., 0], grad_where[..., 1]  # grad_what may be channels-last
        # grad_i = w_i * (g_what + beta * (g_what z_i + g_dy y_i + g_dx x_i - (g_what what + g_dy dy + g_dx dx)))
        #        = w_i * (beta g_what z_i + bias(y_i, x_i)), with everything but z_i per window:
        # bias(y, x) = g_what (1 - beta what) - beta (g_dy dy + g_dx dx) + beta g_dy y + beta g_dx x
        per_window = g_what - beta * ((g_what * what).addcmul_(g_dy, dy).addcmul_(g_dx, dx))
        bias = (per_window[:, :, None] + beta * g_dy[:, :, None] * offsets)[:, :, :, None] + (beta * g_dx[:, :, None] * offsets)[:, :, None]
        grad = bias.addcmul_(zw, (beta * g_what)[:, :, None, None]).mul_(weights)
        return _from_windows(grad), None, None


def soft_pool(z: Tensor, k: int, beta: float) -> tuple[Tensor, Tensor]:
    """Soft max and soft argmax over each window (Goroshin et al. 2015, eq. for m_k and p_k).

    w = softmax(beta * z) inside the window; what = sum w*z; where = sum w*(dy, dx).
    """
    return _SoftPool.apply(z, k, float(beta))


def _tent(position: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Bilinear weights of real positions (B, C, h, w) over a window's k offsets, (B, C, k, h, w), and the distances j - position.

    tent(j) = max(0, 1 - |j - position|): an integer position gets weight 1 on its
    pixel, a half position 0.5 on each neighbour, and the weights always sum to 1
    for positions in [0, k-1], so splatting preserves mass.
    """
    distance = _offsets(k, position) - position[:, :, None]
    return (1 - distance.abs()).clamp_(min=0), distance


def _tent_slope(tent: Tensor, distance: Tensor) -> Tensor:
    """d tent / d position: sign(j - position) inside the tent, 0 outside (needed by the backward only)."""
    return distance.sign().mul_(tent > 0)


class _SoftUnpool(torch.autograd.Function):
    """Bilinear splat with a hand-written backward: one pass each way instead of autograd's broadcasts."""

    @staticmethod
    def forward(ctx, what: Tensor, where: Tensor, k: int):
        wy, distance_y = _tent(where[..., 0], k)
        wx, distance_x = _tent(where[..., 1], k)
        # out[b, c, y, x, i, j] = what[b, c, i, j] * wy[b, c, y, i, j] * wx[b, c, x, i, j]
        out = (what[:, :, None] * wy)[:, :, :, None] * wx[:, :, None]
        ctx.save_for_backward(what, wy, wx, distance_y, distance_x)
        return _from_windows(out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        what, wy, wx, distance_y, distance_x = ctx.saved_tensors
        slope_y, slope_x = _tent_slope(wy, distance_y), _tent_slope(wx, distance_x)
        g = _to_windows(grad_out, wy.shape[2])  # channels-last when the decoder conv above ran so
        along_x = (g * wx[:, :, None]).sum(dim=3)  # (B, C, k, h, w): each row of the window, weighted by x
        along_y = (g * wy[:, :, :, None]).sum(dim=2)
        grad_what = (along_x * wy).sum(dim=2)
        grad_y = (along_x * slope_y).sum(dim=2).mul_(what)
        grad_x = (along_y * slope_x).sum(dim=2).mul_(what)
        return grad_what, _stack_offsets(grad_y, grad_x), None


def soft_unpool(what: Tensor, where: Tensor, k: int) -> Tensor:
    """Bilinear splat of each value at its real-valued (dy, dx) inside its window."""
    return _SoftUnpool.apply(what.contiguous(), where, k)


def copy_unpool(what: Tensor, k: int) -> Tensor:
    """Unpooling without the where: the value fills its whole window (nearest upsampling)."""
    b, c, hk, wk = what.shape
    return _from_windows(what[:, :, None, None].expand(b, c, k, k, hk, wk))


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
