"""Reconstructions with and without the where: the paper's main qualitative point, every few epochs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid

from swwae_lightning.network import StackedWhatWhere

from .image_logging import PictureCallback

ROWS = ("input", "with where", "copy (no where)", "|error| with where")


@contextmanager
def unpooling(net: StackedWhatWhere, mode: str) -> Iterator[None]:
    """Run the same weights with another unpooling; the network's own setting comes back even on error."""
    previous = net.unpool
    net.unpool = mode
    try:
        yield
    finally:
        net.unpool = previous


class ReconstructionLogger(PictureCallback):
    """One grid per log, one column per image; rows: input, reconstruction with the where,
    the same network's reconstruction with copy unpooling, and the with-where absolute error.

    The reconstruction MSE of both unpoolings (model space, as ``val/rec``) is logged as
    ``images/rec_mse_where`` and ``images/rec_mse_copy``: the gap is what the where carries.
    """

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor) -> None:
        net = pl_module.net
        with_where = net(images).reconstruction
        with unpooling(net, "copy"):
            copied = net(images).reconstruction
        mse_where = F.mse_loss(with_where.float(), images.float())
        mse_copy = F.mse_loss(copied.float(), images.float())
        # Only rank zero gets here, which Lightning allows with rank_zero_only=True.
        pl_module.log("images/rec_mse_where", mse_where, rank_zero_only=True)
        pl_module.log("images/rec_mse_copy", mse_copy, rank_zero_only=True)

        show = trainer.datamodule.to_display
        shown_input, shown_where, shown_copy = (show(t.detach().float().cpu()) for t in (images, with_where, copied))
        # The error in display space: what the eye compares, on a scale fixed across epochs.
        error = (shown_where - shown_input).abs()
        grid = make_grid(torch.cat([shown_input, shown_where, shown_copy, error]), nrow=len(images))
        caption = (
            f"epoch {trainer.current_epoch}; rows: {' / '.join(ROWS)}; "
            f"MSE with where {mse_where.item():.4f}, copy {mse_copy.item():.4f}"
        )
        self.publish(trainer, grid, "reconstructions", caption)
