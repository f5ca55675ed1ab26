"""Pictures of the where: where the maxima fall in the image, and where inside their windows.

A flat position histogram means the where carries much information; a peaked one means
the switches sit at a fixed place and unpooling with them is close to a fixed upsampling.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid

from swwae_lightning.pooling import Pooling

from .image_logging import PictureCallback


def switch_density(pooling: Pooling, where: Tensor, k: int, out_hw: tuple[int, int]) -> Tensor:
    """How many switches (summed over channels) fell on each pre-pool pixel: float (B, *out_hw).

    Unit mass is placed at every switch as the variant unpools (hard: on the max; soft:
    splatted bilinearly at its (dy, dx)), then upsampled by nearest neighbour, so each
    output pixel holds its pre-pool pixel's count.
    """
    density = pooling.switch_mass(where, k).sum(dim=1, keepdim=True)
    return F.interpolate(density, size=tuple(out_hw), mode="nearest-exact").squeeze(1)


def switch_histogram(pooling: Pooling, where: Tensor, k: int) -> Tensor:
    """Counts of switch positions inside the k x k window over all windows: float (k, k).

    Sums to the number of windows, B * C * H/k * W/k.
    """
    mass = pooling.switch_mass(where, k)
    b, c, h, w = mass.shape
    return mass.view(b, c, h // k, k, w // k, k).sum(dim=(0, 1, 2, 4))


def mean_switch_offset(pooling: Pooling, where: Tensor, k: int) -> Tensor:
    """The (dy, dx) offset averaged over images and channels: float (H/k, W/k, 2).

    For soft pooling this shows whether the soft argmax drifts towards a side of the
    window in some part of the image.
    """
    return pooling.positions(where, k).float().mean(dim=(0, 1))


def red_overlay(grey: Tensor, heat: Tensor) -> Tensor:
    """Grey (B, 1, H, W) with heat (B, H, W, in [0, 1]) in red: grey where heat is 0, pure red at 1."""
    heat = heat.unsqueeze(1)
    return torch.cat([torch.maximum(grey, heat), grey * (1 - heat), grey * (1 - heat)], dim=1)


def _fill(picture: Tensor, hw: tuple[int, int]) -> Tensor:
    """(3, h, w) -> (1, 3, *hw) by nearest neighbour, so a small map takes one grid cell."""
    return F.interpolate(picture[None], size=hw, mode="nearest-exact")


def _as_fraction(values: Tensor) -> Tensor:
    return values / values.max().clamp(min=torch.finfo(values.dtype).tiny)


class SwitchMapLogger(PictureCallback):
    """One grid per pooling layer (1 = the one nearest the input), ``switches_layer{L}``.

    Row 1: each image with its switch density in red (brightest = most switches in this
    grid). Then the k x k histogram of positions inside the window, and for soft pooling
    the mean (dy, dx) offset map (red = dy, green = dx, 1 = k-1).
    """

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor) -> None:
        net = pl_module.net
        wheres = net(images).wheres
        grey = trainer.datamodule.to_display(images.detach().float().cpu()).mean(dim=1, keepdim=True)
        for layer, (where, k) in enumerate(zip(wheres, net.pool_sizes()), start=1):
            where = where.detach().cpu()
            cells, rows = self._cells(net.pooling, where, k, grey)
            _, c, h, w = where.shape[:4]
            caption = (
                f"pooling layer {layer} ({net.pooling.describe()}, {k}x{k}): where {tuple(where.shape)} from a "
                f"{c}x{h * k}x{w * k} map, epoch {trainer.current_epoch}; {', then '.join(rows)}"
            )
            self.publish(trainer, make_grid(torch.cat(cells), nrow=len(images)), f"switches_layer{layer}", caption)

    @staticmethod
    def _cells(pooling: Pooling, where: Tensor, k: int, grey: Tensor) -> tuple[list[Tensor], list[str]]:
        """The grid's pictures, each (N, 3, H, W) at the input size, and what each shows."""
        hw = tuple(grey.shape[-2:])
        density = switch_density(pooling, where, k, hw)
        histogram = switch_histogram(pooling, where, k)
        cells = [red_overlay(grey, _as_fraction(density)), _fill(_as_fraction(histogram).expand(3, k, k), hw)]
        top_share = (histogram.max() / histogram.sum()).item()  # a number for what a grey level hides
        rows = [
            "switch density (red) over each input",
            f"the {k}x{k} histogram of positions in the window (top position {top_share:.0%}, flat {1 / k**2:.0%})",
        ]
        if pooling.name != "hard":  # real-valued offsets are worth a look of their own
            dy_dx = mean_switch_offset(pooling, where, k).permute(2, 0, 1) / (k - 1)
            cells.append(_fill(torch.cat([dy_dx, torch.zeros_like(dy_dx[:1])]), hw))
            rows.append("the mean (dy, dx) offset (red dy, green dx)")
        return cells, rows
