"""The soft what/where's fused CPU kernel (``soft_kernel.cpp``), built once per machine on first use.

The tensor implementation in ``soft.py`` makes about a dozen full-resolution passes per
direction, which made soft pooling cost twice what hard pooling costs on the CPU; the
kernel makes one pass per direction. PyTorch's extension loader compiles it with the
machine's C++ compiler and ninja into its extension cache (``TORCH_EXTENSIONS_DIR``), so
the first soft-pooling call on a machine waits for the build (about a minute) and every
later process loads the cached library. Without a compiler the tensor implementation
runs, with the same results.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from ..log_levels import raised_level

SOURCE = Path(__file__).with_name("soft_kernel.cpp")
DTYPES = (torch.float32, torch.float64)


def _toolchain_problem(cpp_extension) -> str | None:
    """What this machine lacks to build the kernel (ninja, a C++ compiler), or None."""
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as error:
        return (str(error).strip().splitlines() or ["no ninja"])[0]
    compiler = os.environ.get("CXX", "c++")
    return None if shutil.which(compiler) else f"no C++ compiler ({compiler!r} is not on PATH)"


@functools.cache
def kernel() -> ModuleType | None:
    """The compiled module, or None where this machine cannot build it (the reason is logged once).

    Only a missing toolchain or an unwritable extension cache falls back to the tensor path: a
    compile error in ``soft_kernel.cpp`` is a bug and raises, so the tests fail instead of skipping it.
    """
    # cpp_extension warns at import that no CUDA runtime was found: true for a CPU kernel, nothing to act on.
    with raised_level("torch.utils.cpp_extension", logging.ERROR):
        from torch.utils import cpp_extension

        problem = _toolchain_problem(cpp_extension)
        if problem is None:
            try:
                return cpp_extension.load(name="swwae_soft_pool", sources=[str(SOURCE)], extra_cflags=["-O3"])
            except OSError as error:  # a read-only or full extension cache
                problem = f"{type(error).__name__}: {error.strerror or error}"
    rank_zero_info(f"soft pooling: the CPU kernel could not be built ({problem}); using tensor operations")
    return None


def usable(t: torch.Tensor) -> ModuleType | None:
    """The kernel when it applies to this map (a float or double CPU tensor), else None."""
    if t.device.type != "cpu" or t.dtype not in DTYPES:
        return None
    return kernel()
