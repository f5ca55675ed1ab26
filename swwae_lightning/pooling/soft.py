"""Soft what/where (Goroshin et al. 2015): a softmax-weighted mean in each window and its real-valued position.

w = softmax(beta * z) inside the window; what = sum w z; where = sum w (dy, dx), stored
float (B, C, H/k, W/k, 2) (a view of a (B, C, 2, H/k, W/k) tensor: reshape it, do not
``view`` it). Unpooling splats each value bilinearly at its position, which keeps its mass
and is differentiable in value and position. Both directions have hand-written backward
passes (closed forms, checked against finite differences in the tests). On the CPU a
fused kernel (``soft_kernel``) computes both, in one pass each instead of a dozen.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import settings as S
from . import soft_kernel
from .base import POOLINGS, Pooling
from .windows import from_windows, offsets, stack_offsets, to_windows

# Exponents are floored at -30 (a weight of ~1e-13 against the window's largest, which is
# 1 before normalizing): lower weights are zero to float32 precision, and with them the
# backward's products w_i * gradient fall below float32's normal range, where x86 CPUs
# run every op that touches them (the encoder's conv backward included) many times slower.
_MIN_EXPONENT = -30.0


def _kernel_for(t: Tensor, k: int):
    """The fused CPU kernel when it applies (a float/double CPU map that k divides), else None."""
    return soft_kernel.usable(t) if t.shape[-2] % k == 0 and t.shape[-1] % k == 0 else None


def _as_planes(t: Tensor) -> Tensor:
    """(B, C, H, W), any layout -> contiguous (B*C, H, W), as the kernel takes them."""
    return t.contiguous().flatten(0, 1)


class _SoftPool(torch.autograd.Function):
    """Soft max / soft argmax per window with a hand-written backward.

    Autograd through the same formulas builds a dozen full-resolution intermediates;
    the gradient has a closed form that needs one pass (Goroshin et al. 2015):
        d what / d z_i = w_i (1 + beta (z_i - what))
        d dy   / d z_i = beta w_i (y_i - dy)      (and likewise for dx)
    On the CPU the fused kernel computes both directions; elsewhere tensor operations do.
    """

    @staticmethod
    def forward(ctx, z: Tensor, k: int, beta: float):
        ctx.beta, ctx.kernel = beta, _kernel_for(z, k)
        if ctx.kernel is not None:
            b, c, height, width = z.shape
            planes = _as_planes(z)
            what, dy, dx, weights = ctx.kernel.pool_forward(planes, k, beta, _MIN_EXPONENT)
            ctx.save_for_backward(planes, weights, what, dy, dx)
            ctx.k, ctx.shape = k, z.shape
            pooled = (b, c, height // k, width // k)
            return what.view(pooled), stack_offsets(dy.view(pooled), dx.view(pooled))
        zw = to_windows(z, k)  # (B, C, k, k, h, w)
        flat = zw.flatten(2, 3)
        weights = (flat - flat.amax(dim=2, keepdim=True)).mul_(beta).clamp_(min=_MIN_EXPONENT).exp_()
        weights.div_(weights.sum(dim=2, keepdim=True))
        what = (weights * flat).sum(dim=2)
        weights = weights.view_as(zw)
        window_offsets = offsets(k, z)
        dy = weights.sum(dim=3).mul_(window_offsets).sum(dim=2)  # row marginal . row offsets
        dx = weights.sum(dim=2).mul_(window_offsets).sum(dim=2)  # column marginal . column offsets
        ctx.save_for_backward(zw, weights, what, dy, dx)
        return what, stack_offsets(dy, dx)

    @staticmethod
    def backward(ctx, grad_what: Tensor, grad_where: Tensor):
        beta = ctx.beta
        if ctx.kernel is not None:
            planes, weights, what, dy, dx = ctx.saved_tensors
            g_what, g_dy, g_dx = (_as_planes(g) for g in (grad_what, grad_where[..., 0], grad_where[..., 1]))
            grad = ctx.kernel.pool_backward(planes, weights, what, dy, dx, g_what, g_dy, g_dx, ctx.k, beta)
            return grad.view(ctx.shape), None, None
        zw, weights, what, dy, dx = ctx.saved_tensors
        window_offsets = offsets(zw.shape[2], zw)
        g_what, g_dy, g_dx = (
            grad_what.contiguous(),
            grad_where[..., 0],
            grad_where[..., 1],
        )  # grad_what may be channels-last
        # grad_i = w_i * (g_what + beta * (g_what z_i + g_dy y_i + g_dx x_i - (g_what what + g_dy dy + g_dx dx)))
        #        = w_i * (beta g_what z_i + bias(y_i, x_i)), with everything but z_i per window:
        # bias(y, x) = g_what (1 - beta what) - beta (g_dy dy + g_dx dx) + beta g_dy y + beta g_dx x
        per_window = g_what - beta * ((g_what * what).addcmul_(g_dy, dy).addcmul_(g_dx, dx))
        bias = (per_window[:, :, None] + beta * g_dy[:, :, None] * window_offsets)[:, :, :, None] + (
            beta * g_dx[:, :, None] * window_offsets
        )[:, :, None]
        grad = bias.addcmul_(zw, (beta * g_what)[:, :, None, None]).mul_(weights)
        return from_windows(grad), None, None


def soft_pool(z: Tensor, k: int, beta: float) -> tuple[Tensor, Tensor]:
    """Soft max and soft argmax over each window (Goroshin et al. 2015, eq. for m_k and p_k).

    w = softmax(beta * z) inside the window; what = sum w*z; where = sum w*(dy, dx).
    """
    return _SoftPool.apply(z, k, float(beta))


def _tent(position: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Bilinear weights of real positions (B, C, h, w) over a window's k offsets, (B, C, k, h, w), and the
    distances j - position.

    tent(j) = max(0, 1 - |j - position|): an integer position gets weight 1 on its
    pixel, a half position 0.5 on each neighbour, and the weights always sum to 1
    for positions in [0, k-1], so splatting preserves mass.
    """
    distance = offsets(k, position) - position[:, :, None]
    return (1 - distance.abs()).clamp_(min=0), distance


