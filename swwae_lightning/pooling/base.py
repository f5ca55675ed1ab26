"""What a what/where pooling is: pool, unpool with the where, and the where as positions.

A variant is one class registered with ``@POOLINGS.register``; its own hyper-parameters are
``Setting``s in its ``settings`` attribute, which become flags and config keys checked only
when the variant is chosen. Nothing outside the variant looks at the where's dtype or layout.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor

from .. import settings as S
from ..registry import Registry


class Pooling:
    """Base class of the what/where poolings; ``options`` holds the values of its ``settings``."""

    name: ClassVar[str]
    settings: ClassVar[tuple[S.Setting, ...]] = ()

    def __init__(self, **options):
        own = {s.name: s.default for s in self.settings}
        unknown = sorted(set(options) - set(own))
        if unknown:
            raise ValueError(f"pooling {self.name!r} got unknown option(s) {unknown}; it takes {sorted(own)}")
        values = {**own, **options}
        self.options = {s.name: S.convert(s, values[s.name], s.name, "=") for s in self.settings}

    def pool(self, z: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (what (B, C, H/k, W/k), where in the variant's own layout)."""
        raise NotImplementedError

    def unpool(self, what: Tensor, where: Tensor, k: int) -> Tensor:
        """Put each value back where its where says: (B, C, H/k, W/k) -> (B, C, H, W)."""
        raise NotImplementedError

    def positions(self, where: Tensor, k: int) -> Tensor:
        """The (dy, dx) offset of each switch inside its window, float (B, C, H/k, W/k, 2)."""
        raise NotImplementedError

    def switch_mass(self, where: Tensor, k: int) -> Tensor:
        """Unit mass placed at every switch as unpooling places a value: float (B, C, H, W)."""
        return self.unpool(torch.ones(where.shape[:4], device=where.device), where, k)

    def describe(self) -> str:
        options = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.options.items())
        return f"{self.name}" + (f" ({options})" if options else "")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"


def _own_settings(name: str, cls: type[Pooling]) -> None:
    cls.settings = tuple(dataclasses.replace(s, group="what-where", owner=f"pooling={name}") for s in cls.settings)
    S.declare(*cls.settings)


POOLINGS: Registry[type[Pooling]] = Registry("pooling", on_register=_own_settings)
UNPOOLINGS = ("where", "copy")


def make_pooling(name: str, **settings) -> Pooling:
    """The variant ``name`` with its own options taken from ``settings`` (others are ignored)."""
    cls = POOLINGS[name]
    own = {s.name for s in cls.settings}
    return cls(**{k: v for k, v in settings.items() if k in own})
