"""Reconstructions with and without the where: the paper's main qualitative point, every few epochs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch.nn.functional as F
from torch import Tensor

from swwae_lightning.network import StackedWhatWhere

from .image_logging import PictureCallback
from .sheet import CELL_GAP, LABEL_WIDTH, Sheet, cell_scale, colormap, display_array

ROWS = ("input", "unpooled with\nthe where", "unpooled by\ncopying (no where)", "|error| with\nthe where")
ERROR_CMAP, ERROR_MAX = "inferno", 0.5  # display units; a fixed scale, so epochs compare


@contextmanager
def unpooling(net: StackedWhatWhere, mode: str) -> Iterator[None]:
    """Run the same weights with another unpooling; the network's own setting comes back even on error."""
    previous = net.unpool
    net.unpool = mode
    try:
        yield
    finally:
        net.unpool = previous


@dataclass
class Reconstructions:
    """One batch reconstructed both ways; pictures in display space, (N, H, W, C) floats in [0, 1]."""

    inputs: np.ndarray
    with_where: np.ndarray
    copied: np.ndarray
    mse_where: Tensor  # model space, as val/rec
    mse_copy: Tensor

    @property
    def error(self) -> np.ndarray:
        """|with the where - input| in display space, averaged over colour channels: (N, H, W)."""
        return np.abs(self.with_where - self.inputs).mean(axis=-1)

    def headline(self, epoch: int) -> str:
        ratio = self.mse_copy.item() / max(self.mse_where.item(), 1e-12)
        return (
            f"epoch {epoch}: reconstruction MSE (model space, as val/rec) with the where {self.mse_where.item():.4f}, "
            f"by copying {self.mse_copy.item():.4f} ({ratio:.1f}x)"
        )


def reconstruct(net: StackedWhatWhere, images: Tensor, to_display: Callable[[Tensor], Tensor]) -> Reconstructions:
    """The same network's reconstruction unpooling with its where and by copying, and both MSEs."""
    with_where = net(images).reconstruction
    with unpooling(net, "copy"):
        copied = net(images).reconstruction
    shown = [display_array(to_display(t.detach().float().cpu())) for t in (images, with_where, copied)]
    return Reconstructions(
        *shown,
        mse_where=F.mse_loss(with_where.float(), images.float()),
        mse_copy=F.mse_loss(copied.float(), images.float()),
    )


def draw_reconstruction_rows(sheet: Sheet, x: int, y: int, rec: Reconstructions, scale: int) -> int:
    """The four labelled rows (input, with the where, copy, |error| with a colour scale) from (x, y).

    Returns the next y."""
    error = colormap(ERROR_CMAP, rec.error / ERROR_MAX)
    rows = [
        (rec.inputs, ROWS[0]),
        (rec.with_where, f"{ROWS[1]}\nMSE {rec.mse_where.item():.4f}"),
        (rec.copied, f"{ROWS[2]}\nMSE {rec.mse_copy.item():.4f}"),
        (error, ROWS[3]),
    ]
    side = rec.inputs.shape[1] * scale
    for row, (pictures, label) in enumerate(rows):
        sheet.text(x + LABEL_WIDTH - 8, y + side / 2, label, size=10, ha="right", va="center")
        for column, picture in enumerate(pictures):
            sheet.image(x + LABEL_WIDTH + column * (side + CELL_GAP), y, picture, scale, name=f"rec/{row}/{column}")
        if row == 3:
            right = x + LABEL_WIDTH + len(pictures) * (side + CELL_GAP) + 2
            sheet.colorbar(right, y, side, ERROR_CMAP, "0", f"≥{ERROR_MAX:g}", "|error|\n(display\nunits)")
        y += side + CELL_GAP
    return y


def reconstruction_sheet(rec: Reconstructions, epoch: int) -> Sheet:
    """The whole picture: a title, both MSEs, and the four rows."""
    sheet = Sheet()
    m = sheet.margin
    # The title is the same every epoch and the numbers' line the same as the overview's: both are drawn once.
    sheet.text(
        m, m, f"Reconstructions of the same {len(rec.inputs)} validation images every epoch", size=12, weight="bold"
    )
    sheet.text(m, m + 22, rec.headline(epoch), size=10)
    draw_reconstruction_rows(sheet, m, m + 48, rec, cell_scale(rec.inputs.shape[1]))
    return sheet


class ReconstructionLogger(PictureCallback):
    """``reconstructions``: one column per image; rows: input, reconstruction with the where,
    the same network's reconstruction with copy unpooling, and the with-where absolute error,
    each image upscaled at least 3x; both MSEs are written in the picture.

    The reconstruction MSE of both unpoolings (model space, as ``val/rec``) is logged as
    ``images/rec_mse_where`` and ``images/rec_mse_copy``: the gap is what the where carries.
    """

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor) -> None:
        rec = reconstruct(pl_module.net, images, trainer.datamodule.to_display)
        # Only rank zero gets here, which Lightning allows with rank_zero_only=True.
        pl_module.log("images/rec_mse_where", rec.mse_where, rank_zero_only=True)
        pl_module.log("images/rec_mse_copy", rec.mse_copy, rank_zero_only=True)
        picture = reconstruction_sheet(rec, trainer.current_epoch).render()
        rows = " / ".join(" ".join(row.split()) for row in ROWS)
        caption = f"{rec.headline(trainer.current_epoch)}; rows: {rows}"
        self.publish(trainer, picture, "reconstructions", caption)
