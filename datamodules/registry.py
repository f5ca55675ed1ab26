"""Dataset name -> how to load it and what it looks like: the one place a new dataset is added."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import sources


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    load: Callable[..., "sources.ImageSplits"]
    image_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    hflip: bool  # horizontal flips are label-preserving (never for digits)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("mnist", sources.load_mnist, (1, 28, 28), 10, (0.1307,), (0.3081,), False),
        DatasetInfo("fashion-mnist", sources.load_fashion_mnist, (1, 28, 28), 10, (0.2860,), (0.3530,), True),
        DatasetInfo("svhn", sources.load_svhn, (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False),
        DatasetInfo("cifar10", sources.load_cifar10, (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
        DatasetInfo("cifar100", sources.load_cifar100, (3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
        DatasetInfo("stl10", sources.load_stl10, (3, 96, 96), 10, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), True),
    )
}


def get_dataset(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None
