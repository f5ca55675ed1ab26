"""The data layer, on the core: datasets by name, the labeled/unlabeled split and its batches.

A dataset is added with ``DATASETS.register(DatasetInfo(...))``; its loader returns ``ImageSplits``.
"""

from . import data_settings  # noqa: F401  (declares the data settings, read from the DataModule's signature)
from .datasets import DATASETS, DatasetInfo
from .semi_supervised import SemiSupervisedDataModule
from .sources import ImageSplits

__all__ = ["DATASETS", "DatasetInfo", "ImageSplits", "SemiSupervisedDataModule"]
