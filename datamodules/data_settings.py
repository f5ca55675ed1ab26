"""The data settings: the DataModule's keywords, their defaults read from its signature, as the
command line, config files and value checks see them."""

from __future__ import annotations

from swwae_lightning import settings as S

from .datasets import DATASETS
from .semi_supervised import SemiSupervisedDataModule
from .strong_augment import ELASTIC_SPACING

MODES = ("semi", "supervised", "unsupervised")


def _default(name: str):
    return S.default_of(SemiSupervisedDataModule, name)


S.declare(
    S.Setting(
        "seed",
        _default("seed"),
        "seed of the split, the batch order, augmentation and initialization",
        "optimization",
        type=int,
    )
)
S.declare(
    S.Setting("dataset", _default("dataset"), "dataset", "data", type=str, choices=lambda: sorted(DATASETS.names())),
    S.Setting(
        "data_dir",
        _default("data_dir"),
        "where datasets are looked for (and downloaded to)",
        "data",
        type=str,
        affects_result=False,
    ),
    S.Setting(
        "labels",
        _default("labels"),
        "labeled examples, balanced over classes; 'all' with --mode supervised",
        "data",
        type=S.labels_value,
    ),
    S.Setting(
        "mode",
        _default("mode"),
        "semi: NLL on labeled + unlabeled terms on all; supervised; unsupervised",
        "data",
        type=str,
        choices=lambda: MODES,
    ),
    S.Setting(
        "batch_size",
        _default("batch_size"),
        "labeled examples per step (per process)",
        "data",
        type=int,
        check=S.at_least(1),
    ),
    S.Setting(
        "unlabeled_batch_size",
        _default("unlabeled_batch_size"),
        "unlabeled examples per step (per process)",
        "data",
        type=int,
        check=S.at_least(1),
    ),
    S.Setting(
        "val_size",
        _default("val_size"),
        "training examples held out for validation, on which the best checkpoint is chosen",
        "data",
        type=int,
        check=S.at_least(1),
    ),
    S.Setting(
        "fold", _default("fold"), "predefined labeled fold of datasets that have them (STL-10: 0-9)", "data", type=int
    ),
    S.Setting(
        "include_extra",
        _default("include_extra"),
        "add SVHN 'extra' / STL-10 'unlabeled' to the unlabeled pool",
        "data",
        flag="switch",
    ),
    S.Setting(
        "full_batches",
        _default("full_batches"),
        "every training batch exactly the batch size (an epoch's remainder is left out, a new one each "
        "epoch): static shapes, so --compile's CUDA graphs capture one step and replay it",
        "data",
        flag="switch",
    ),
    S.Setting(
        "augment", _default("augment"), "random shifts (and flips where label-preserving)", "data", flag="switch"
    ),
    S.Setting(
        "max_shift",
        _default("max_shift"),
        "--augment: the largest random shift of a training image, in pixels; default: a fourteenth of the "
        "image side (2 px on 28 and 32 px images, 7 on 96)",
        "data",
        type=int,
        check=S.at_least(0),
        part_of="augment",
    ),
    S.Setting(
        "max_rotation",
        _default("max_rotation"),
        "--augment: the largest random rotation of a weak training view (not the strong one), in degrees, "
        "either way (0: none)",
        "data",
        type=float,
        check=S.within(0, 180, closed_low=True, closed_high=True),
        part_of="augment",
    ),
    S.Setting(
        "max_scale",
        _default("max_scale"),
        "--augment: a weak training view (not the strong one) is zoomed by a random factor in "
        "[1 - max_scale, 1 + max_scale] (0: none)",
        "data",
        type=float,
        check=S.within(0, 1, closed_low=True),
        part_of="augment",
    ),
    S.Setting(
        "elastic",
        _default("elastic"),
        "--augment: an elastic distortion of every weak training view (not the strong one), a smooth field "
        f"correlated over about {ELASTIC_SPACING:g} px: each pixel's displacement along each axis, in pixels, "
        "standard deviation (0: none; the strong view uses 1)",
        "data",
        type=float,
        check=S.at_least(0),
        part_of="augment",
    ),
    S.Setting(
        "input_noise",
        _default("input_noise"),
        "--augment: standard deviation of Gaussian noise added to every weak training view (not the strong one) "
        "after standardization (0: none)",
        "data",
        type=float,
        check=S.at_least(0),
        part_of="augment",
    ),
    S.Setting(
        "strong_cutout",
        _default("strong_cutout"),
        "the strong view's cutout: the side of the square zeroed in each image, as a fraction of the "
        "image's shorter side (0: none); smaller keeps more of a thin subject such as a digit",
        "data",
        type=float,
        check=S.within(0, 1, closed_low=True, closed_high=True),
        of_method=True,
    ),
    S.Setting(
        "download",
        _default("download"),
        "let torchvision download a dataset that is not found locally",
        "data",
        flag="switch",
        affects_result=False,
    ),
    S.Setting(
        "num_workers",
        _default("num_workers"),
        "loader worker processes (data is in memory: 0 is usually fastest)",
        "data",
        type=int,
        check=S.at_least(0),
        affects_result=False,
    ),
    S.Setting(
        "image_size",
        _default("image_size"),
        "--dataset folder: the side of the square the network sees (shorter side "
        "resized, centre cropped); default: the preset size (28, 32, 96) nearest the images' own",
        "data",
        type=int,
        check=S.at_least(8),
        owner="dataset=folder",
    ),
    S.Setting(
        "channels",
        _default("channels"),
        "--dataset folder: 1 (grayscale) or 3 (RGB); default: what most images are",
        "data",
        type=int,
        check=lambda v: None if v in (None, 1, 3) else "must be 1 or 3",
        owner="dataset=folder",
    ),
    S.Setting(
        "hflip",
        _default("hflip"),
        "--dataset folder: random horizontal flips of training images, which keep the class of most objects "
        "but not of digits or text (--no-hflip)",
        "data",
        flag="switch",
        owner="dataset=folder",
    ),
)
