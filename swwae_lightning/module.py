"""The LightningModule: a thin wrapper that trains a StackedWhatWhere network with an Objective.

Hyper-parameters are plain Python types only, so a checkpoint loads with
``torch.load(weights_only=True)`` (no pickled code runs when it is opened).
"""

from __future__ import annotations

import itertools

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from . import settings as S
from .nan_guard import NonFiniteGuard, NonFiniteLossError  # noqa: F401  (the CLI catches the error from here)
from .network import StackedWhatWhere, network_from_settings
from .objectives import LossParts, Objective
from .schedules import SCHEDULES

OPTIMIZER_SETTINGS = ("lr", "weight_decay", "schedule", "freeze_encoder")


def network_settings(net: StackedWhatWhere) -> dict:
    """The flat settings that rebuild ``net`` with ``network_from_settings``: its shape and its what-where choices
    (the options of poolings it does not use at their defaults)."""
    channels, height, width = net.input_shape
    return {
        "arch": net.arch,
        "in_channels": channels,
        "image_size": height if height == width else [height, width],
        "num_classes": net.num_classes,
        **{name: S.SETTINGS[name].default for name in S.names_in(["what-where"])},
        "pooling": net.pooling.name,
        **net.pooling.options,
        "unpool": net.unpool,
        "decoder_top": net.decoder_top,
    }


def module_settings() -> list[str]:
    """Every setting SWWAEModule takes: the network's, the objective's and the optimizer's."""
    return S.names_in(["what-where", "objectives"]) + list(OPTIMIZER_SETTINGS)


FUSED_ADAM_DEVICES = ("cpu", "cuda")


