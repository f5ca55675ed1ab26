"""The data layer, on the core: datasets by name, the labeled/unlabeled split and its batches.

A dataset is added with ``DATASETS.register(DatasetInfo(...))``; its loader returns ``ImageSplits``.
"""

from .datasets import DATASETS, DatasetInfo
from .semi_supervised import SemiSupervisedDataModule
from .sources import ImageSplits

__all__ = ["DATASETS", "DatasetInfo", "ImageSplits", "SemiSupervisedDataModule"]
