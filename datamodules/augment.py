"""Batched, on-device scaling, normalization and augmentation of uint8 image batches.

These run after the batch reaches its device (the DataModule's
``on_after_batch_transfer``), as a handful of tensor ops per batch instead of a
PIL transform per sample, and draw from an explicit generator so a resumed run
augments exactly as the uninterrupted one would.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=32)
def device_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small tensor of host values, made on its device once: a copy from the host each step would make a
    GPU's host wait for it."""
    return torch.tensor(values, device=device, dtype=dtype)


def _per_channel(values: tuple[float, ...], like: Tensor) -> Tensor:
    return device_constant(tuple(values), like.device, like.dtype).view(1, -1, 1, 1)


def standardize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Float images in [0, 1] -> the model's input space (per-channel standardization)."""
    return (images - _per_channel(mean, images)) / _per_channel(std, images)


def destandardize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """The model's input space -> [0, 1], for pictures."""
    return (images * _per_channel(std, images) + _per_channel(mean, images)).clamp(0, 1)


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 (B, C, H, W) -> float, scaled to [0, 1] then standardized per channel."""
    return standardize(images.float() / 255, mean, std)


@functools.lru_cache(maxsize=32)
def _positions(n: int, offset: int, device: torch.device) -> Tensor:
    """``arange(n) + offset`` on its device, made once: the index bases of every batch of that size."""
    return torch.arange(n, device=device) + offset


def random_translate(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image by its own (dy, dx) in [-max_shift, max_shift], filling with zeros."""
    if max_shift == 0:
        return images
    b, c, h, w = images.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (2, b), generator=generator).to(images.device, non_blocking=True)
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    rows = _positions(h, max_shift, images.device) - shifts[0].view(b, 1)  # (B, H)
    cols = _positions(w, max_shift, images.device) - shifts[1].view(b, 1)  # (B, W)
    batch = _positions(b, 0, images.device).view(b, 1, 1)
    # Advanced indexing on dims 0, 2, 3 gives (B, H, W, C); move C back.
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_hflip(images: Tensor, generator: torch.Generator) -> Tensor:
    flip = (
        (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device, non_blocking=True).view(-1, 1, 1, 1)
    )
    return torch.where(flip, images.flip(-1), images)


def add_gaussian_noise(images: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """Add noise of standard deviation ``std`` to every pixel, drawn on the host so that a run adds the
    same noise on any device."""
    noise = torch.randn(images.shape, generator=generator).to(images.device, images.dtype, non_blocking=True)
    return images + std * noise
