"""The RGB datasets, read from their real on-disk formats: SVHN's .mat files, CIFAR's pickled
batches and STL-10's binaries."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
import torchvision
from torchvision.datasets.utils import download_and_extract_archive, download_url

from .sources import ImageSplits, as_splits, require_files


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN .mat file the way torchvision does.

    X is (32, 32, 3, N) and becomes (N, 3, 32, 32). The digit 0 is stored as label 10.
    """
    mat = scipy.io.loadmat(path)
    labels = mat["y"].astype(np.int64).reshape(-1)
    labels[labels == 10] = 0
    return np.transpose(mat["X"], (3, 2, 0, 1)), labels


def load_svhn(data_dir: Path, download: bool, include_extra: bool = False) -> ImageSplits:
    """SVHN's cropped digits from data_dir/svhn/*_32x32.mat.

    With include_extra, the 531,131 images of the 'extra' split go into extra_images.
    """
    root = Path(data_dir) / "svhn"
    splits = ["train", "test", "extra"] if include_extra else ["train", "test"]
    files = {split: root / torchvision.datasets.SVHN.split_list[split][1] for split in splits}

    def fetch() -> None:
        for split in splits:
            url, filename, md5 = torchvision.datasets.SVHN.split_list[split]
            download_url(url, root, filename, md5)

    require_files("SVHN", list(files.values()), download, fetch)
    extra_images = _read_svhn_mat(files["extra"])[0] if include_extra else None
    return as_splits(root, _read_svhn_mat(files["train"]), _read_svhn_mat(files["test"]), extra_images)


# --- CIFAR ------------------------------------------------------------------------------------


def _read_cifar_batches(paths: Sequence[Path], label_key: str) -> tuple[np.ndarray, list[int]]:
    """Read pickled CIFAR batches the way torchvision does.

    Each row of 'data' holds 3072 bytes: the R, G and B planes of one 32x32 image.
    """
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        # The official Python 2 pickles load with str keys. Copies saved again from Python 3 may
        # have bytes keys.
        batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
        images.append(batch["data"])
        labels.extend(batch[label_key])
    return np.vstack(images).reshape(-1, 3, 32, 32), labels


def _load_cifar(
    dataset_cls: type[torchvision.datasets.CIFAR10], data_dir: Path, download: bool, label_key: str
) -> ImageSplits:
    root = Path(data_dir) / dataset_cls.base_folder
    train_files = [root / name for name, _ in dataset_cls.train_list]
    test_files = [root / name for name, _ in dataset_cls.test_list]

    def fetch() -> None:
        download_and_extract_archive(dataset_cls.url, data_dir, filename=dataset_cls.filename, md5=dataset_cls.tgz_md5)

    require_files(dataset_cls.__name__, train_files + test_files, download, fetch)
    train = _read_cifar_batches(train_files, label_key)
    return as_splits(root, train, _read_cifar_batches(test_files, label_key))


def load_cifar10(data_dir: Path, download: bool, include_extra: bool = False) -> ImageSplits:
    """CIFAR-10 from the Python pickle batches in data_dir/cifar-10-batches-py."""
    return _load_cifar(torchvision.datasets.CIFAR10, data_dir, download, "labels")


def load_cifar100(data_dir: Path, download: bool, include_extra: bool = False) -> ImageSplits:
    """CIFAR-100 with its 100 fine labels, from data_dir/cifar-100-python."""
    return _load_cifar(torchvision.datasets.CIFAR100, data_dir, download, "fine_labels")


# --- STL-10 -----------------------------------------------------------------------------------

STL10_IMAGE_SHAPE = (3, 96, 96)
STL10_FOLDS = 10


def _read_stl10_images(path: Path) -> np.ndarray:
    """Read one STL-10 image file.

    Each image is stored column-major, so, like torchvision, this reshapes to (N, 3, 96, 96) and
    then swaps H and W. The file is memory-mapped and copied once into the transposed layout, so
    the 2.7 GB unlabeled file is never held in memory twice.
    """
    image_bytes = int(np.prod(STL10_IMAGE_SHAPE))
    size = path.stat().st_size
    if size == 0 or size % image_bytes:
        raise ValueError(f"{path}: {size} bytes, expected a positive multiple of {image_bytes} (3x96x96 uint8 images)")
    stored = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, *STL10_IMAGE_SHAPE)
    images = np.empty(stored.shape, dtype=np.uint8)
    np.copyto(images, stored.transpose(0, 1, 3, 2))
    return images


def _read_stl10_labels(path: Path) -> np.ndarray:
    """STL-10 labels are the bytes 1..10 and become 0..9."""
    return np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1


def _read_stl10_folds(path: Path, num_train: int) -> list[np.ndarray]:
    """The predefined folds: one line per fold, each with space-separated 0-based indices into train."""
    folds = [np.array(line.split(), dtype=np.int64) for line in path.read_text().splitlines() if line.strip()]
    if len(folds) != STL10_FOLDS:
        raise ValueError(f"{path}: {len(folds)} folds, expected {STL10_FOLDS} lines of train indices")
    for number, fold in enumerate(folds):
        outside = fold[(fold < 0) | (fold >= num_train)]
        if outside.size:
            raise ValueError(f"{path}: fold {number} has index {outside[0]}, expected indices in [0, {num_train})")
    return folds


def load_stl10(data_dir: Path, download: bool, include_extra: bool = False) -> ImageSplits:
    """STL-10 from data_dir/stl10_binary, with its 10 labeled folds.

    With include_extra, the 100,000 unlabeled images go into extra_images.
    """
    stl10 = torchvision.datasets.STL10
    root = Path(data_dir) / stl10.base_folder
    names = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", stl10.folds_list_file]
    if include_extra:
        names.append("unlabeled_X.bin")

    def fetch() -> None:
        download_and_extract_archive(stl10.url, data_dir, filename=stl10.filename, md5=stl10.tgz_md5)

    require_files("STL10", [root / name for name in names], download, fetch)
    train_labels = _read_stl10_labels(root / "train_y.bin")
    return as_splits(
        root,
        (_read_stl10_images(root / "train_X.bin"), train_labels),
        (_read_stl10_images(root / "test_X.bin"), _read_stl10_labels(root / "test_y.bin")),
        extra_images=_read_stl10_images(root / "unlabeled_X.bin") if include_extra else None,
        folds=_read_stl10_folds(root / stl10.folds_list_file, len(train_labels)),
    )