def _tent_slope(tent: Tensor, distance: Tensor) -> Tensor:
    """d tent / d position: sign(j - position) inside the tent, 0 outside (needed by the backward only)."""
    return distance.sign().mul_(tent > 0)


class _SoftUnpool(torch.autograd.Function):
    """Bilinear splat with a hand-written backward: one pass each way instead of autograd's broadcasts."""

    @staticmethod
    def forward(ctx, what: Tensor, where: Tensor, k: int):
        ctx.kernel = soft_kernel.usable(what)
        if ctx.kernel is not None:
            b, c, h, w = what.shape
            planes = [_as_planes(t) for t in (what, where[..., 0], where[..., 1])]
            ctx.save_for_backward(*planes)
            ctx.k, ctx.where_shape = k, where.shape
            return ctx.kernel.unpool_forward(*planes, k).view(b, c, h * k, w * k)
        wy, distance_y = _tent(where[..., 0], k)
        wx, distance_x = _tent(where[..., 1], k)
        # out[b, c, y, x, i, j] = what[b, c, i, j] * wy[b, c, y, i, j] * wx[b, c, x, i, j]
        out = (what[:, :, None] * wy)[:, :, :, None] * wx[:, :, None]
        ctx.save_for_backward(what, wy, wx, distance_y, distance_x)
        return from_windows(out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.kernel is not None:
            what, dy, dx = ctx.saved_tensors
            grad_what, grad_y, grad_x = ctx.kernel.unpool_backward(_as_planes(grad_out), what, dy, dx, ctx.k)
            b, c, h, w, _ = ctx.where_shape
            return (grad_what.view(b, c, h, w), stack_offsets(grad_y.view(b, c, h, w), grad_x.view(b, c, h, w)), None)
        what, wy, wx, distance_y, distance_x = ctx.saved_tensors
        slope_y, slope_x = _tent_slope(wy, distance_y), _tent_slope(wx, distance_x)
        g = to_windows(grad_out, wy.shape[2])  # channels-last when the decoder conv above ran so
        along_x = (g * wx[:, :, None]).sum(dim=3)  # (B, C, k, h, w): each row of the window, weighted by x
        along_y = (g * wy[:, :, :, None]).sum(dim=2)
        grad_what = (along_x * wy).sum(dim=2)
        grad_y = (along_x * slope_y).sum(dim=2).mul_(what)
        grad_x = (along_y * slope_x).sum(dim=2).mul_(what)
        return grad_what, stack_offsets(grad_y, grad_x), None


def soft_unpool(what: Tensor, where: Tensor, k: int) -> Tensor:
    """Bilinear splat of each value at its real-valued (dy, dx) inside its window."""
    return _SoftUnpool.apply(what.contiguous(), where, k)


@POOLINGS.register
class SoftPooling(Pooling):
    """Soft max and soft argmax; ``beta`` is the temperature (large beta: hard pooling)."""

    name = "soft"

    def __init__(self, beta: float = 100.0):
        super().__init__(beta=beta)

    settings = (
        S.Setting(
            "beta",
            S.default_of(__init__, "beta"),
            "soft pooling temperature (> 0)",
            "what-where",
            type=float,
            check=S.greater_than(0),
        ),
    )

    def pool(self, z: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return soft_pool(z, k, self.options["beta"])

    def unpool(self, what: Tensor, where: Tensor, k: int) -> Tensor:
        return soft_unpool(what, where, k)

    def positions(self, where: Tensor, k: int) -> Tensor:
        return where.float()
