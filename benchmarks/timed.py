"""The benchmark's rows: the plain PyTorch loop, the Lightning path, the data path and the NaN guard, each timed."""

from __future__ import annotations

import contextlib
import os
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor
from pytorch_lightning.profilers import SimpleProfiler

from benchmarks.bench import Bench, device_batches, images_per_step, new_network, objective
from benchmarks.measuring import OpProfile, PeakMemory, StepClock, top_hooks
from benchmarks.table import Row
from orchestration import progress, training
from orchestration import trainer as trainer_module
from orchestration.run_files import RunCSVLogger
from swwae_lightning.module import EMATeacher, adam
from swwae_lightning.nan_guard import NonFiniteGuard
from swwae_lightning.objectives import is_baseline


def train_plain(bench: Bench, cfg: dict, warmup: int, steps: int, name: str, profile: bool = False) -> Row:
    """The reference: zero_grad, the objective's forward and loss, backward, Adam step; nothing else."""
    net = new_network(cfg, bench.device).train()
    loss_of = objective(cfg)
    # As in the module: the teacher is copied from the eager network, before the hardware settings
    teacher = EMATeacher(net, cfg["ema_decay"]) if loss_of.needs_teacher else None
    training.prepare_network(net, cfg)
    batches = bench.view_batches if loss_of.views else bench.batches
    optimizer = adam(net.parameters(), cfg["lr"], cfg["weight_decay"])
    torch.manual_seed(cfg["seed"])  # dropout draws the same masks as in train_lightning
    losses, clock = [], StepClock(warmup, steps, bench.synchronize)
    with PeakMemory(bench.device) as memory, OpProfile(profile, bench.device, warmup, steps) as ops:
        while clock.running:
            batch = batches[clock.ended % len(batches)]
            optimizer.zero_grad()
            if teacher is not None:
                teacher.update_parameters(net)
            with bench.autocast():
                loss = loss_of(net, batch, teacher).total
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            clock.step_ended()
            ops.step()
    return training_row(name, cfg, clock, memory, ops, losses, profile=ops.top())


def training_row(name: str, cfg: dict, clock: StepClock, memory, ops: OpProfile, losses: list, **extra) -> Row:
    """A training row from what its measurement kept: the clock, the peak memory, the operator calls."""
    return Row(
        name,
        cfg["pooling"],
        images_per_step(cfg),
        clock.seconds_per_step,
        memory.peak_mib,
        losses=[float(v) for v in losses],
        ops_per_step=ops.calls_per_step(),
        warmup_seconds=[clock.warmup_seconds],
        **extra,
    )


class StepWindow(Callback):
    """Times Lightning's training steps end to end: fetch, transfer, step, logging, every hook.

    It also keeps each step's loss (as tensors: no sync per step) and reseeds at the
    start of training, so dropout draws the same masks as the plain loop.
    """

    def __init__(self, clock: StepClock, seed: int, ops: OpProfile):
        self.clock, self.seed, self.ops = clock, seed, ops
        self.losses: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        torch.manual_seed(self.seed)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append((outputs["loss"] if isinstance(outputs, dict) else outputs).detach())
        self.clock.step_ended()
        self.ops.step()


def bench_trainer(bench: Bench, cfg: dict, max_steps: int, name: str, **options) -> pl.Trainer:
    """A one-device Trainer for ``max_steps`` steps of a row: no checkpoints, summary or sanity check."""
    return pl.Trainer(
        accelerator="gpu" if bench.device.type == "cuda" else "cpu",
        devices=1,
        precision=cfg["precision"],
        max_steps=max_steps,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(bench.run_dir / name),
        **options,
    )


class BareModule(pl.LightningModule):
    """The plain loop's step in a LightningModule with nothing else: no data module, schedule, NaN guard,
    logging or callbacks but the clock. What it adds to the plain row is Lightning's own loop."""

    def __init__(self, net: torch.nn.Module, cfg: dict, batches: list[dict]):
        super().__init__()
        self.net, self.loss_of, self.cfg, self.batches = net, objective(cfg), cfg, batches

    def train_dataloader(self):
        return iter(self.batches)  # an iterator: Lightning would take a list for a collection of loaders

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.loss_of(self.net, batch).total

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.net.parameters(), self.cfg["lr"], self.cfg["weight_decay"])


def train_bare_lightning(bench: Bench, cfg: dict, warmup: int, steps: int, name: str, profile: bool = False) -> Row:
    """The plain row's network, loss and prepared batches, trained by a bare Lightning Trainer."""
    net = training.prepare_network(new_network(cfg, bench.device).train(), cfg)
    batches = [bench.batches[i % len(bench.batches)] for i in range(warmup + steps)]  # one epoch, no restart
    clock, ops = StepClock(warmup, steps, bench.synchronize), OpProfile(profile, bench.device, warmup, steps)
    window = StepWindow(clock, cfg["seed"], ops)
    trainer = bench_trainer(
        bench,
        cfg,
        warmup + steps,
        name,
        logger=False,
        callbacks=[window],
        enable_progress_bar=False,
        limit_val_batches=0,
    )
    with PeakMemory(bench.device) as memory, ops:
        trainer.fit(BareModule(net, cfg, batches))
    return training_row(name, cfg, clock, memory, ops, window.losses, note="the plain step in a bare LightningModule")


