"""What a dataset looks like and how to load it: the record the dataset registry holds.

It sits apart from the registry so that a dataset described from its files (the folder dataset)
can build one without importing the registry that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .sources import ImageSplits


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    load: Callable[..., ImageSplits]
    image_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    hflip: bool  # horizontal flips are label-preserving (never for digits)
    preset: str  # the architecture string used when --arch is not given
    folds: int = 0  # predefined labeled folds (--fold 0..folds-1); the loader returns them in ImageSplits.folds
    class_names: tuple[str, ...] = ()  # what --predict writes; class indices where empty
    # For a dataset whose shape, classes and statistics come from its files (the folder dataset):
    # the data settings -> the DatasetInfo of those files.
    describe: Callable[[dict], "DatasetInfo"] | None = None

    @property
    def from_files(self) -> bool:
        """Its shape, classes and statistics are read from the user's files, so a run keeps them with its model."""
        return self.describe is not None
