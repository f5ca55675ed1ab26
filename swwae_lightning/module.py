"""The LightningModule: a thin wrapper that trains a StackedWhatWhere network.

Hyper-parameters are plain Python types only, so a checkpoint loads with
``torch.load(weights_only=True)`` (no pickled code runs when it is opened).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from .losses import SWWAELoss, swwae_loss
from .network import StackedWhatWhere
from .schedules import SCHEDULES


class NonFiniteLossError(RuntimeError):
    """Raised before the backward pass, so the weights (and the last checkpoint) stay finite."""


class SWWAEModule(pl.LightningModule):
    def __init__(
        self,
        arch: str,
        in_channels: int,
        image_size: int,
        num_classes: int,
        pooling: str = "hard",
        beta: float = 100.0,
        unpooling: str = "where",
        lambda_rec: float = 1.0,
        lambda_mid: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        schedule: str = "onecycle",
        freeze_encoder: bool = False,
    ):
        super().__init__()
        for name, value in (("lambda_rec", lambda_rec), ("lambda_mid", lambda_mid), ("weight_decay", weight_decay)):
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0")
        if not lr > 0:
            raise ValueError(f"lr={lr} must be > 0")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES}")
        self.save_hyperparameters()
        self.net = StackedWhatWhere(arch, in_channels, image_size, num_classes, pooling, beta, unpooling)
        if freeze_encoder:
            for p in self.net.encoder_parameters():
                p.requires_grad_(False)
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self._rng_states_to_restore: dict | None = None

    def train(self, mode: bool = True):
        """A frozen encoder (linear probe) also keeps its batch-norm statistics frozen."""
        super().train(mode)
        if self.hparams.freeze_encoder:
            for stage in self.net.stages:
                stage.encoder.eval()
        return self

    @property
    def encoder_only(self) -> bool:
        """lambda_rec = lambda_mid = 0 is the plain convnet baseline: skip the decoder entirely."""
        return self.hparams.lambda_rec == 0 and self.hparams.lambda_mid == 0

    def forward(self, x: Tensor) -> Tensor:
        return self.net.encode(x)

    def compute_loss(self, batch: dict) -> SWWAELoss:
        """One forward pass over the labeled rows followed by the unlabeled rows."""
        labeled, unlabeled = batch.get("labeled"), batch.get("unlabeled")
        labels = labeled[1] if labeled is not None else None
        if self.encoder_only:
            if labeled is None:
                raise ValueError("lambda_rec = lambda_mid = 0 with no labeled data leaves nothing to train")
            nll = torch.nn.functional.cross_entropy(self.net.encode(labeled[0]).float(), labels)
            zero = nll.new_zeros(()).detach()
            return SWWAELoss(nll, nll, zero, zero)
        parts = [t for t in (labeled[0] if labeled is not None else None, unlabeled) if t is not None]
        x = torch.cat(parts) if len(parts) > 1 else parts[0]
        return swwae_loss(self.net(x), x, labels, self.hparams.lambda_rec, self.hparams.lambda_mid)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.compute_loss(batch)
        if not torch.isfinite(loss.total):
            bad = [name for name, value in loss.parts().items() if name != "loss" and not torch.isfinite(value)]
            raise NonFiniteLossError(
                f"non-finite loss at global step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx}): "
                f"{', '.join(bad) or 'loss'} = {[float(loss.parts()[b]) for b in bad] or float(loss.total)}"
            )
        if self._writes_logs_this_step(batch_idx):
            size = sum(len(v[0]) if isinstance(v, (tuple, list)) else len(v) for v in batch.values())
            parts = {f"train/{k}": v.detach() for k, v in loss.parts().items()}
            self.log("train/loss", parts.pop("train/loss"), prog_bar=True, batch_size=size)
            self.log_dict(parts, batch_size=size)
            datamodule = getattr(self.trainer, "datamodule", None)
            if hasattr(datamodule, "stream_progress"):
                self.log_dict({f"data/{k}": v for k, v in datamodule.stream_progress(batch_idx).items()}, batch_size=size)
        return loss.total

    def _writes_logs_this_step(self, batch_idx: int) -> bool:
        """Whether Lightning writes this step's training metrics: every ``log_every_n_steps``, and
        at the end of the epoch (the last batch's values), so a short epoch still records them.

        Training metrics are logged per step only, so on the other steps ``self.log`` is work
        thrown away: the six calls cost about half of Lightning's fixed per-step overhead, which
        is what bounds a small model's speed on a GPU.
        """
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return (bool(trainer.fast_dev_run) or batch_idx + 1 >= trainer.num_training_batches
                or (every > 0 and (trainer.global_step + 1) % every == 0))

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> None:
        x, y = batch
        if self.encoder_only:
            logits = self.net.encode(x)
        else:
            out = self.net(x)
            logits = out.logits
            self.log(f"{stage}/rec", torch.nn.functional.mse_loss(out.reconstruction.float(), x),
                     sync_dist=True, batch_size=len(x))
        accuracy.update(logits, y)

    def _log_accuracy(self, stage: str, accuracy: MulticlassAccuracy) -> None:
        acc = accuracy.compute()  # reduced over all ranks by torchmetrics
        self.log_dict({f"{stage}/acc": acc, f"{stage}/error": 1 - acc}, prog_bar=stage == "val")
        accuracy.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_accuracy)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val", self.val_accuracy)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_accuracy)

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test", self.test_accuracy)

    # Lightning restores weights, optimizer, schedule and loops but not the RNG that dropout
    # draws from; without it a resumed run diverges from the uninterrupted one.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_states_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        states = self._rng_states_to_restore
        if states:  # after the sanity check, right before the first resumed step
            torch.set_rng_state(states["torch"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
            self._rng_states_to_restore = None

    def _lr_factor(self, step: int) -> float:
        # Step 0 needs no total (LambdaLR evaluates it inside configure_optimizers): see schedules.py.
        total = 1 if step == 0 else int(self.trainer.estimated_stepping_batches)
        return SCHEDULES[self.hparams.schedule](step, total)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.schedule == "constant":
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
