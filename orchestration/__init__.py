"""The orchestration layer, on the core, the data and the pictures: it builds and fits runs
(``training``), reads the command line (``cli``), keeps checkpoints, run files and trackers,
loads plugins, and turns committed runs into reports.
"""

from .cli import main, resolve_config
from .trainer import build_trainer
from .training import build_datamodule, build_module, fit, prepare

__all__ = ["build_datamodule", "build_module", "build_trainer", "prepare", "fit", "resolve_config", "main"]
