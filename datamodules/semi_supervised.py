"""The semi-supervised protocol as a LightningDataModule.

Training split -> (validation, rest); rest -> a balanced, seeded labeled subset
and the unlabeled pool (the rest of it, plus SVHN 'extra' / STL-10 'unlabeled').
The labeled and validation indices travel in ``state_dict()``, so a resumed run
keeps its split even if the seed or the code changed. Each training batch is
``{"labeled": (x, y), "unlabeled": x}``; one epoch is one pass over the unlabeled
pool while the labeled set cycles, reshuffled at every cycle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader

from swwae_lightning import settings as S
from swwae_lightning.objectives import VIEWS

from . import augment
from .batches import InMemoryBatches, ResumableLoader
from .datasets import DATASETS, dataset_info
from .sampling import (
    CyclingSampler,
    EpochSampler,
    balanced_labeled_indices,
    check_label_count,
    hold_out_validation,
    seeded_generator,
)
from .sources import ImageSplits
from .strong_augment import random_affine, random_elastic, strong_augment

FOLDER_ONLY = ("image_size", "channels", "hflip")  # the settings only the folder dataset takes
SKIPPED_FILE = "skipped_files.txt"  # in the run directory: a folder's unreadable files, a tab, the reason


def _take(images, indices: torch.Tensor):
    """``images[indices]``: a copy in memory, or a view of a folder's cache on disk that reads nothing yet."""
    return images.subset(indices) if hasattr(images, "subset") else images[indices]