def adam(params, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam as one fused kernel per step on the devices PyTorch has one for. The per-parameter loop
    dispatches a dozen operators for every weight tensor each step, which is most of a small
    model's step on a GPU; the fused update is the same arithmetic, equal to float tolerance."""
    params = list(params)
    fused = all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


class EMATeacher(AveragedModel):
    """PyTorch's exponential moving average of a network's weights and buffers, frozen for the optimizer,
    updated without reading the device: ``AveragedModel`` asks ``n_averaged == 0`` on the host every
    update (a sync per step on a GPU); here it is known, or asked once after a checkpoint is loaded."""

    def __init__(self, net: torch.nn.Module, decay: float):
        super().__init__(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.requires_grad_(False)
        self._started: bool | None = False  # has it averaged anything? None: loaded, not asked yet

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._started = None  # its n_averaged came from a checkpoint

    def update_parameters(self, model: torch.nn.Module) -> None:
        ours = [t.detach() for t in itertools.chain(self.module.parameters(), self.module.buffers())]
        theirs = [t.detach() for t in itertools.chain(model.parameters(), model.buffers())]
        if self._started is None:
            self._started = bool(self.n_averaged > 0)  # a resumed teacher has averaged already
        if not self._started:
            for mine, model_tensor in zip(ours, theirs):
                mine.copy_(model_tensor)
            self._started = True
        else:
            groups: dict[tuple, tuple[list, list]] = {}
            for mine, model_tensor in zip(ours, theirs):
                group = groups.setdefault((mine.device, mine.dtype), ([], []))
                group[0].append(mine)
                group[1].append(model_tensor)
            for mine, model_tensors in groups.values():
                self.multi_avg_fn(mine, model_tensors, self.n_averaged)
        self.n_averaged += 1


class SWWAEModule(pl.LightningModule):
    """A network trained with an objective by Adam on a per-step schedule:
    ``SWWAEModule(StackedWhatWhere(...), Objective({...}), lr=1e-3)``. ``from_settings`` builds one
    from flat settings (flags, a config file, a checkpoint's hyper-parameters); the hyper-parameters
    it saves are those flat settings, so every checkpoint rebuilds it the same way."""

    def __init__(
        self,
        net: StackedWhatWhere,
        objective: Objective | None = None,
        *,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        schedule: str = "onecycle",
        freeze_encoder: bool = False,
    ):
        super().__init__()
        objective = objective if objective is not None else Objective.from_settings()
        optimizer = {"lr": lr, "weight_decay": weight_decay, "schedule": schedule, "freeze_encoder": freeze_encoder}
        values = {**network_settings(net), **objective.settings(), **S.check_all(optimizer, style="python")}
        if objective.needs_open_set and net.open_set is None:
            raise ValueError("the objective trains one-vs-all heads: build the network with open_set_heads=True")
        self.save_hyperparameters(values)
        self.objective = objective
        self.net = net
        if values["freeze_encoder"]:
            for p in self.net.encoder_parameters():
                p.requires_grad_(False)
        self.teacher = None
        if self.objective.needs_teacher:  # a submodule, so every checkpoint holds it
            self.teacher = EMATeacher(self.net, values["ema_decay"])
        elif values["eval_teacher"]:
            raise ValueError(
                "--eval-teacher evaluates the EMA teacher, which only a term that needs it keeps "
                "(--lambda-consistency > 0)"
            )
        self.val_accuracy = MulticlassAccuracy(net.num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(net.num_classes, average="micro")
        self.val_term_metrics = torch.nn.ModuleDict(
            {
                f"{term}_{metric}": MeanMetric()
                for term in self.objective.computed
                for metric in self.objective.terms[term].validation_metrics
            }
        )
        self.nan_guard = NonFiniteGuard()
        self._rng_states_to_restore: dict | None = None

    @classmethod
    def from_settings(cls, arch: str, in_channels: int, image_size: int, num_classes: int, **settings) -> "SWWAEModule":
        """Any what-where, objective or optimizer setting by name (``python train.py --help`` lists them); the
        others take their declared defaults. A misspelt name is an error that names it."""
        values = S.complete(settings, module_settings(), "SWWAEModule")
        objective = Objective.from_settings(**{k: values[k] for k in S.names_in(["objectives"])})
        net = network_from_settings(
            arch, in_channels, image_size, num_classes, values, open_set_heads=objective.needs_open_set
        )
        return cls(net, objective, **{k: values[k] for k in OPTIMIZER_SETTINGS})

    def train(self, mode: bool = True):
        """A frozen encoder (linear probe) also keeps its batch-norm statistics frozen."""
        super().train(mode)
        if self.hparams.freeze_encoder:
            for stage in self.net.stages:
                stage.encoder.eval()
        return self

    @property
    def encoder_only(self) -> bool:
        """No term needs the decoder (the plain convnet baseline, or FixMatch alone): it never runs."""
        return not self.objective.uses_decoder

    def forward(self, x: Tensor) -> Tensor:
        return self.evaluated_net.encode(x)

    def compute_loss(self, batch: dict) -> LossParts:
        return self.objective(self.net, batch, self.teacher, progress=self._progress())

    def _progress(self) -> float:
        """The share of this run's optimizer steps already taken (1 outside a fit: full weights)."""
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return 1.0
        return min(1.0, trainer.global_step / max(1, int(trainer.estimated_stepping_batches)))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if self.teacher is not None:
            # The teacher takes in the weights the last optimizer step made, here rather than after that
            # step: a checkpoint written between two steps then holds a teacher in step with the student.
            self.teacher.update_parameters(self.net)
        loss = self.compute_loss(batch)
        self.nan_guard.record(loss.parts(), self.global_step, self.current_epoch, batch_idx)
        if self._writes_logs_this_step(batch_idx):  # the host reads the device here anyway
            self.nan_guard.check()
            size = sum(len(v[0]) if isinstance(v, (tuple, list)) else len(v) for k, v in batch.items() if k != "views")
            parts = {f"train/{k}": v.detach() for k, v in {**loss.parts(), **loss.metrics}.items()}
            self.log_dict(parts, batch_size=size)  # train/loss among them: the progress bar reads it from the log
            datamodule = getattr(self.trainer, "datamodule", None)
            if hasattr(datamodule, "stream_progress"):
                self.log_dict(
                    {f"data/{k}": v for k, v in datamodule.stream_progress(batch_idx).items()}, batch_size=size
                )
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
        return (
            bool(trainer.fast_dev_run)
            or batch_idx + 1 >= trainer.num_training_batches
            or (every > 0 and (trainer.global_step + 1) % every == 0)
        )

    @property
    def evaluated_net(self) -> StackedWhatWhere:
        """The network validation and test measure: the EMA teacher's with ``eval_teacher``, else the student."""
        if self.teacher is not None and self.hparams.eval_teacher:
            return self.teacher.module
        return self.net

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> None:
        x, y = batch
        net = self.evaluated_net
        if self.encoder_only:
            logits = net.encode(x)
        else:
            out = net(x)
            logits = out.logits
            self.log(
                f"{stage}/rec",
                torch.nn.functional.mse_loss(out.reconstruction.float(), x),
                sync_dist=True,
                batch_size=len(x),
            )
        accuracy.update(logits, y)
        if stage == "val":
            for term in self.objective.computed:
                for metric, (value, weight) in self.objective.terms[term].validation_counts(logits, y).items():
                    self.val_term_metrics[f"{term}_{metric}"].update(value, weight)

    def _log_accuracy(self, stage: str, accuracy: MulticlassAccuracy) -> None:
        acc = accuracy.compute()  # reduced over all ranks by torchmetrics
        self.log_dict({f"{stage}/acc": acc, f"{stage}/error": 1 - acc}, prog_bar=stage == "val")
        accuracy.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_accuracy)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val", self.val_accuracy)
        for name, metric in self.val_term_metrics.items():  # reduced over all ranks by torchmetrics
            self.log(f"val/{name}", metric.compute())
            metric.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_accuracy)

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test", self.test_accuracy)

    # Lightning restores weights, optimizer, schedule and loops but not the RNG that dropout
    # draws from; without it a resumed run diverges from the uninterrupted one.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.nan_guard.check()  # before anything is written: non-finite weights never reach a file
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
        optimizer = adam(params, self.hparams.lr, self.hparams.weight_decay)
        if self.hparams.schedule == "constant":
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


S.declare(
    S.Setting(
        "lr",
        S.default_of(SWWAEModule, "lr"),
        "Adam (peak) learning rate",
        "optimization",
        type=float,
        check=S.greater_than(0),
    ),
    S.Setting(
        "weight_decay",
        S.default_of(SWWAEModule, "weight_decay"),
        "Adam weight decay",
        "optimization",
        type=float,
        check=S.at_least(0),
    ),
    S.Setting(
        "schedule",
        S.default_of(SWWAEModule, "schedule"),
        "learning-rate schedule, stepped every batch",
        "optimization",
        type=str,
        choices=lambda: tuple(SCHEDULES),
    ),
    S.Setting(
        "freeze_encoder",
        S.default_of(SWWAEModule, "freeze_encoder"),
        "train only the classifier head (and decoder): a linear probe",
        "optimization",
        flag="switch",
    ),
)
