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


# exp(-80) ~ 2e-35 is still a normal float32: below that, exp() and everything that
# touches its result fall into denormals, which run ~30x slower on x86 CPUs, and the
# weights they would give are zero to float precision anyway.
_MIN_EXPONENT = -80.0


class _SoftPool(torch.autograd.Function):
    """Soft max / soft argmax per window with a hand-written backward.

    Autograd through the same formulas builds a dozen full-resolution intermediates;
    the gradient has a closed form that needs one pass (Goroshin et al. 2015):
        d what / d z_i = w_i (1 + beta (z_i - what))
        d dy   / d z_i = beta w_i (y_i - dy)      (and likewise for dx)
    """

    @staticmethod
    def forward(ctx, z: Tensor, k: int, beta: float):
        b, c, h, w = z.shape
        window_max = F.max_pool2d(z, k, k)[:, :, :, None, :, None]
        weights = (_windows(z, k) - window_max).mul_(beta).clamp_(min=_MIN_EXPONENT).exp_()
        # Window sums through avg_pool2d, which is much faster than sum over two strided axes.
        weights.div_(F.avg_pool2d(weights.view(b, c, h, w), k, k).mul_(k * k)[:, :, :, None, :, None])
        what = F.avg_pool2d(weights.view(b, c, h, w) * z, k, k).mul_(k * k)
        offsets = torch.arange(k, device=z.device, dtype=z.dtype)
        dy = weights.sum(dim=5).mul_(offsets.view(k, 1)).sum(dim=3)  # row marginal . row offsets
        dx = weights.sum(dim=3).mul_(offsets).sum(dim=4)  # column marginal . column offsets
        ctx.save_for_backward(z, weights, what, dy, dx)
        ctx.k, ctx.beta = k, beta
        return what, torch.stack((dy, dx), dim=-1)

    @staticmethod
    def backward(ctx, grad_what: Tensor, grad_where: Tensor):
        z, weights, what, dy, dx = ctx.saved_tensors
        k, beta = ctx.k, ctx.beta
        grad_what = grad_what.contiguous()  # it may arrive channels-last
        grad_dy, grad_dx = grad_where[..., 0], grad_where[..., 1]
        offsets = torch.arange(k, device=z.device, dtype=z.dtype)

        def per_window(t: Tensor) -> Tensor:
            return t[:, :, :, None, :, None]

        # grad_i = w_i * (g_what + beta * (g_what z_i + g_dy y_i + g_dx x_i - (g_what what + g_dy dy + g_dx dx)))
        grad = per_window(grad_what) * _windows(z, k)
        grad += per_window(grad_dy) * offsets.view(k, 1, 1)
        grad += per_window(grad_dx) * offsets
        grad -= per_window(grad_what * what + grad_dy * dy + grad_dx * dx)
        grad.mul_(beta).add_(per_window(grad_what)).mul_(weights)
        return grad.reshape(z.shape), None, None


def soft_pool(z: Tensor, k: int, beta: float) -> tuple[Tensor, Tensor]:
    """Soft max and soft argmax over each window (Goroshin et al. 2015, eq. for m_k and p_k).

    w = softmax(beta * z) inside the window; what = sum w*z; where = sum w*(dy, dx).
    """
    return _SoftPool.apply(z.contiguous(), k, float(beta))


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
