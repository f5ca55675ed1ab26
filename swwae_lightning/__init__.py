"""Stacked What-Where Auto-encoders as a PyTorch Lightning framework: the public API.

    from swwae_lightning import SWWAEModule, SemiSupervisedDataModule, build_trainer, ...

Extension points: ``POOLINGS`` (what/where poolings), ``TERMS`` (loss terms),
``register_dataset`` (datasets) and ``Setting`` / ``declare`` (their hyper-parameters).
Names are imported on first use, so importing one submodule does not import them all.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "settings": ("swwae_lightning.settings", None),
    "Setting": ("swwae_lightning.settings", "Setting"),
    "declare": ("swwae_lightning.settings", "declare"),
    "parse_arch": ("swwae_lightning.arch", "parse_arch"),
    "StackedWhatWhere": ("swwae_lightning.network", "StackedWhatWhere"),
    "SWWAEOutput": ("swwae_lightning.network", "SWWAEOutput"),
    "POOLINGS": ("swwae_lightning.pooling", "POOLINGS"),
    "Pooling": ("swwae_lightning.pooling", "Pooling"),
    "make_pooling": ("swwae_lightning.pooling", "make_pooling"),
    "TERMS": ("swwae_lightning.objectives", "TERMS"),
    "LossTerm": ("swwae_lightning.objectives", "LossTerm"),
    "LossParts": ("swwae_lightning.objectives", "LossParts"),
    "Objective": ("swwae_lightning.objectives", "Objective"),
    "StepContext": ("swwae_lightning.objectives", "StepContext"),
    "is_baseline": ("swwae_lightning.objectives", "is_baseline"),
    "SWWAEModule": ("swwae_lightning.module", "SWWAEModule"),
    "DATASETS": ("datamodules.registry", "DATASETS"),
    "DatasetInfo": ("datamodules.registry", "DatasetInfo"),
    "register_dataset": ("datamodules.registry", "register_dataset"),
    "ImageSplits": ("datamodules.sources", "ImageSplits"),
    "SemiSupervisedDataModule": ("datamodules.semi_supervised", "SemiSupervisedDataModule"),
    "build_datamodule": ("swwae_lightning.experiment", "build_datamodule"),
    "build_module": ("swwae_lightning.experiment", "build_module"),
    "build_trainer": ("swwae_lightning.experiment", "build_trainer"),
    "prepare": ("swwae_lightning.experiment", "prepare"),
    "fit": ("swwae_lightning.experiment", "fit"),
    "resolve_config": ("swwae_lightning.cli", "resolve_config"),
    "main": ("swwae_lightning.cli", "main"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'swwae_lightning' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)


def __dir__() -> list[str]:
    return sorted(__all__)
