"""What the pictures of the where measure: where the switches fall, in live windows only.

Only *live* windows count. A window whose maximum is 0 (all-zero ReLU background) or is
reached at several places (a constant patch: after batch norm the background is a
constant, often positive, map) has its switch at the first maximum by convention, not
because the input put it there; such windows are most of an MNIST image, and counting
them paints every background red and piles the position histogram into its first cell.
A live window has a strictly positive maximum reached at one place only (soft pooling:
a strictly positive maximum; its soft argmax has no ties to break).

A flat position histogram over live windows means the where carries information; a
peaked one means the switches sit at a fixed place and unpooling with them is close to a
fixed upsampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor

from swwae_lightning.network import StackedWhatWhere
from swwae_lightning.pooling import Pooling
from swwae_lightning.pooling.windows import to_windows


def ties_matter(pooling: Pooling) -> bool:
    """Whether a tied maximum leaves the switch to convention: every variant but soft pooling,
    whose soft argmax of a tie is a well-defined weighted position."""
    return pooling.name != "soft"


def live_windows(pooling: Pooling, z: Tensor, k: int, rtol: float = 1e-4) -> Tensor:
    """Which windows of the pre-pool map ``z`` (B, C, H, W) carry a real switch: bool (B, C, H/k, W/k).

    Live: the window's maximum is strictly positive and, for poolings whose switch is an
    argmax, reached only once; values within ``rtol`` of the maximum (relative) count as
    reaching it, so a constant patch computed with a few rounding differences is a tie too.
    """
    h, w = z.shape[-2] // k * k, z.shape[-1] // k * k
    windows = to_windows(z[..., :h, :w].detach().float(), k).flatten(2, 3)  # (B, C, k*k, h/k, w/k)
    top = windows.amax(dim=2)
    live = top > 0
    if ties_matter(pooling):
        reaching = windows >= (top - rtol * top.abs()).unsqueeze(2)
        live &= reaching.sum(dim=2) == 1
    return live


def _mass(pooling: Pooling, where: Tensor, k: int, live: Tensor | None) -> Tensor:
    """Unit mass at every (live) switch, placed as the variant unpools: float (B, C, H, W)."""
    if live is None:
        return pooling.switch_mass(where, k)
    return pooling.unpool(live.to(torch.float32), where, k)


def switch_density(
    pooling: Pooling, where: Tensor, k: int, out_hw: tuple[int, int], live: Tensor | None = None
) -> Tensor:
    """How many switches (summed over channels) fell on each pre-pool pixel: float (B, *out_hw).

    Unit mass is placed at every switch (only the ``live`` ones if given) as the variant
    unpools (hard: on the max; soft: splatted bilinearly at its (dy, dx)), then upsampled
    by nearest neighbour, so each output pixel holds its pre-pool pixel's count.
    """
    density = _mass(pooling, where, k, live).sum(dim=1, keepdim=True)
    return F.interpolate(density, size=tuple(out_hw), mode="nearest-exact").squeeze(1)


def switch_histogram(pooling: Pooling, where: Tensor, k: int, live: Tensor | None = None) -> Tensor:
    """Counts of switch positions inside the k x k window: float (k, k).

    Over all windows it sums to B * C * H/k * W/k; with ``live``, over the live windows
    only, it sums to their number.
    """
    mass = _mass(pooling, where, k, live)
    b, c, h, w = mass.shape
    return mass.view(b, c, h // k, k, w // k, k).sum(dim=(0, 1, 2, 4))


def mean_switch_offset(pooling: Pooling, where: Tensor, k: int, live: Tensor | None = None) -> Tensor:
    """The (dy, dx) offset averaged over images and channels: float (H/k, W/k, 2).

    With ``live``, over live windows only, and NaN where no window at that place is live.
    For soft pooling this shows whether the soft argmax drifts towards a side of the
    window in some part of the image.
    """
    positions = pooling.positions(where, k).float()
    if live is None:
        return positions.mean(dim=(0, 1))
    weight = live.float().unsqueeze(-1)
    return (positions * weight).sum(dim=(0, 1)) / weight.sum(dim=(0, 1))


@dataclass
class PoolingLayer:
    """One pooling layer's what, where and live windows for a batch (on the CPU, float32)."""

    index: int  # 1 = the layer nearest the input
    pooling: Pooling
    k: int
    what: Tensor  # (B, C, h, w)
    where: Tensor
    live: Tensor  # bool (B, C, h, w)
    prepool_hw: tuple[int, int]
    input_hw: tuple[int, int]

    @cached_property
    def live_share(self) -> float:
        return self.live.float().mean().item()

    @cached_property
    def density(self) -> Tensor:
        """Live switches per pre-pool pixel, summed over channels, at the input's size: (B, H, W)."""
        return switch_density(self.pooling, self.where, self.k, self.input_hw, self.live)

    @cached_property
    def histogram(self) -> Tensor:
        """In-window positions of the live switches: (k, k)."""
        return switch_histogram(self.pooling, self.where, self.k, self.live)

    @property
    def block(self) -> int:
        """Input pixels per pre-pool pixel (along the height)."""
        return max(1, self.input_hw[0] // self.prepool_hw[0])

    def describe(self) -> str:
        return (
            f"pooling layer {self.index}: {self.pooling.describe()}, {self.k}x{self.k} windows, "
            f"{self.what.shape[1]} channels of {self.prepool_hw[0]}x{self.prepool_hw[1]}"
        )

    def live_text(self) -> str:
        rule = "max > 0 and reached once" if ties_matter(self.pooling) else "max > 0"
        return f"live windows ({rule}): {self.live_share:.1%} of {self.live.numel():,}"


def pooling_layers(net: StackedWhatWhere, images: Tensor) -> list[PoolingLayer]:
    """Each pooling layer's what, where and live windows, encoding ``images`` stage by stage as
    ``WhatWhereStage.encode`` does, keeping the pre-pool map z that the tie test needs."""
    layers = []
    h = images
    for stage in net.stages:
        z = stage.encoder(h)
        if stage.pool_size is None:
            break
        what, where = net.pooling.pool(z, stage.pool_size)
        live = live_windows(net.pooling, z, stage.pool_size)
        where = where.detach().cpu()
        layers.append(
            PoolingLayer(
                len(layers) + 1,
                net.pooling,
                stage.pool_size,
                what.detach().float().cpu(),
                where.float() if where.is_floating_point() else where,
                live.cpu(),
                tuple(z.shape[-2:]),
                tuple(images.shape[-2:]),
            )
        )
        h = what
    return layers
