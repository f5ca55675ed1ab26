"""Pictures of the where: where the network's switches fall in the image, and where inside their windows
(what they measure: ``switch_stats``).

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

import numpy as np
import pytorch_lightning as pl
import torch.nn.functional as F
from matplotlib.colors import hsv_to_rgb
from torch import Tensor

from .image_logging import PictureCallback
from .sheet import CELL_GAP, LABEL_WIDTH, Sheet, cell_scale, colormap, nearest_upscale
from .switch_stats import (
    PoolingLayer,
    mean_switch_offset,
    pooling_layers,
    switch_histogram,
    ties_matter,
)

DENSITY_CMAP, CHANNEL_CMAP, HISTOGRAM_CMAP = "plasma", "viridis", "viridis"
STROKE = 0.5  # a single-channel display pixel above this is ink


@dataclass
class Backdrop:
    """The display images that switch maps are drawn over: their grey level, and for single-channel
    data their ink (grey > STROKE). Colour images have no strokes to measure against."""

    grey: Tensor  # (N, H, W) in [0, 1], on the CPU
    ink: Tensor | None  # (N, H, W) bool

    @classmethod
    def of(cls, display: Tensor) -> Backdrop:
        """From display-space images (N, C, H, W) in [0, 1]."""
        grey = display.detach().float().cpu().clamp(0, 1).mean(dim=1)
        return cls(grey, grey > STROKE if display.shape[1] == 1 else None)

    @property
    def scale(self) -> int:
        return cell_scale(self.grey.shape[-2])


def ink_shares(layer: PoolingLayer, backdrop: Backdrop) -> dict[str, float] | None:
    """Where the live switches fall against the ink: the shares of them on ink and within one pre-pool
    pixel of it, and the share of the image area each of those covers. None for colour images, or
    without ink or live switches."""
    ink = backdrop.ink
    total = layer.density.sum().item()
    if ink is None or total <= 0 or not ink.any():
        return None
    reach = layer.block
    near = F.max_pool2d(ink[:, None].float(), 2 * reach + 1, 1, reach)[:, 0] > 0
    return {
        "on": (layer.density * ink).sum().item() / total,
        "on_area": ink.float().mean().item(),
        "near": (layer.density * near).sum().item() / total,
        "near_area": near.float().mean().item(),
        "reach": reach,
    }


# --- the drawing -------------------------------------------------------------------------------


def overlay(grey: np.ndarray, heat: np.ndarray, cmap: str, scale: int, ink: np.ndarray | None = None) -> np.ndarray:
    """The image in grey with ``heat`` (same shape, in [0, 1]) painted over it in colour, upscaled by
    ``scale``; 0 heat leaves the grey image as it is. ``ink`` (bool, same shape): its edge drawn as a thin cyan line."""
    alpha = np.clip(1.5 * heat, 0, 1)[..., None]
    picture = nearest_upscale((1 - alpha) * (0.55 * grey[..., None]) + alpha * colormap(cmap, 0.3 + 0.7 * heat), scale)
    if ink is not None:
        ink = nearest_upscale(ink, scale)
        inside = ink.copy()
        inside[1:] &= ink[:-1]
        inside[:-1] &= ink[1:]
        inside[:, 1:] &= ink[:, :-1]
        inside[:, :-1] &= ink[:, 1:]
        edge = ink & ~inside
        picture[edge] = 0.5 * picture[edge] + 0.5 * np.array([0.3, 1.0, 1.0])
    return picture


def offset_colours(offsets: np.ndarray, k: int) -> np.ndarray:
    """(h, w, 2) mean (dy, dx) -> RGB: hue the direction from the window's centre, saturation the distance
    (1 at the window's edge); light grey where the offset is NaN (no live window)."""
    centre = (k - 1) / 2
    rel = (offsets - centre) / max(centre, 1e-6)
    hue = (np.arctan2(-rel[..., 0], rel[..., 1]) / (2 * np.pi)) % 1.0  # dy grows downwards on screen
    sat = np.clip(np.hypot(rel[..., 0], rel[..., 1]), 0, 1)
    rgb = hsv_to_rgb(np.stack([hue, np.nan_to_num(sat), np.ones_like(hue)], axis=-1))
    rgb[np.isnan(rel).any(axis=-1)] = 0.85
    return rgb


def colour_wheel(size: int = 49) -> np.ndarray:
    """The legend of ``offset_colours``: offsets over a disc, white outside it."""
    r = np.linspace(-1, 1, size)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    wheel = offset_colours(np.stack([dy, dx], axis=-1) * 0.5 + 0.5, 2)
    wheel[np.hypot(dy, dx) > 1] = 1.0
    return wheel


def draw_histogram(sheet: Sheet, x: int, y: int, histogram: Tensor, cell: int) -> int:
    """The k x k histogram as shares of its total, each written in its cell; returns its width."""
    k = histogram.shape[0]
    total = histogram.sum().item()
    shares = (histogram / total).numpy() if total > 0 else np.zeros((k, k))
    colours = colormap(HISTOGRAM_CMAP, shares / max(shares.max(), 1e-12))
    sheet.image(x, y, colours, cell)
    for (i, j), share in np.ndenumerate(shares):
        dark = colours[i, j] @ np.array([0.3, 0.59, 0.11]) < 0.5
        sheet.text(
            x + (j + 0.5) * cell,
            y + (i + 0.5) * cell,
            f"{share:.0%}",
            size=9 if cell >= 30 else 7,
            ha="center",
            va="center",
            color="white" if dark else "black",
        )
    return k * cell


def draw_layer_row(sheet: Sheet, x: int, y: int, layer: PoolingLayer, backdrop: Backdrop, label: str) -> int:
    """One row: a label, each image with its live-switch density, the density's scale, the in-window
    histogram over live windows, and for real-valued positions the mean offset map; returns the next y."""
    n, height, _ = backdrop.grey.shape
    side = height * backdrop.scale
    top = layer.density.max().item()
    heat = (layer.density / top).numpy() if top > 0 else np.zeros(layer.density.shape)
    sheet.text(x + LABEL_WIDTH - 8, y + side / 2, label, size=10, ha="right", va="center")
    grey, ink = backdrop.grey.numpy(), None if backdrop.ink is None else backdrop.ink.numpy()
    for column in range(n):
        cell = overlay(grey[column], heat[column], DENSITY_CMAP, backdrop.scale, None if ink is None else ink[column])
        sheet.image(x + LABEL_WIDTH + column * (side + CELL_GAP), y, cell, name=f"layer{layer.index}/density/{column}")
    cursor = x + LABEL_WIDTH + n * (side + CELL_GAP) + 2
    unit = "pixel" if layer.block == 1 else f"{layer.block}x{layer.block}\nblock"
    cursor += sheet.colorbar(cursor, y, side, DENSITY_CMAP, "0", f"{top:.3g}", f"live\nswitches\nper {unit}") + 8

    heading = 28
    cell = max(12, (side - heading) // layer.k)
    sheet.text(cursor, y, f"in-window position\n(live; flat {1 / layer.k**2:.0%})", size=8, color="dimgray")
    cursor += max(draw_histogram(sheet, cursor, y + heading, layer.histogram, cell), 100) + 12

    if layer.pooling.name != "hard" and layer.k > 1:  # real-valued offsets are worth a look of their own
        offsets = mean_switch_offset(layer.pooling, layer.where, layer.k, layer.live).numpy()
        fit = max(1, (side - heading) // offsets.shape[0])
        sheet.text(cursor, y, "mean offset (live)\nhue: direction", size=8, color="dimgray")
        w, _ = sheet.image(cursor, y + heading, offset_colours(offsets, layer.k), fit)
        sheet.image(cursor + w + 6, y + heading, colour_wheel(min(49, side - heading)))
    return y + side + CELL_GAP


def draw_channel_panel(
    sheet: Sheet, x: int, y: int, layer: PoolingLayer, backdrop: Backdrop, num_images: int = 3, num_channels: int = 8
) -> int:
    """For the first few images, the live switches of their most active channels (by summed live
    what), each over the image, coloured by the pooled value / that channel's max; returns the next y."""
    n, height, width = backdrop.grey.shape
    side = height * backdrop.scale
    evidence = layer.what * layer.live  # (B, C, h, w): what each live switch carries
    sheet.text(
        x,
        y,
        "most active channels, by summed live what: each channel's live switches, "
        "coloured by the pooled value / the channel's max",
        size=10,
        weight="bold",
    )
    y += 22
    for row in range(min(num_images, n)):
        strength = evidence[row].sum(dim=(1, 2))
        channels = strength.argsort(descending=True)[: min(num_channels, len(strength))]
        maps = layer.pooling.unpool(evidence[row : row + 1, channels], layer.where[row : row + 1, channels], layer.k)
        maps = F.interpolate(maps, size=(height, width), mode="nearest-exact")[0]
        maps = (maps / maps.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)).numpy()
        sheet.text(x + LABEL_WIDTH - 8, y + 12 + side / 2, f"image {row + 1}", size=10, ha="right", va="center")
        for column, channel in enumerate(channels.tolist()):
            left = x + LABEL_WIDTH + column * (side + CELL_GAP)
            sheet.text(left, y, f"channel {channel}", size=8, color="dimgray")
            sheet.image(
                left,
                y + 12,
                overlay(backdrop.grey[row].numpy(), maps[column], CHANNEL_CMAP, backdrop.scale),
                name=f"layer{layer.index}/channels/{row}/{column}",
            )
        y += 12 + side + CELL_GAP
    return y


def density_label(layer: PoolingLayer, backdrop: Backdrop, heading: str) -> str:
    lines = [heading, f"{layer.live_share:.0%} windows live"]
    ink = ink_shares(layer, backdrop)
    if ink is not None:
        lines.append(f"{ink['near']:.0%} near strokes\n({ink['near_area']:.0%} of the area)")
    return "\n".join(lines)


def switch_sheet(layer: PoolingLayer, backdrop: Backdrop, epoch: int) -> Sheet:
    """The whole picture of one pooling layer. Its first two lines are the same every epoch (drawn once);
    the numbers are on the third."""
    sheet = Sheet()
    m = sheet.margin
    sheet.text(m, m, f"Switches of {layer.describe()}", size=12, weight="bold")
    rule = "max > 0 and reached once" if ties_matter(layer.pooling) else "max > 0"
    sheet.text(
        m,
        m + 22,
        f"Only live windows count ({rule}): a dead window's switch, on an all-zero or constant "
        f"patch, is a tie-break, not evidence.",
        size=10,
    )
    everything = switch_histogram(layer.pooling, layer.where, layer.k)
    numbers = (
        f"epoch {epoch}: {layer.live_share:.1%} of {layer.live.numel():,} windows live; over all windows the "
        f"top in-window position would hold {(everything.max() / everything.sum()).item():.0%}"
    )
    ink = ink_shares(layer, backdrop)
    if ink is not None:
        numbers += (
            f"; live switches near strokes (within {ink['reach']} px, cyan outline) {ink['near']:.0%}, "
            f"on {ink['near_area']:.0%} of the area"
        )
    sheet.text(m, m + 40, numbers, size=10)
    y = draw_layer_row(sheet, m, m + 66, layer, backdrop, density_label(layer, backdrop, "live-switch\ndensity"))
    draw_channel_panel(sheet, m, y + 12, layer, backdrop)
    return sheet


class SwitchMapLogger(PictureCallback):
    """``switches_layer{L}``, one per pooling layer (1 = the one nearest the input), over live windows only:
    each image with its live-switch density, the k x k histogram of positions inside the
    window (numbers in the cells), for soft pooling the mean (dy, dx) offset map, and the
    most active channels' switches for the first images. The share of live windows is in
    the picture and logged as ``images/live_share_layer{L}``.
    """

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor) -> None:
        backdrop = Backdrop.of(trainer.datamodule.to_display(images.detach().float().cpu()))
        for layer in pooling_layers(pl_module.net, images):
            # Only rank zero gets here, which Lightning allows with rank_zero_only=True.
            pl_module.log(f"images/live_share_layer{layer.index}", layer.live_share, rank_zero_only=True)
            caption = f"{layer.describe()}, epoch {trainer.current_epoch}; {layer.live_text()}"
            self.publish(
                trainer,
                switch_sheet(layer, backdrop, trainer.current_epoch).render(),
                f"switches_layer{layer.index}",
                caption,
            )
