"""The Lightning Trainer of a run: its devices, loggers and callbacks, and the settings that choose them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor

from swwae_lightning import settings as S
from swwae_lightning.objectives import DECODER, needs_of

from .checkpoints import AtomicCheckpointIO, BestAndLastCheckpoint, InterruptCheckpoint
from .progress import progress_callback
from .run_files import RunCSVLogger, RunRecord
from .tracking import WandbRunId, tensorboard_logger, wandb_logger

LOGGERS = ("wandb", "csv", "tensorboard", "none")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "64-true")

S.declare(
    S.Setting(
        "max_epochs",
        4,
        "passes over the unlabeled pool (the labeled set in supervised mode)",
        "optimization",
        type=int,
        check=S.at_least(1),
    ),
    S.Setting(
        "checkpoint_ties",
        "earlier",
        "which of two epochs with the same validation error is kept as best.ckpt: earlier, or later (for a "
        "validation set of a few dozen images, where the error is often level for many epochs)",
        "optimization",
        type=str,
        choices=lambda: ("earlier", "later"),
    ),
    S.Setting(
        "deterministic",
        False,
        "deterministic algorithms (bit-exact resume on CPU)",
        "optimization",
        flag="switch",
        affects_result=False,
    ),
    S.Setting(
        "gpus",
        0,
        "shorthand: accelerator=gpu, devices=N, DDP when N > 1",
        "hardware",
        type=int,
        check=S.at_least(0),
        affects_result=False,
    ),
    S.Setting(
        "accelerator", "auto", "Lightning accelerator (cpu, gpu, mps, auto)", "hardware", type=str, affects_result=False
    ),
    S.Setting(
        "devices", "auto", "Lightning devices (a count, a list, or auto)", "hardware", type=str, affects_result=False
    ),
    S.Setting(
        "strategy", "auto", "Lightning strategy (ddp, ddp_spawn, auto, ...)", "hardware", type=str, affects_result=False
    ),
    S.Setting("num_nodes", 1, "machines (DDP)", "hardware", type=int, check=S.at_least(1), affects_result=False),
    S.Setting("precision", "32-true", "numeric precision", "hardware", type=str, choices=lambda: PRECISIONS),
    S.Setting(
        "channels_last",
        False,
        "channels-last memory format for every convolution (on this project's CPU: about a tenth "
        "off a step of the plain convnet; nothing for the SWWAE model, whose decoder's image-output "
        "conv already runs channels-last on CPU)",
        "hardware",
        flag="switch",
        affects_result=False,
    ),
    S.Setting(
        "compile",
        False,
        "torch.compile the network's forward and encoder (mode reduce-overhead: CUDA graphs on a GPU, "
        "inductor alone on the CPU); with --full-batches every step has one shape to capture",
        "hardware",
        flag="switch",
        affects_result=False,
    ),
    S.Setting(
        "logger",
        "wandb",
        "experiment tracker besides metrics.csv (W&B goes offline by itself without credentials)",
        "run",
        type=str,
        choices=lambda: LOGGERS,
        affects_result=False,
    ),
    S.Setting(
        "run_dir",
        None,
        "run directory; default: runs/<dataset>-<labels>-<timestamp>",
        "run",
        type=str,
        affects_result=False,
    ),
    S.Setting(
        "resume",
        None,
        "continue training from PATH, or 'last' (the newest run's last.ckpt, or --run-dir's)",
        "run",
        type=str,
        affects_result=False,
    ),
    S.Setting(
        "finetune_from",
        None,
        "start from these weights with a fresh optimizer (any compatible dataset/mode)",
        "run",
        type=str,
    ),
    S.Setting(
        "test",
        False,
        "after training, measure the kept checkpoint on the test split (a final row's run; every read is "
        "appended to the study's test-reads.jsonl); without it the test split stays sealed",
        "run",
        flag="switch",
        affects_result=False,
    ),
    S.Setting(
        "evaluate",
        None,
        "test this checkpoint on the official test split and exit (the read is appended to the ledger)",
        "run",
        type=str,
        affects_result=False,
    ),
    S.Setting(
        "evaluate_split",
        "test",
        "--evaluate: the split to measure, test (the official test split; results.json) or val (the run's own "
        "held-out validation images, to choose between runs without touching the test split; results-val.json)",
        "run",
        type=str,
        choices=lambda: ("test", "val"),
        affects_result=False,
        part_of="evaluate",
    ),
    S.Setting(
        "recon_every",
        1,
        "log reconstruction grids every N epochs (0: off)",
        "run",
        type=int,
        check=S.at_least(0),
        affects_result=False,
    ),
    S.Setting(
        "switch_every",
        1,
        "log switch maps every N epochs (0: off)",
        "run",
        type=int,
        check=S.at_least(0),
        affects_result=False,
    ),
    S.Setting(
        "overview_every",
        1,
        "log the overview (reconstructions and every layer's switches in one figure) every N epochs (0: off)",
        "run",
        type=int,
        check=S.at_least(0),
        affects_result=False,
    ),
    S.Setting(
        "num_images", 8, "validation images in each picture", "run", type=int, check=S.at_least(1), affects_result=False
    ),
    S.Setting(
        "log_every",
        20,
        "log training metrics every N steps",
        "run",
        type=int,
        check=S.at_least(1),
        affects_result=False,
    ),
    S.Setting(
        "progress_every",
        10,
        "refresh the progress bar every N steps (on a terminal; a log file gets one line per epoch)",
        "run",
        type=int,
        check=S.at_least(1),
        affects_result=False,
    ),
    S.Setting(
        "fast_dev_run",
        0,
        "run N batches (default 1) of train/val/test; writes no checkpoints",
        "smoke",
        type=int,
        flag="optional",
        const=1,
        check=S.at_least(0),
        affects_result=False,
    ),
    S.Setting(
        "limit_train_batches", None, "batches per epoch (int) or fraction (float)", "smoke", type=S.batches_value
    ),
    S.Setting(
        "limit_val_batches",
        None,
        "validation batches (int) or fraction (float)",
        "smoke",
        type=S.batches_value,
        affects_result=False,
    ),
)


def devices(cfg: dict) -> dict:
    """--gpus N is shorthand for accelerator=gpu, devices=N and DDP when N > 1.

    Without a term that needs the decoder (the baseline, FixMatch, the mean teacher), the decoder's
    weights get no gradient, which plain DDP refuses: it is told to look for unused parameters.
    """
    if cfg["gpus"]:
        found = torch.cuda.device_count()
        if cfg["gpus"] > found:
            raise ValueError(f"--gpus {cfg['gpus']} asks for {cfg['gpus']} GPUs but {found} were found on this machine")
        chosen = {"accelerator": "gpu", "devices": cfg["gpus"], "strategy": "ddp" if cfg["gpus"] > 1 else "auto"}
    else:
        chosen = {"accelerator": cfg["accelerator"], "devices": cfg["devices"], "strategy": cfg["strategy"]}
    if chosen["strategy"] == "ddp" and DECODER not in needs_of(cfg):
        chosen["strategy"] = "ddp_find_unused_parameters_true"
    return chosen


def loggers(cfg: dict, run_dir: Path, resume_id: str | None) -> list:
    tracker = None
    if cfg["logger"] == "wandb":
        tracker = wandb_logger(run_dir, cfg, resume_id)
    elif cfg["logger"] == "tensorboard":
        tracker = tensorboard_logger(run_dir)
    return [RunCSVLogger(run_dir), *([tracker] if tracker is not None else [])]  # metrics.csv always


def image_callbacks(cfg: dict, run_dir: Path) -> list:
    from callbacks import OverviewLogger, ReconstructionLogger, SwitchMapLogger

    pictures = (
        (ReconstructionLogger, "recon_every"),
        (SwitchMapLogger, "switch_every"),
        (OverviewLogger, "overview_every"),
    )
    return [
        picture(every_n_epochs=cfg[every], num_images=cfg["num_images"], out_dir=run_dir / "images")
        for picture, every in pictures
        if cfg[every] > 0
    ]


class KnownWarnings(Callback):
    """Silences, while the Trainer runs and only then, the warnings a user of this project cannot act on.

    - Under DDP Lightning advises ``sync_dist=True`` for epoch-level values; the accuracies are
      torchmetrics', already reduced over every rank, and the pictures' numbers exist on rank 0 only.
    - Lightning's own batch flattening builds torch's deprecated ``LeafSpec`` at every first validation.
    - On one-channel images the first conv's weight gradient, shape (C, 1, k, k), can come back with
      channels-last strides, the memory order of DDP's bucket: its "may impair performance" warning
      is about nothing. Other shapes still warn.
    """

    def __init__(self) -> None:
        self._caught: list[warnings.catch_warnings] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        caught = warnings.catch_warnings()
        caught.__enter__()
        self._caught.append(caught)
        warnings.filterwarnings(
            "ignore", message=r"It is recommended to use `self\.log\('((val|test)/(acc|error|fixmatch_\w+)|images/\w+)'"
        )
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
        )
        warnings.filterwarnings(
            "ignore",
            message=r"(?s)Grad strides do not match bucket view strides.*grad\.sizes\(\) = \[\d+, 1, \d+, \d+\]",
            category=UserWarning,
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._caught:
            self._caught.pop().__exit__(None, None, None)


def build_trainer(
    cfg: dict,
    run_dir: Path,
    resume_id: str | None = None,
    with_images: bool = True,
    finetuned_from: dict | None = None,
) -> pl.Trainer:
    validate = cfg["limit_val_batches"] is None or cfg["limit_val_batches"] > 0
    # Without labels the classifier is untrained: the best unsupervised model reconstructs best.
    monitor = "val/rec" if cfg["mode"] == "unsupervised" else "val/error"
    checkpoint = BestAndLastCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor if validate else None,
        mode="min",
        auto_insert_metric_name=False,
        enable_version_counter=False,
        ties_to_later=cfg["checkpoint_ties"] == "later",
    )
    callbacks = [
        checkpoint,
        InterruptCheckpoint(run_dir / "checkpoints" / "last.ckpt"),
        RunRecord(run_dir, cfg, finetuned_from),
        progress_callback(cfg),
    ]
    if cfg["logger"] == "wandb":
        callbacks.append(WandbRunId())
    if cfg["logger"] != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if with_images:
        callbacks += image_callbacks(cfg, run_dir)
    optional = {k: cfg[k] for k in ("limit_train_batches", "limit_val_batches") if cfg[k] is not None}
    return _trainer(
        cfg,
        run_dir,
        callbacks,
        max_epochs=cfg["max_epochs"],
        fast_dev_run=cfg["fast_dev_run"],
        deterministic=cfg["deterministic"],
        logger=loggers(cfg, run_dir, resume_id),
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=cfg["log_every"],
        **optional,
    )


def evaluation_trainer(cfg: dict, out_dir: Path) -> pl.Trainer:
    """A Trainer that reads one split of a checkpoint's model: no logger, no checkpoints, no pictures."""
    return _trainer(cfg, out_dir, [progress_callback(cfg)], logger=False, enable_checkpointing=False)


def _trainer(cfg: dict, root: Path, callbacks: list[Callback], **options) -> pl.Trainer:
    """Every Trainer of this project: the devices the settings choose, our own samplers, known warnings quiet."""
    return pl.Trainer(
        **devices(cfg),
        num_nodes=cfg["num_nodes"],
        precision=cfg["precision"],
        default_root_dir=str(root),
        use_distributed_sampler=False,
        callbacks=[*callbacks, KnownWarnings()],
        **options,
    )
