"""What a run prints while it trains: a bar on a terminal, one line per epoch in a log file."""

from __future__ import annotations

import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm


class TerminalProgressBar(TQDMProgressBar):
    """Lightning's bar, with the training loss read from the logged metrics, closed when training fails.

    Lightning turns every ``prog_bar`` value of the training step into a Python number after every
    batch, a read of the device that makes a GPU's host wait each step. The loss is logged without
    ``prog_bar``, and the bar reads it where it is drawn (every ``progress_every`` steps).
    """

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        loss = trainer.logged_metrics.get("train/loss")
        if loss is not None:
            metrics["train/loss"] = f"{float(loss):.3g}"
        return metrics

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # A bar left open is drawn once more when the process exits, below the error line and its resume hint.
        for bar in vars(self).values():
            if isinstance(bar, Tqdm):
                bar.close()


class EpochLines(ProgressBar):
    """One line per epoch where stdout is not a terminal (SLURM, nohup, CI): a bar's hundreds of
    carriage-return redraws would fill a log file with one unreadable line per epoch."""

    def __init__(self):
        super().__init__()
        self._enabled, self._epoch_started = True, 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", f"step {trainer.global_step}"]
        parts += [f"{k} {float(v):.4g}" for k, v in sorted(metrics.items()) if k.startswith("train/")]
        parts += [f"{k} {100 * float(metrics[k]):.2f}%" for k in ("val/error",) if k in metrics]
        parts += [f"{k} {float(metrics[k]):.4g}" for k in ("val/rec",) if k in metrics]
        parts.append(f"{time.perf_counter() - self._epoch_started:.1f} s")
        print("  ".join(parts), flush=True)


def progress_callback(cfg: dict) -> ProgressBar:
    """A bar on a terminal, a line per epoch in a log file."""
    if sys.stdout.isatty():
        return TerminalProgressBar(refresh_rate=cfg["progress_every"])
    return EpochLines()
