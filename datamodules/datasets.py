"""Dataset name -> how to load it and what it looks like: with its loader, the one place a dataset is added.

A new dataset is a loader returning ``ImageSplits`` (see ``sources``) and one ``DATASETS.register``
call (the same registry API as the core's poolings and loss terms): its image shape, classes,
normalization, whether flips keep labels, its predefined labeled folds and the preset
network the model uses when ``--arch`` is not given.
"""

from __future__ import annotations

from swwae_lightning.presets import PRESETS
from swwae_lightning.registry import Registry

from . import rgb_sources, sources
from .dataset_info import DatasetInfo
from .folder_dataset import describe as describe_folder

DATASETS: Registry[DatasetInfo] = Registry("dataset")


DIGITS = tuple(str(d) for d in range(10))
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10 = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")

for _info in (
    DatasetInfo(
        "mnist", sources.load_mnist, (1, 28, 28), 10, (0.1307,), (0.3081,), False, PRESETS["mnist"], class_names=DIGITS
    ),
    DatasetInfo(
        "fashion-mnist",
        sources.load_fashion_mnist,
        (1, 28, 28),
        10,
        (0.2860,),
        (0.3530,),
        True,
        PRESETS["mnist"],
        class_names=FASHION,
    ),
    DatasetInfo(
        "svhn",
        rgb_sources.load_svhn,
        (3, 32, 32),
        10,
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        False,
        PRESETS["cifar"],
        class_names=DIGITS,
    ),
    DatasetInfo(
        "cifar10",
        rgb_sources.load_cifar10,
        (3, 32, 32),
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        True,
        PRESETS["cifar"],
        class_names=CIFAR10,
    ),
    DatasetInfo(
        "cifar100",
        rgb_sources.load_cifar100,
        (3, 32, 32),
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        True,
        PRESETS["cifar"],
    ),
    DatasetInfo(
        "stl10",
        rgb_sources.load_stl10,
        (3, 96, 96),
        10,
        (0.4467, 0.4398, 0.4066),
        (0.2603, 0.2566, 0.2713),
        True,
        PRESETS["stl10"],
        folds=10,
        class_names=STL10,
    ),
):
    DATASETS.register(_info)


DATASETS.register(DatasetInfo("folder", None, (0, 0, 0), 0, (), (), True, "", describe=describe_folder))


def dataset_info(settings: dict) -> DatasetInfo:
    """The dataset ``settings`` name, described from its files where it has no fixed shape (the folder dataset)."""
    info = DATASETS[settings["dataset"]]
    return info.describe(settings) if info.describe else info
