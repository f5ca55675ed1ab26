"""``--dataset folder``: a folder tree as a dataset, its shape, classes and statistics computed from its files.

What the model must see the same way in every later use (class names, per-channel mean and std,
image size, channels) travels in every checkpoint with the DataModule's state, so ``--resume``,
``--evaluate``, ``--finetune-from`` and ``--predict`` use exactly what the model was trained with.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from swwae_lightning.presets import PRESETS

from . import folder
from .dataset_info import DatasetInfo
from .sources import ImageSplits

PRESET_OF_SIZE = {28: PRESETS["mnist"], 32: PRESETS["cifar"], 96: PRESETS["stl10"]}


_described: dict[tuple, tuple[DatasetInfo, Path, int]] = {}  # -> (info, its cache's data file, that file's size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _say(line: str) -> None:
    if rank_zero_only.rank == 0:  # every DDP rank reads the folder; one says what it found
        print(line, file=sys.stderr, flush=True)


def _check_classes(
    root: Path, split_folder: str, classes: list[str], labels: np.ndarray, files: Counter, wanted: int | None
) -> None:
    counts = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), dtype=int)
    for c, name in enumerate(classes):
        if counts[c] == 0:
            raise folder.FolderError(
                f"{root / split_folder / name} has no readable image ({files[c]} file(s), none of which decodes)"
            )
    if wanted is not None:
        per_class = wanted // len(classes)
        short = [(name, int(counts[c])) for c, name in enumerate(classes) if counts[c] < per_class]
        if short:
            name, have = short[0]
            raise folder.FolderError(
                f"--labels {wanted} asks for {per_class} images of each of the {len(classes)} "
                f"classes, but {root / split_folder / name} holds only {have} readable one(s)"
            )


def describe(settings: dict) -> DatasetInfo:
    """The folder's DatasetInfo; flips as the settings ask (``hflip``: digits and text must not be flipped)."""
    return dataclasses.replace(_described_files(settings), hflip=settings.get("hflip", True))


def _described_files(settings: dict) -> DatasetInfo:
    """Index the data directory, build or reuse its cache, and say in one line each what was skipped or is missing."""
    root = Path(settings["data_dir"]).expanduser().resolve()
    kind, classes, entries, skipped_at_index = folder.index(root)
    labeled_split = "train" if kind == "academic" else "labeled"
    image_size = settings.get("image_size") or folder.default_image_size(
        root, [e for e in entries if e.split == labeled_split]
    )
    channels = settings.get("channels") or folder.dominant_channels(root, entries)
    key = (root, image_size, channels, folder.cache_key(entries, image_size, channels))
    if key in _described and _size(_described[key][1]) == _described[key][2]:
        return _described[key][0]  # the same files, and a cache still whole (else it is checked and rebuilt)
    manifest, data_path = folder.cached(root, entries, image_size, channels)
    splits_of = np.asarray(manifest["splits"])
    labels = np.asarray(manifest["labels"], dtype=np.int64)
    skipped = tuple(map(tuple, skipped_at_index + [tuple(s) for s in manifest["skipped"]]))
    if skipped:
        reasons = Counter(reason.split(" (")[0] for _, reason in skipped)
        _say(
            f"skipped {len(skipped):,} of {len(entries) + len(skipped_at_index):,} files "
            f"({', '.join(f'{n:,} {r}' for r, n in reasons.most_common())}); each is listed with its reason in "
            f"the run directory's skipped_files.txt"
        )
    rows = {split: np.flatnonzero(splits_of == split) for split in ("train", "test", "labeled", "unlabeled", "val")}
    files_per_class = Counter(e.label for e in entries if e.split == labeled_split)
    labels_wanted = settings.get("labels") if settings.get("mode", "semi") != "unsupervised" else None
    _check_classes(root, labeled_split, classes, labels[rows[labeled_split]], files_per_class, labels_wanted)
    if not len(rows["test"]):
        _say(f"{root} has no test/ folder (or no readable image in it): this run reports validation error only")
    training = [s for s in ("train", "labeled", "unlabeled", "val") if len(rows[s])]
    train_digests = {manifest["sha1"][i] for s in training for i in rows[s]}
    leaked = sum(manifest["sha1"][i] in train_digests for i in rows["test"])
    if leaked:
        _say(
            f"warning: {leaked:,} file(s) under {root / 'test'} have the same bytes as a training file: "
            f"the test error is not measured on unseen images"
        )

    images = folder.DiskImages(data_path, (channels, image_size, image_size), np.arange(len(splits_of)))
    paths = np.asarray([str(root / p) for p in manifest["paths"]], dtype=object)
    train_rows = np.concatenate([rows[labeled_split], rows["val"]])  # a val/ folder is the validation set
    val_indices = torch.arange(len(rows[labeled_split]), len(train_rows)) if len(rows["val"]) else None
    stats_rows = np.concatenate([rows[labeled_split], rows["unlabeled"]])
    mean, std = folder.channel_stats(images, stats_rows)
    empty = torch.zeros((0, channels, image_size, image_size), dtype=torch.uint8)
    splits = ImageSplits(
        train_images=images.subset(train_rows),
        train_labels=torch.from_numpy(labels[train_rows]),
        test_images=images.subset(rows["test"]) if len(rows["test"]) else empty,
        test_labels=torch.from_numpy(labels[rows["test"]]),
        extra_images=images.subset(rows["unlabeled"]) if len(rows["unlabeled"]) else None,
        val_indices=val_indices,
        skipped=skipped,
        paths={
            "train": tuple(paths[train_rows]),
            "test": tuple(paths[rows["test"]]),
            "extra": tuple(paths[rows["unlabeled"]]),
        },
    )
    info = DatasetInfo(
        "folder",
        lambda data_dir, download, include_extra: splits,
        (channels, image_size, image_size),
        len(classes),
        mean,
        std,
        hflip=True,
        preset=PRESET_OF_SIZE.get(image_size, ""),
        class_names=tuple(classes),
        describe=describe,
    )
    _described[key] = (info, data_path, _size(data_path))
    return info
