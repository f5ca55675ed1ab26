"""Batched, on-device "strong" augmentation for FixMatch-style consistency objectives.

RandAugment-like distortions (affine, elastic, brightness/contrast, cutout) as a
handful of tensor ops per batch, each image with its own random parameters, for
float images in [0, 1] of shape (B, C, H, W) on any device. As in ``augment``,
every random number comes from an explicit CPU ``torch.Generator``, drawn in a
fixed order whatever the magnitudes, so the output is a pure function of
(images, generator state) and a resumed run augments exactly as the
uninterrupted one would.

Sampling grids are built as (B, 2, H, W) by two small matmuls (see ``_warp``):
on one CPU thread that is several times cheaper than ``F.affine_grid``,
``F.interpolate`` and stacking into (B, H, W, 2), for the same grid.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .augment import device_constant


def affine_matrices(
    degrees: Tensor, shear: Tensor, scale: Tensor, translate_x: Tensor, translate_y: Tensor, height: int, width: int
) -> Tensor:
    """Per-image (B, 2, 3) ``theta``, as ``F.affine_grid`` takes it, from explicit parameters of shape (B,).

    The forward map, in pixels about the image centre (x right, y down), is
    ``p -> scale * R(degrees) @ [[1, shear], [0, 1]] @ p + (translate_x * W, translate_y * H)``:
    positive translations move the content right / down. ``theta`` is its
    inverse (output -> input) in normalized coordinates, with the aspect ratio
    accounted for so rotations stay rotations on non-square images. Exposed,
    with ``apply_affine``, so the geometry can be tested exactly.
    """
    angle = torch.deg2rad(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # (scale * R @ Shear)^-1 = Shear^-1 @ R^-1 / scale, in pixel units ...
    m00, m01 = (cos + shear * sin) / scale, (sin - shear * cos) / scale
    m10, m11 = -sin / scale, cos / scale
    # ... then D^-1 M D with D = diag(W/2, H/2), to normalized units.
    m01, m10 = m01 * (height / width), m10 * (width / height)
    tx, ty = 2 * translate_x, 2 * translate_y  # the translation in normalized units
    return torch.stack(
        [
            torch.stack([m00, m01, -(m00 * tx + m01 * ty)], dim=-1),
            torch.stack([m10, m11, -(m10 * tx + m11 * ty)], dim=-1),
        ],
        dim=1,
    )


def _draw_affine(
    generator: torch.Generator,
    b: int,
    h: int,
    w: int,
    max_degrees: float,
    max_shear: float,
    scale: tuple[float, float],
    max_translate: float,
) -> Tensor:
    """Per-image (B, 2, 3) theta from 5 x B uniforms (float64 on the CPU: tiny, and the identity is exact)."""
    u = torch.rand((5, b), generator=generator, dtype=torch.float64)
    spread = 2 * u - 1  # U(-1, 1)
    return affine_matrices(
        spread[0] * max_degrees,
        spread[1] * max_shear,
        scale[0] + (scale[1] - scale[0]) * u[2],
        spread[3] * max_translate,
        spread[4] * max_translate,
        h,
        w,
    )


_TAPS = torch.exp(-0.5 * torch.arange(-2.0, 3.0, dtype=torch.float64) ** 2)
_TAPS = _TAPS / _TAPS.sum()  # a Gaussian of std one lattice cell, radius 2
_TAPS_GAIN = float((_TAPS**2).sum())  # the std of unit white noise after the 2-D smoothing


@functools.lru_cache(maxsize=32)
def _smoothing(cells: int) -> Tensor:
    """(cells, cells + 4): 'valid' Gaussian smoothing along one axis, as a matrix."""
    smooth = torch.zeros(cells, cells + 4, dtype=torch.float64)
    for i in range(cells):
        smooth[i, i : i + 5] = _TAPS
    return smooth


def _upsampling(size: int, cells: int) -> Tensor:
    """(size, cells): bilinear interpolation from a lattice spanning the pixel centres, as a matrix."""
    pos = torch.arange(size, dtype=torch.float64) * ((cells - 1) / max(size - 1, 1))
    lo = pos.floor().long().clamp(0, max(cells - 2, 0))
    frac = pos - lo
    upsample = torch.zeros(size, cells, dtype=torch.float64)
    upsample[torch.arange(size), lo] = 1 - frac
    upsample[torch.arange(size), (lo + 1).clamp(max=cells - 1)] += frac
    return upsample


@functools.lru_cache(maxsize=32)  # shared between calls: never modified in place
def _grid_bases(h: int, w: int, gh: int, gw: int) -> tuple[Tensor, Tensor]:
    """``rows`` (H, gh + 2) = [lattice upsampling | 1 | y] and ``cols`` (W, gw + 2) = [lattice upsampling | x | 1].

    x, y: the pixel centres in normalized coordinates; gh = gw = 0 without a lattice.
    """
    ys = (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1
    xs = (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1
    rows = torch.stack([torch.ones_like(ys), ys], dim=1)
    cols = torch.stack([xs, torch.ones_like(xs)], dim=1)
    if gh:
        rows, cols = torch.cat([_upsampling(h, gh), rows], dim=1), torch.cat([_upsampling(w, gw), cols], dim=1)
    return rows, cols


ELASTIC_SPACING = 4.0
"""Pixels over which an elastic field is correlated, weak and strong views alike: a 28x28 digit stays readable."""


def _elastic_lattice(generator: torch.Generator, images: Tensor, alpha: float, sigma: float) -> Tensor:
    """(B, 2, gh, gw) displacements, in normalized units, on a lattice of spacing ~sigma px over the pixel centres.

    White noise is Gaussian-smoothed (std one cell) and scaled to std ``alpha``
    px per component; ``_warp`` upsamples it bilinearly.
    """
    b, _, h, w = images.shape
    gh, gw = math.ceil((h - 1) / sigma) + 1, math.ceil((w - 1) / sigma) + 1
    noise = torch.randn((b, 2, gh + 4, gw + 4), generator=generator).to(images.device, images.dtype, non_blocking=True)
    lattice = (
        _smoothing(gh).to(images.device, images.dtype, non_blocking=True)
        @ noise
        @ _smoothing(gw).to(images.device, images.dtype, non_blocking=True).T
    )
    px = device_constant((2 / w, 2 / h), images.device, images.dtype).view(1, 2, 1, 1)  # normalized / px
    return lattice * (px * (alpha / _TAPS_GAIN))


def _warp(images: Tensor, theta: Tensor, lattice: Tensor | None = None) -> Tensor:
    """Sample each image at theta(p + d(p)): its affine map after an optional elastic displacement d.

    One bilinear grid_sample, zeros outside. Component k of the grid is
    ``A_k0 * x + A_k1 * y + t_k + sum_c A_kc * d_c(y, x)`` with d bilinear in
    the lattice, i.e. a separable bilinear form ``rows @ coeffs[b, k] @ cols.T``:
    two small matmuls build the whole (B, 2, H, W) grid.
    """
    b, _, h, w = images.shape
    device, dtype = images.device, images.dtype
    theta = theta.to(device, dtype, non_blocking=True)
    gh, gw = lattice.shape[2:] if lattice is not None else (0, 0)
    rows, cols = (basis.to(device, dtype, non_blocking=True) for basis in _grid_bases(h, w, gh, gw))
    a_x, a_y, shift = theta.unbind(-1)  # (B, 2) each
    coeffs = torch.zeros(b, 2, gh + 2, gw + 2, device=device, dtype=dtype)
    # [1, y] @ coeffs[b, k, gh:, gw:] @ [x, 1].T = A_k0 x + A_k1 y + t_k
    coeffs[:, :, gh, gw], coeffs[:, :, gh, gw + 1], coeffs[:, :, gh + 1, gw + 1] = a_x, shift, a_y
    if lattice is not None:  # sum_c A_kc d_c, applied to the lattice rather than the upsampled field
        coeffs[:, :, :gh, :gw] = a_x[:, :, None, None] * lattice[:, :1] + a_y[:, :, None, None] * lattice[:, 1:]
    grid = (rows @ coeffs) @ cols.T  # (B, 2, H, W)
    return F.grid_sample(images, grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros", align_corners=False)


def apply_affine(images: Tensor, theta: Tensor) -> Tensor:
    """Warp each image by its own ``theta`` (B, 2, 3), e.g. from ``affine_matrices``.

    The same as ``F.grid_sample(images, F.affine_grid(theta, images.shape, align_corners=False),
    align_corners=False)`` (bilinear, zeros outside), with the grid built cheaper.
    """
    return _warp(images, theta)


def _identity_theta(b: int) -> Tensor:
    return torch.eye(2, 3, dtype=torch.float64).expand(b, 2, 3)


def random_affine(
    images: Tensor,
    generator: torch.Generator,
    max_degrees: float = 30.0,
    max_shear: float = 0.3,
    scale: tuple[float, float] = (0.8, 1.2),
    max_translate: float = 0.125,
) -> Tensor:
    """Per image a random rotation, x-shear, isotropic scale and translation (a fraction of the size).

    Bilinear, zeros outside; the identity with every magnitude 0 and ``scale=(1, 1)``.
    """
    b, _, h, w = images.shape
    return _warp(images, _draw_affine(generator, b, h, w, max_degrees, max_shear, scale, max_translate))


def random_elastic(
    images: Tensor, generator: torch.Generator, alpha: float = 1.0, sigma: float = ELASTIC_SPACING
) -> Tensor:
    """Elastic deformation (Simard et al. 2003), cheaply: Gaussian-smoothed noise on a coarse lattice, upsampled.

    Noise on a lattice of spacing ~``sigma`` px is smoothed by a Gaussian of std
    one cell (~``sigma`` px) and scaled so each displacement component has std
    ~``alpha`` px, then bilinearly upsampled to (H, W). Both are in pixels: the
    defaults (RMS displacement ~1.4 px, correlated over ~4 px) keep 28x28 digits
    readable; scale them with the image size.
    """
    return _warp(images, _identity_theta(images.shape[0]), _elastic_lattice(generator, images, alpha, sigma))


def random_cutout(images: Tensor, generator: torch.Generator, size_fraction: float = 0.5) -> Tensor:
    """Zero one square of side ``round(size_fraction * min(H, W))`` per image, at its own position.

    The square lies wholly inside the image, so exactly side**2 pixels per channel are zeroed.
    """
    b, _, h, w = images.shape
    side = min(max(round(size_fraction * min(h, w)), 0), h, w)
    u = torch.rand((2, b), generator=generator, dtype=torch.float64)
    top = (u[0] * (h - side + 1)).long().clamp(max=h - side).to(images.device, non_blocking=True).view(b, 1)
    left = (u[1] * (w - side + 1)).long().clamp(max=w - side).to(images.device, non_blocking=True).view(b, 1)
    rows = torch.arange(h, device=images.device).view(1, h)
    cols = torch.arange(w, device=images.device).view(1, w)
    in_rows = ((rows >= top) & (rows < top + side)).to(images.dtype)  # (B, H)
    in_cols = ((cols >= left) & (cols < left + side)).to(images.dtype)  # (B, W)
    square = in_rows[:, None, :, None] * in_cols[:, None, None, :]  # (B, 1, H, W)
    return torch.addcmul(images, images, square, value=-1)  # x - x * 1 = 0 exactly; cheaper than a bool mask


def random_brightness_contrast(
    images: Tensor, generator: torch.Generator, max_brightness: float = 0.3, max_contrast: float = 0.3
) -> Tensor:
    """Per image a contrast factor in 1 +- max_contrast about the image mean, plus a brightness in +- max_brightness.

    Clamped to [0, 1]; exactly the identity with both magnitudes 0.
    """
    b = images.shape[0]
    u = 2 * torch.rand((2, b), generator=generator).to(images.device, images.dtype, non_blocking=True) - 1  # U(-1, 1)
    contrast = (1 + u[0] * max_contrast).view(b, 1, 1, 1)
    brightness = (u[1] * max_brightness).view(b, 1, 1, 1)
    offset = images.mean(dim=(1, 2, 3), keepdim=True) * (1 - contrast) + brightness
    return torch.addcmul(offset, images, contrast).clamp_(0, 1)  # clamp_ on the new tensor only


def strong_augment(images: Tensor, generator: torch.Generator, hflip: bool, cutout: float = 0.5) -> Tensor:
    """The framework's strong augmentation: [hflip], affine, elastic, brightness/contrast, cutout.

    The magnitudes are fixed but the cutout's side, ``cutout`` of the shorter image side (digits
    lose less to a smaller square). The square's position is drawn whatever its size, so every
    size sees the same random numbers.

    The flip coins are drawn whether or not ``hflip`` is set (applied only when it
    is: never for digits), so the other ops get the same random numbers either
    way. Affine and elastic draw exactly as ``random_affine`` then
    ``random_elastic`` would but share one resampling (less blur, half the cost):
    each pixel samples the input at affine(p + elastic(p)).
    """
    b, _, h, w = images.shape
    coins = torch.rand(b, generator=generator)
    if hflip:
        images = torch.where(
            (coins < 0.5).to(images.device, non_blocking=True).view(b, 1, 1, 1), images.flip(-1), images
        )
    theta = _draw_affine(generator, b, h, w, 30.0, 0.3, (0.8, 1.2), 0.125)
    images = _warp(images, theta, _elastic_lattice(generator, images, 1.0, ELASTIC_SPACING))
    images = random_brightness_contrast(images, generator)
    return random_cutout(images, generator, cutout)
