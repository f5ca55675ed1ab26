"""Pictures from the validation pass: reconstructions with and without the where, switch maps, and an overview."""

from .overview import OverviewLogger
from .reconstructions import ReconstructionLogger
from .switch_maps import SwitchMapLogger

__all__ = ["OverviewLogger", "ReconstructionLogger", "SwitchMapLogger"]