class SemiSupervisedDataModule(pl.LightningDataModule):
    """The labeled/validation split of a dataset and its batches; ``views`` names the extra views of the
    unlabeled batch an objective needs. ``python train.py --help`` (the data group) or ``docs/cli.md``
    says what each keyword does; the data settings read their defaults from this signature."""

    def __init__(
        self,
        views: tuple[str, ...] = (),
        *,
        dataset: str = "mnist",
        data_dir: str = "data",
        labels: int | None = 100,
        mode: str = "semi",
        batch_size: int = 128,
        unlabeled_batch_size: int = 128,
        val_size: int = 5000,
        fold: int | None = None,
        include_extra: bool = False,
        full_batches: bool = False,
        augment: bool = True,
        max_shift: int | None = None,
        max_rotation: float = 0.0,
        max_scale: float = 0.0,
        elastic: float = 0.0,
        input_noise: float = 0.0,
        strong_cutout: float = 0.5,
        download: bool = True,
        num_workers: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
        hflip: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        settings = dict(
            dataset=dataset,
            data_dir=data_dir,
            labels=labels,
            mode=mode,
            batch_size=batch_size,
            unlabeled_batch_size=unlabeled_batch_size,
            val_size=val_size,
            fold=fold,
            include_extra=include_extra,
            full_batches=full_batches,
            augment=augment,
            max_shift=max_shift,
            max_rotation=max_rotation,
            max_scale=max_scale,
            elastic=elastic,
            input_noise=input_noise,
            strong_cutout=strong_cutout,
            download=download,
            num_workers=num_workers,
            image_size=image_size,
            channels=channels,
            hflip=hflip,
            seed=seed,
        )
        values = S.check_all(settings, style="python")
        dataset, labels, fold, mode = values["dataset"], values["labels"], values["fold"], values["mode"]
        own = inspect.signature(SemiSupervisedDataModule).parameters
        given = [name for name in FOLDER_ONLY if values[name] != own[name].default]
        if given and not DATASETS[dataset].from_files:
            raise ValueError(f"--{given[0].replace('_', '-')} applies to --dataset folder only, not {dataset!r}")
        self.info = dataset_info(values)
        unknown = sorted(set(views) - set(VIEWS))
        if unknown:
            raise ValueError(f"views {unknown} are not among {VIEWS}")
        if values["strong_cutout"] != S.SETTINGS["strong_cutout"].default and "strong" not in views:
            raise ValueError(
                f"--strong-cutout {values['strong_cutout']} shapes the strong view, which no loss term here uses; "
                "give a term that does (--lambda-fixmatch) or leave --strong-cutout out"
            )
        if fold is not None and not self.info.folds:
            raise ValueError(f"fold={fold} applies only to datasets with predefined folds, not {dataset!r}")
        if fold is not None and not 0 <= fold < self.info.folds:
            raise ValueError(
                f"fold={fold} must be in 0..{self.info.folds - 1} ({dataset} has {self.info.folds} predefined folds)"
            )
        if mode == "semi" and labels is None and fold is None and not self.info.from_files:  # a folder: all of labeled/
            raise ValueError("mode='semi' needs labels=N (how many labeled examples) or, for stl10, a fold")
        if labels is not None:
            check_label_count(labels, self.info.num_classes)  # fail before loading any data
        self.dataset, self.data_dir, self.labels = dataset, Path(values["data_dir"]), labels
        self.batch_size, self.unlabeled_batch_size = values["batch_size"], values["unlabeled_batch_size"]
        self.val_size, self.seed, self.mode = values["val_size"], values["seed"], mode
        self.augment, self.num_workers = values["augment"], values["num_workers"]
        self.full_batches = values["full_batches"]
        self.fold, self.include_extra, self.download = fold, values["include_extra"], values["download"]
        self.views = tuple(v for v in VIEWS if v in views)
        max_shift = values["max_shift"]
        self.max_shift = round(self.info.image_shape[1] / 14) if max_shift is None else max_shift
        self.max_rotation, self.max_scale = values["max_rotation"], values["max_scale"]
        self.elastic = values["elastic"]
        self.input_noise, self.strong_cutout = values["input_noise"], values["strong_cutout"]
        self.splits: ImageSplits | None = None
        self.labeled_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self._train_streams: dict[str, ResumableLoader] = {}

    # ----------------------------------------------------------------- the split
    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.info.load(self.data_dir, download=self.download, include_extra=self.include_extra)
            shape = tuple(self.splits.train_images.shape[1:])
            if shape != self.info.image_shape:
                raise ValueError(f"{self.dataset} images have shape {shape}, expected {self.info.image_shape}")
        if self.val_indices is None:
            self._draw_split()
        if self.full_batches and stage in ("fit", None):
            self._check_full_batches()

    def _check_full_batches(self) -> None:
        """Before anything is written: the training set holds at least one full batch per rank (raises if not)."""
        _, world = self._rank_world()
        if self.mode == "supervised":
            size, batch = len(self.labeled_indices), self.batch_size
        else:
            extra = 0 if self.splits.extra_images is None else len(self.splits.extra_images)
            size, batch = len(self.unlabeled_pool()) + extra, self.unlabeled_batch_size
        EpochSampler(size, batch, self.seed, world_size=world, full_batches=True)

    def _draw_split(self) -> None:
        train_labels = self.splits.train_labels
        if self.fold is not None:
            fold = self.splits.folds[self.fold]
            if self.labels is not None and self.labels != len(fold):
                raise ValueError(
                    f"labels={self.labels} conflicts with stl10 fold {self.fold}, which has {len(fold)} labels"
                )
            outside = torch.ones(len(train_labels), dtype=torch.bool)
            outside[fold] = False
            _, val = hold_out_validation(int(outside.sum()), self.val_size, self.seed)
            candidates = outside.nonzero().squeeze(1)
            self.val_indices = candidates[val]
            self.labeled_indices = fold.sort().values
            return
        if self.splits.val_indices is not None:  # the dataset's own validation set
            self.val_indices = self.splits.val_indices
            outside = torch.ones(len(train_labels), dtype=torch.bool)
            outside[self.val_indices] = False
            rest = outside.nonzero().squeeze(1)
        else:
            rest, self.val_indices = hold_out_validation(len(train_labels), self.val_size, self.seed)
        if self.mode == "unsupervised":
            self.labeled_indices = torch.zeros(0, dtype=torch.long)
        elif self.labels is None:  # supervised with every label
            self.labeled_indices = rest
        else:
            self.labeled_indices = balanced_labeled_indices(
                train_labels, rest, self.labels, self.info.num_classes, self.seed
            )

    def unlabeled_pool(self) -> torch.Tensor:
        """Training indices that are neither validation nor labeled (their labels are never read)."""
        keep = torch.ones(len(self.splits.train_labels), dtype=torch.bool)
        keep[self.val_indices] = False
        keep[self.labeled_indices] = False
        return keep.nonzero().squeeze(1)

    def unlabeled_images(self) -> torch.Tensor:
        """The pool's images: a tensor in memory, or a view of a folder's cache on disk (nothing is read)."""
        images = _take(self.splits.train_images, self.unlabeled_pool())
        if self.splits.extra_images is not None:
            extra = self.splits.extra_images
            images = images.concat(extra) if hasattr(images, "concat") else torch.cat([images, extra])
        return images

    def unlabeled_paths(self) -> list[str]:
        """The files of the unlabeled pool, in pool order (a folder dataset's; empty for the others)."""
        if not self.splits.paths:
            return []
        train = self.splits.paths["train"]
        return [train[i] for i in self.unlabeled_pool().tolist()] + list(self.splits.paths["extra"])

    def preprocessing(self) -> dict:
        """What the model must be shown the same way in every later use: it travels in every checkpoint."""
        channels, size, _ = self.info.image_shape
        return {
            "image_size": size,
            "channels": channels,
            "class_names": list(self.info.class_names),
            "mean": list(self.info.mean),
            "std": list(self.info.std),
        }

    def files_fingerprint(self) -> str | None:
        """A folder dataset's readable files, in row order, as one hash: the split's indices point into them."""
        if not self.splits.paths:
            return None
        listing = "\n".join([*self.splits.paths["train"], "", *self.splits.paths["extra"]])
        return hashlib.sha1(listing.encode()).hexdigest()

    def state_dict(self) -> dict:
        state = {
            "labeled_indices": self.labeled_indices.tolist(),
            "val_indices": self.val_indices.tolist(),
            "dataset": self.dataset,
            "preprocessing": self.preprocessing(),
        }
        if self.files_fingerprint():
            state["files"] = self.files_fingerprint()
        return state

    def check_same_files(self, state: dict) -> None:
        """A resumed split is only right over the files it was drawn from: refuse, in one line, if they changed."""
        saved, now = state.get("files"), self.files_fingerprint()
        if saved and now and saved != now:
            raise ValueError(
                f"the files under {self.data_dir} changed since this run started (readable training "
                f"files now: {len(self.splits.paths['train']):,}): a resume needs the files it was "
                f"started with; start a new run instead"
            )

    def load_state_dict(self, state: dict) -> None:
        if state.get("dataset", self.dataset) != self.dataset:
            raise ValueError(f"checkpoint split is for dataset {state['dataset']!r}, not {self.dataset!r}")
        self.labeled_indices = torch.tensor(state["labeled_indices"], dtype=torch.long)
        self.val_indices = torch.tensor(state["val_indices"], dtype=torch.long)
        if state.get("preprocessing"):
            self.use_preprocessing(state["preprocessing"], class_names=True)

    def use_preprocessing(self, saved: dict, class_names: bool) -> None:
        """A folder's images normalized with the statistics a checkpoint's model was trained with, not those of
        today's files (and, for the same run, its class names: a fine-tuned run names its own classes)."""
        if not self.info.from_files:
            return
        names = tuple(saved["class_names"]) if class_names else self.info.class_names
        self.info = dataclasses.replace(
            self.info, mean=tuple(saved["mean"]), std=tuple(saved["std"]), class_names=names
        )

    def write_run_files(self, run_dir: Path) -> None:
        """The exact split (for the run directory and a paper's appendix), the preprocessing the model is
        trained with and, for a folder, the skipped files."""
        counts = torch.bincount(self.splits.train_labels[self.labeled_indices], minlength=self.info.num_classes)
        (run_dir / "split.json").write_text(
            json.dumps(
                {
                    "dataset": self.dataset,
                    "seed": self.seed,
                    "mode": self.mode,
                    "labeled_per_class": counts.tolist(),
                    "labeled_indices": self.labeled_indices.tolist(),
                    "val_indices": self.val_indices.tolist(),
                    "unlabeled_pool_size": len(self.unlabeled_images()),
                }
            )
        )
        (run_dir / "preprocessing.json").write_text(json.dumps(self.preprocessing(), indent=2, ensure_ascii=False))
        if self.splits.skipped:
            (run_dir / SKIPPED_FILE).write_text("".join(f"{p}\t{why}\n" for p, why in self.splits.skipped))

    # ----------------------------------------------------------------- loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _stream(self, data: InMemoryBatches, plan) -> ResumableLoader:
        return ResumableLoader(data, plan, self.num_workers)

    def train_streams(self) -> dict[str, ResumableLoader]:
        rank, world = self._rank_world()
        epoch = self._epoch()
        streams = {}
        labeled = InMemoryBatches(
            self.splits.train_images[self.labeled_indices], self.splits.train_labels[self.labeled_indices]
        )
        if self.mode == "supervised":
            plan = EpochSampler(
                len(labeled), self.batch_size, self.seed, rank, world, epoch=epoch, full_batches=self.full_batches
            )
            return {"labeled": self._stream(labeled, plan)}
        unlabeled = InMemoryBatches(self.unlabeled_images())
        unlabeled_plan = EpochSampler(
            len(unlabeled),
            self.unlabeled_batch_size,
            self.seed,
            rank,
            world,
            epoch=epoch,
            full_batches=self.full_batches,
        )
        if self.mode == "semi":
            labeled_plan = CyclingSampler(
                len(labeled), self.batch_size, len(unlabeled_plan), self.seed, rank, world, epoch=epoch
            )
            streams["labeled"] = self._stream(labeled, labeled_plan)
        streams["unlabeled"] = self._stream(unlabeled, unlabeled_plan)
        return streams

    def train_dataloader(self) -> CombinedLoader:
        self._train_streams = self.train_streams()
        return CombinedLoader(self._train_streams, mode="min_size")

    def _eval_loader(self, images: torch.Tensor, labels: torch.Tensor) -> ResumableLoader:
        rank, world = self._rank_world()
        plan = EpochSampler(len(images), self.batch_size * 2, self.seed, rank, world, shuffle=False)
        return ResumableLoader(InMemoryBatches(images, labels), plan, self.num_workers)

    def val_dataloader(self) -> ResumableLoader:
        return self._eval_loader(
            _take(self.splits.train_images, self.val_indices), self.splits.train_labels[self.val_indices]
        )

    def test_dataloader(self) -> ResumableLoader:
        return self._eval_loader(self.splits.test_images, self.splits.test_labels)

    # ----------------------------------------------------------------- on device
    def _prepare(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if generator is None:
            return augment.normalize(images, self.info.mean, self.info.std)
        images = augment.random_translate(images, self.max_shift, generator)
        if self.info.hflip:
            images = augment.random_hflip(images, generator)
        images = images.float() / 255
        if self.max_rotation > 0 or self.max_scale > 0:  # drawn only when asked: runs without it draw as before
            zoom = (1 - self.max_scale, 1 + self.max_scale)
            images = random_affine(images, generator, self.max_rotation, max_shear=0.0, scale=zoom, max_translate=0.0)
        if self.elastic > 0:  # drawn only when asked: runs without it draw as before
            images = random_elastic(images, generator, alpha=self.elastic)
        images = augment.standardize(images, self.info.mean, self.info.std)
        if self.input_noise > 0:  # drawn only when asked: runs without it draw as before
            images = augment.add_gaussian_noise(images, self.input_noise, generator)
        return images

    def _strong(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A weak view's shift and flip, then the strong distortions, then normalization."""
        images = augment.random_translate(images, self.max_shift, generator)
        if self.info.hflip:
            images = augment.random_hflip(images, generator)
        return augment.standardize(
            strong_augment(images.float() / 255, generator, hflip=False, cutout=self.strong_cutout),
            self.info.mean,
            self.info.std,
        )

    def _views(self, images: torch.Tensor, step: int, rank: int) -> dict[str, torch.Tensor]:
        """The extra views of the unlabeled batch, from their own generator: the default path draws as before."""
        generator = seeded_generator(self.seed, step, rank, 0x5EC)
        return {
            name: self._strong(images, generator) if name == "strong" else self._prepare(images, generator)
            for name in self.views
        }

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not isinstance(batch, dict):  # validation / test: (x, y)
            images, labels = batch
            return self._prepare(images, None), labels
        # Lightning transfers exactly the batches the training loop uses (not the one it prefetches):
        # counting here is what a mid-epoch checkpoint must record as consumed.
        for name in batch:
            if name in self._train_streams:
                self._train_streams[name].mark_consumed()
        step = self.trainer.global_step if self.trainer is not None else 0
        rank, _ = self._rank_world()
        generator = seeded_generator(self.seed, step, rank, 0xA06) if self.augment else None
        out = {}
        if "labeled" in batch:
            images, labels = batch["labeled"]
            out["labeled"] = (self._prepare(images, generator), labels)
        if "unlabeled" in batch:
            out["unlabeled"] = self._prepare(batch["unlabeled"], generator)
            if self.views:
                out["views"] = self._views(batch["unlabeled"], step, rank)
        return out

    def preview_images(self, num_images: int) -> torch.Tensor:
        """The first ``num_images`` validation images, normalized as the model sees them.

        The same images every time, so pictures of successive epochs are comparable.
        """
        images = self.splits.train_images[self.val_indices[:num_images]]
        return augment.normalize(images, self.info.mean, self.info.std)

    def to_display(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalization: model-space images back to [0, 1] for pictures."""
        return augment.destandardize(images, self.info.mean, self.info.std)

    def stream_progress(self, batch_idx: int) -> dict[str, float]:
        """Share of the unlabeled pool seen so far this epoch and labeled cycles so far."""
        streams = (self.trainer.train_dataloader if self.trainer is not None else None) or {}
        progress = {}
        if "unlabeled" in streams:
            progress["unlabeled_seen"] = (batch_idx + 1) / len(streams["unlabeled"])
        if "labeled" in streams and isinstance(streams["labeled"].sampler, CyclingSampler):
            plan = streams["labeled"].sampler
            progress["labeled_cycles"] = plan.cycles_per_epoch * (batch_idx + 1) / len(plan)
        return progress
