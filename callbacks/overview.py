"""The whole state of the model in one picture: reconstructions and every pooling layer's live switches."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor

from .image_logging import PictureCallback
from .reconstructions import Reconstructions, draw_reconstruction_rows, reconstruct
from .sheet import Sheet
from .switch_maps import Backdrop, density_label, draw_layer_row
from .switch_stats import PoolingLayer, pooling_layers


def overview_sheet(rec: Reconstructions, layers: list[PoolingLayer], epoch: int) -> Sheet:
    """The reconstruction rows, then one row per pooling layer, over the same images."""
    backdrop = Backdrop.of(torch.from_numpy(rec.inputs).permute(0, 3, 1, 2))
    sheet = Sheet()
    m = sheet.margin
    sheet.text(
        m,
        m,
        f"Reconstructions and live switches of the same {len(rec.inputs)} validation images",
        size=12,
        weight="bold",
    )
    sheet.text(m, m + 22, rec.headline(epoch), size=10)
    sheet.text(
        m,
        m + 40,
        "live window: max > 0 and reached once; a dead window's switch is a tie-break, not evidence",
        size=10,
        color="dimgray",
    )
    y = draw_reconstruction_rows(sheet, m, m + 66, rec, backdrop.scale)
    for layer in layers:
        heading = f"layer {layer.index} switches\n({layer.k}x{layer.k}, {layer.what.shape[1]} channels)"
        y = draw_layer_row(sheet, m, y + 6, layer, backdrop, density_label(layer, backdrop, heading))
    return sheet


class OverviewLogger(PictureCallback):
    """``overview``: the reconstruction rows of ``ReconstructionLogger``, then one row per pooling
    layer as in ``SwitchMapLogger`` (live-switch density over each image, its scale, the
    in-window histogram over live windows, for soft pooling the mean offset map): the whole
    state of the model in one W&B media panel. Logs no metric; the other two log the numbers.
    """

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor) -> None:
        rec = reconstruct(pl_module.net, images, trainer.datamodule.to_display)
        layers = pooling_layers(pl_module.net, images)
        shares = ", ".join(f"layer {layer.index} {layer.live_share:.0%}" for layer in layers)
        self.publish(
            trainer,
            overview_sheet(rec, layers, trainer.current_epoch).render(),
            "overview",
            f"{rec.headline(trainer.current_epoch)}; live windows: {shares}",
        )
