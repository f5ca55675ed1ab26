"""What every benchmark row shares: the default job's config, its data on the device, the network and the loss."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages, when run as a script

from datamodules.datasets import DATASETS  # noqa: E402
from datamodules.semi_supervised import SemiSupervisedDataModule  # noqa: E402
from datamodules.sources import DatasetNotFound, ImageSplits  # noqa: E402
from orchestration import plugins, training  # noqa: E402
from swwae_lightning import settings as S  # noqa: E402
from swwae_lightning.network import StackedWhatWhere, network_from_settings  # noqa: E402
from swwae_lightning.objectives import VIEWS, Objective, is_baseline  # noqa: E402

PREPARED_BATCHES = 8  # the plain loop cycles through these, already on the device
RANDOM_TRAIN_IMAGES = 4096  # per synthetic dataset, on top of the validation hold-out
# The precisions the plain loop mirrors, and the dtype its autocast uses for each.
AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16}


@dataclass
class Bench:
    """What every row shares: the default job's config, its data, the device and the numerics."""

    cfg: dict
    datamodule: SemiSupervisedDataModule
    data_source: str
    device: torch.device
    batches: list[dict]  # the plain loop's batches, prepared once by the real data path
    run_dir: Path
    views_datamodule: SemiSupervisedDataModule  # the same data, drawing every extra view
    view_batches: list[dict]  # the plain loop's batches with the strong and the second view
    folder_datamodule: SemiSupervisedDataModule | None = None  # --folder: the same job read from a folder's cache

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self):
        dtype = AUTOCAST[self.cfg["precision"]]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)


def job_config(args: argparse.Namespace, **overrides) -> dict:
    """The declared defaults (the default job) with the benchmark's choices on top."""
    plugins.declare_all_settings()
    cfg = S.defaults()
    cfg.update(
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=False,
        batch_size=args.batch_size,
        unlabeled_batch_size=args.unlabeled_batch_size,
        precision=args.precision,
        compile=args.compile,
        channels_last=args.channels_last,
        logger="csv",
    )
    cfg.update(overrides)
    return cfg


def random_splits(dataset: str, num_train: int, seed: int = 0) -> ImageSplits:
    """Uniform uint8 images of the dataset's shape: the same cost per step as real ones."""
    info = DATASETS[dataset]
    generator = torch.Generator().manual_seed(seed)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, *info.image_shape), dtype=torch.uint8, generator=generator)
        return images, torch.randint(0, info.num_classes, (n,), generator=generator)

    return ImageSplits(*draw(num_train), *draw(256))


def load_datamodule(cfg: dict) -> tuple[SemiSupervisedDataModule, str]:
    """The real data when it is on disk or bundled (never downloaded), else random images."""
    datamodule = training.build_datamodule(cfg)
    try:
        datamodule.setup("fit")
        return datamodule, "real"
    except DatasetNotFound:
        datamodule.splits = random_splits(cfg["dataset"], cfg["val_size"] + RANDOM_TRAIN_IMAGES)
        datamodule.setup("fit")  # the splits are there: this only draws the labeled/validation split
        return datamodule, "random uint8 (not found on disk)"


def device_batches(datamodule: SemiSupervisedDataModule, device: torch.device):
    """Training batches endlessly, through the real path: the streams, the transfer, the on-device prep."""
    datamodule.trainer = None  # detach from any earlier Trainer: its loop state is not ours
    while True:
        for batch, _, _ in datamodule.train_dataloader():
            yield datamodule.on_after_batch_transfer(move_data_to_device(batch, device), 0)


def make_bench(args: argparse.Namespace, cfg: dict, run_dir: Path, prepared_batches: int) -> Bench:
    """Loads the data once and prepares the plain loop's batches (augmented as at step 0)."""
    datamodule, data_source = load_datamodule(cfg)
    device = torch.device(args.device)
    batches = list(itertools.islice(device_batches(datamodule, device), prepared_batches))
    views = SemiSupervisedDataModule(views=VIEWS, **training.data_settings(cfg))
    views.splits = datamodule.splits  # loaded once
    views.setup("fit")
    view_batches = list(itertools.islice(device_batches(views, device), prepared_batches))
    folder = None
    if args.folder:  # the same images as files: the folder dataset, its cache built here (untimed)
        channels, size, _ = datamodule.info.image_shape
        folder = training.build_datamodule(
            {**cfg, "dataset": "folder", "data_dir": str(args.folder), "image_size": size, "channels": channels}
        )
        folder.setup("fit")
    return Bench(
        cfg,
        datamodule,
        data_source,
        device,
        batches,
        run_dir,
        views,
        view_batches,
        folder,
    )


def new_network(cfg: dict, device: torch.device) -> StackedWhatWhere:
    """Seeded as training.build_module seeds, so it starts from the same weights as the module's net."""
    pl.seed_everything(cfg["seed"], verbose=False)
    info = DATASETS[cfg["dataset"]]
    channels, height, _ = info.image_shape
    net = network_from_settings(training.architecture(cfg), channels, height, info.num_classes, cfg)
    return net.to(device)


def objective(cfg: dict) -> Objective:
    """The same loss code the LightningModule trains with."""
    return Objective.from_settings(**{k: cfg[k] for k in S.names_in(["objectives"])})


def images_per_step(cfg: dict) -> int:
    """The dataset images a step trains on: the baseline skips the unlabeled batch (extra views not counted)."""
    return cfg["batch_size"] + (0 if is_baseline(cfg) else cfg["unlabeled_batch_size"])


def at_batch(bench: Bench, batch: int, prepared_batches: int) -> Bench:
    """The same job and data with ``batch`` labeled and ``batch`` unlabeled images a step.

    At a tiny batch the arithmetic vanishes and what is left of a step is the host's work: the
    operator dispatch and the framework's per-step code, which a GPU would wait for.
    """
    cfg = {**bench.cfg, "batch_size": batch, "unlabeled_batch_size": batch}
    datamodule = SemiSupervisedDataModule(views=bench.datamodule.views, **training.data_settings(cfg))
    datamodule.splits = bench.datamodule.splits  # loaded once
    datamodule.setup("fit")
    batches = list(itertools.islice(device_batches(datamodule, bench.device), prepared_batches))
    return dataclasses.replace(bench, cfg=cfg, datamodule=datamodule, batches=batches)
