"""Raising a library logger's level for a while: its lines are true but give the user nothing to act on."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def raised_level(name: str, level: int) -> Iterator[None]:
    """Only records at ``level`` or above from logger ``name`` inside the block; its own level after."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
