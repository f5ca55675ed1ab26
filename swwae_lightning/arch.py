"""Architecture strings: one line writes any SWWAE from the literature.

Grammar (tokens joined by '-', case-insensitive):

    NCk    convolution, N maps, k x k kernel, stride 1, 'same' padding   e.g. 32C5
    MPk    k x k non-overlapping what/where pooling                      e.g. MP2
    FCn    hidden fully connected layer of n units in the classifier     e.g. FC128
    BN     batch norm after every hidden convolution (encoder and decoder)
    Dp     dropout with probability p before every classifier layer     e.g. D0.5

The paper's own notation is accepted too: ``(N)Kc`` for a convolution and ``Kp``
for a pooling, so ``(16)5c-(32)3c-2p`` == ``16C5-32C3-MP2``. Convolutions and
poolings come first, FC layers last; every pooling closes one what-where stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GRAMMAR = (
    "grammar: tokens joined by '-': NCk (conv, N maps, k x k), MPk (k x k pooling), "
    "FCn (hidden FC layer), BN (batch norm), Dp (dropout p); paper form (N)Kc and Kp also "
    "accepted; e.g. '32C5-MP2-64C3-MP2-FC128-BN-D0.5'"
)


@dataclass(frozen=True)
class Conv:
    channels: int
    kernel: int


@dataclass(frozen=True)
class Pool:
    size: int


@dataclass(frozen=True)
class Linear:
    features: int


@dataclass(frozen=True)
class BatchNorm:
    pass


@dataclass(frozen=True)
class Dropout:
    p: float


LayerSpec = Conv | Pool | Linear | BatchNorm | Dropout

_PATTERNS = [
    (re.compile(r"(\d+)C(\d+)"), lambda m: Conv(int(m[1]), int(m[2]))),
    (re.compile(r"\((\d+)\)(\d+)C"), lambda m: Conv(int(m[1]), int(m[2]))),
    (re.compile(r"MP(\d+)"), lambda m: Pool(int(m[1]))),
    (re.compile(r"(\d+)P"), lambda m: Pool(int(m[1]))),
    (re.compile(r"FC(\d+)"), lambda m: Linear(int(m[1]))),
    (re.compile(r"BN"), lambda m: BatchNorm()),
    (re.compile(r"D(\d*\.?\d+)"), lambda m: Dropout(float(m[1]))),
]


def _parse_token(token: str, arch: str) -> LayerSpec:
    for pattern, build in _PATTERNS:
        match = pattern.fullmatch(token.strip().upper())
        if match:
            spec = build(match)
            _check_values(spec, token, arch)
            return spec
    raise ValueError(f"bad token {token!r} in architecture {arch!r}; {GRAMMAR}")


def _check_values(spec: LayerSpec, token: str, arch: str) -> None:
    bad = (
        (isinstance(spec, Conv) and (spec.channels < 1 or spec.kernel < 1))
        or (isinstance(spec, Pool) and spec.size < 2)
        or (isinstance(spec, Linear) and spec.features < 1)
        or (isinstance(spec, Dropout) and not 0 <= spec.p < 1)
    )
    if bad:
        raise ValueError(
            f"bad value in token {token!r} of architecture {arch!r}: maps, kernels and units "
            f"must be >= 1, pool sizes >= 2, dropout in [0, 1); {GRAMMAR}"
        )


def parse_arch(arch: str) -> list[LayerSpec]:
    """Parse an architecture string into layer specs, checking the order of the layers."""
    if not isinstance(arch, str) or not arch.strip():
        raise ValueError(f"empty architecture {arch!r}; {GRAMMAR}")
    specs = [_parse_token(token, arch) for token in arch.split("-")]
    seen_linear = False
    previous = None
    for spec in specs:
        if isinstance(spec, (Conv, Pool)) and seen_linear:
            raise ValueError(
                f"architecture {arch!r}: {spec} comes after an FC layer; convolutions and poolings come first"
            )
        if isinstance(spec, Pool) and not isinstance(previous, Conv):
            raise ValueError(f"architecture {arch!r}: pooling MP{spec.size} must follow a convolution")
        seen_linear = seen_linear or isinstance(spec, Linear)
        if isinstance(spec, (Conv, Pool, Linear)):
            previous = spec
    if not any(isinstance(s, Conv) for s in specs):
        raise ValueError(f"architecture {arch!r} has no convolution; {GRAMMAR}")
    if sum(isinstance(s, BatchNorm) for s in specs) > 1 or sum(isinstance(s, Dropout) for s in specs) > 1:
        raise ValueError(f"architecture {arch!r}: BN and Dp may each appear once (they apply to every layer)")
    return specs


def stages(specs: list[LayerSpec]) -> list[tuple[list[Conv], Pool | None]]:
    """Group the convolutions into what-where stages, each closed by its pooling.

    Convolutions after the last pooling form a final stage without pooling.
    """
    groups: list[tuple[list[Conv], Pool | None]] = []
    convs: list[Conv] = []
    for spec in specs:
        if isinstance(spec, Conv):
            convs.append(spec)
        elif isinstance(spec, Pool):
            groups.append((convs, spec))
            convs = []
    if convs:
        groups.append((convs, None))
    return groups


def check_input_size(specs: list[LayerSpec], height: int, width: int) -> list[tuple[int, int]]:
    """Spatial size entering each stage; raises if a pooling does not tile its input."""
    sizes = []
    for index, (_, pool) in enumerate(stages(specs), start=1):
        sizes.append((height, width))
        if pool is None:
            continue
        if height % pool.size or width % pool.size:
            raise ValueError(
                f"stage {index} pooling MP{pool.size} gets a {height}x{width} map, which {pool.size}x{pool.size} "
                f"windows do not tile; use an input size or pool sizes whose product divides it"
            )
        height, width = height // pool.size, width // pool.size
    sizes.append((height, width))
    return sizes
