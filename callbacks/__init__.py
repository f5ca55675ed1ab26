"""Pictures from the validation pass: reconstructions with and without the where, and switch maps."""

from .reconstructions import ReconstructionLogger
from .switch_maps import SwitchMapLogger

__all__ = ["ReconstructionLogger", "SwitchMapLogger"]
