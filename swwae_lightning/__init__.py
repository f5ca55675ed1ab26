"""Stacked What-Where Auto-encoders for PyTorch Lightning: the core.

The core is the model and what it is trained with: settings, the network, poolings, loss
terms and the LightningModule. It imports nothing from the data (``datamodules``), the
pictures (``callbacks``) or the orchestration (``orchestration``), which all
build on it, so importing it here whole cannot make a cycle.

Extension points: ``POOLINGS`` (what/where poolings), ``TERMS`` (loss terms) and ``Setting`` /
``declare`` (their hyper-parameters); datasets register in ``datamodules``.
"""

from . import settings
from .arch import parse_arch
from .module import SWWAEModule
from .network import StackedWhatWhere, SWWAEOutput
from .objectives import TERMS, LossParts, LossTerm, Objective, StepContext, is_baseline
from .pooling import POOLINGS, Pooling, make_pooling
from .settings import Setting, declare

__all__ = [
    "settings",
    "Setting",
    "declare",
    "parse_arch",
    "StackedWhatWhere",
    "SWWAEOutput",
    "POOLINGS",
    "Pooling",
    "make_pooling",
    "TERMS",
    "LossTerm",
    "LossParts",
    "Objective",
    "StepContext",
    "is_baseline",
    "SWWAEModule",
]