class EpochEndClock:
    """Times what Lightning runs between two marker callbacks at the end of a validation epoch.

    ``opening`` goes right before the image callbacks and ``closing`` right after:
    Lightning calls callbacks in list order, so each sample is exactly their hook.
    """

    def __init__(self, synchronize):
        self.seconds: list[float] = []
        clock = self

        class Marker(Callback):
            def __init__(self, opens: bool):
                self.opens = opens

            @property
            def state_key(self) -> str:
                return f"EpochEndClock[{'opening' if self.opens else 'closing'}]"

            def on_validation_epoch_end(self, trainer, pl_module) -> None:
                synchronize()
                if self.opens:
                    clock._start = time.perf_counter()
                else:
                    clock.seconds.append(time.perf_counter() - clock._start)

        self.opening, self.closing = Marker(True), Marker(False)


def train_lightning(
    bench: Bench,
    cfg: dict,
    warmup: int,
    steps: int,
    name: str,
    image_callbacks: bool = False,
    val_batches: int = 1,
    profile: bool = False,
    from_folder: bool = False,
) -> Row:
    """The default job's path: SWWAEModule, the real datamodule, CSV logging, LR monitor, progress bar.

    With ``image_callbacks`` it validates (``val_batches`` batches) once, right after the
    timed steps, and times the pictures drawn at the end of that validation.
    """
    pl.seed_everything(cfg["seed"], verbose=False)
    module = training.build_module(cfg)
    clock = StepClock(warmup, steps, bench.synchronize)
    ops = OpProfile(profile, bench.device, warmup, steps)
    window = StepWindow(clock, cfg["seed"], ops)
    callbacks = [
        progress.TerminalProgressBar(refresh_rate=cfg["progress_every"]),
        LearningRateMonitor(logging_interval="step"),
        window,
    ]
    validation = {"limit_val_batches": 0}
    pictures = EpochEndClock(bench.synchronize)
    if image_callbacks:
        callbacks += [pictures.opening, *trainer_module.image_callbacks(cfg, bench.run_dir / name), pictures.closing]
        validation = {
            "limit_val_batches": val_batches,
            "val_check_interval": warmup + steps,
            "check_val_every_n_epoch": None,
        }
    hooks = SimpleProfiler(dirpath=bench.run_dir / name, filename="profile") if profile else None
    trainer = bench_trainer(
        bench,
        cfg,
        warmup + steps,
        name,
        logger=RunCSVLogger(bench.run_dir / name),
        callbacks=callbacks,
        log_every_n_steps=cfg["log_every"],
        use_distributed_sampler=False,
        profiler=hooks,
        **validation,
    )
    # The progress bar is drawn (it is part of the default job's cost) but into /dev/null: the
    # benchmark prints its tables, not a bar per row.
    with (
        PeakMemory(bench.device) as memory,
        ops,
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        trainer.fit(module, datamodule=bench.folder_datamodule if from_folder else bench.datamodule)
    note = (
        "trains on the labeled batch only; the data path still prepares the unlabeled one" if is_baseline(cfg) else ""
    )
    return training_row(
        name,
        cfg,
        clock,
        memory,
        ops,
        window.losses,
        note=note,
        callback_seconds=pictures.seconds,
        profile=top_hooks(hooks, steps) if hooks else "",
    )


def time_loader(
    bench: Bench,
    warmup: int,
    steps: int,
    name: str,
    profile: bool = False,
    views: bool = False,
    from_folder: bool = False,
) -> Row:
    """The data path alone: streams, CombinedLoader, transfer, normalization and augmentation (and the views)."""
    datamodule = bench.views_datamodule if views else bench.folder_datamodule if from_folder else bench.datamodule
    batches, clock = device_batches(datamodule, bench.device), StepClock(warmup, steps, bench.synchronize)
    with PeakMemory(bench.device) as memory, OpProfile(profile, bench.device, warmup, steps) as ops:
        while clock.running:
            next(batches)
            clock.step_ended()
            ops.step()
    size = bench.cfg["batch_size"] + bench.cfg["unlabeled_batch_size"]
    note = "no model: batches/s = steps/s" + ("; draws the strong and the second view" if views else "")
    return Row(name, "-", size, clock.seconds_per_step, memory.peak_mib, note, profile=ops.top())


def time_nan_guard(bench: Bench, calls: int) -> float:
    """Seconds the NaN guard adds to a step that is not logged: its ``record`` of that step's loss parts.

    The parts are a real step's (one forward of the default job), on the bench's device; the
    device is synchronized only around all the calls, as the guard never syncs on such a step.
    """
    net = new_network(bench.cfg, bench.device).train()
    with torch.no_grad():
        parts = objective(bench.cfg)(net, bench.batches[0]).parts()
    guard = NonFiniteGuard()
    guard.record(parts, 0, 0, 0)  # the first call sets up its buffers on the device
    bench.synchronize()
    start = time.perf_counter()
    for step in range(1, calls + 1):
        guard.record(parts, step, 0, step)
    bench.synchronize()
    return (time.perf_counter() - start) / calls
