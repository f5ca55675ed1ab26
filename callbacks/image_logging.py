"""What the picture callbacks share: when to draw, how to draw without disturbing training,
how a matplotlib figure becomes a picture, and where a finished picture goes (a PNG always,
plus W&B or TensorBoard when active)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor, nn


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for a picture, then every submodule back in its own previous mode.

    Modes are restored one submodule at a time, so a deliberately frozen part (a linear
    probe's encoder in eval mode inside a training module) stays as it was.
    """
    previous_modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for submodule, was_training in previous_modes:
            submodule.training = was_training


def figure_to_tensor(fig: Figure, alpha: bool = False) -> Tensor:
    """Draw ``fig`` with Agg (no display needed) and return its pixels, float (3, H, W) in [0, 1]
    ((4, H, W) with ``alpha``, for a figure drawn over something else).

    Floats k / 255 survive ``log_picture``'s conversion back to uint8 exactly, so the PNG
    holds the pixels Agg drew, and TensorBoard takes the same tensor.
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., : 4 if alpha else 3]
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255)


def log_picture(trainer: pl.Trainer, grid: Tensor, path: Path, key: str, caption: str) -> None:
    """Write ``grid`` (3, H, W in [0, 1]) to ``path`` and send it to every logger that shows images.

    W&B gets the PNG file itself, so it shows exactly the pixels on disk; the CSV logger
    has nowhere to put a picture, so the PNG is all it gets.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = grid.detach().mul(255).add_(0.5).clamp_(0, 255).to("cpu", torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path, compress_level=1)  # as save_image, but a third faster and 10 % larger
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], caption=[caption], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=trainer.global_step)


class PictureCallback(Callback):
    """Draws pictures of the same few validation images at the end of some validation epochs.

    Subclasses only implement ``draw``; this class keeps it off the training step, off
    the sanity check and off every rank but zero, and runs it in eval mode under no_grad.
    """

    def __init__(self, every_n_epochs: int, num_images: int, out_dir: Path | str):
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be >= 1")
        if num_images < 1:
            raise ValueError(f"num_images={num_images} must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.out_dir = Path(out_dir)
        self._preview: Tensor | None = None  # chosen once, so successive epochs are comparable

    def due(self, trainer: pl.Trainer) -> bool:
        # (epoch + 1) counts as Lightning's check_val_every_n_epoch does: with both set to n,
        # the pictures fall on epochs that validate (epoch % n would never meet them).
        return (
            trainer.is_global_zero
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def preview_images(self, trainer: pl.Trainer) -> Tensor:
        if self._preview is None:
            datamodule = trainer.datamodule
            if not (hasattr(datamodule, "preview_images") and hasattr(datamodule, "to_display")):
                raise TypeError(
                    f"{type(self).__name__} needs a datamodule with preview_images() and to_display(), "
                    f"got {type(datamodule).__name__}"
                )
            self._preview = datamodule.preview_images(self.num_images).detach().cpu()
        return self._preview

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.due(trainer):
            return
        images = self.preview_images(trainer).to(device=pl_module.device, dtype=pl_module.dtype)
        with evaluating(pl_module):
            self.draw(trainer, pl_module, images)

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor) -> None:
        raise NotImplementedError

    def publish(self, trainer: pl.Trainer, grid: Tensor, name: str, caption: str) -> None:
        """``out_dir/{name}_epoch{E:03d}.png``, and ``images/{name}`` in W&B or TensorBoard."""
        path = self.out_dir / f"{name}_epoch{trainer.current_epoch:03d}.png"
        log_picture(trainer, grid, path, key=f"images/{name}", caption=caption)
