"""The data layer, on the core: datasets by name, the labeled/unlabeled split and its batches.

A dataset is added with ``register_dataset(DatasetInfo(...))``; its loader returns ``ImageSplits``.
"""

from .registry import DATASETS, DatasetInfo, register_dataset
from .semi_supervised import SemiSupervisedDataModule
from .sources import ImageSplits

__all__ = ["DATASETS", "DatasetInfo", "register_dataset", "ImageSplits", "SemiSupervisedDataModule"]
