"""The stacked what-where network: plain PyTorch, usable and testable without Lightning.

State naming (SWWAE_SPEC.md): encoder stage l maps h_{l-1} -> z_l (convs) ->
(what_l, where_l) = pool(z_l), h_l = what_l. Decoder stage l maps r_l -> unpool
with where_l -> convs -> r_{l-1}. ``encoder_states[i]`` is h_{i+1} and
``decoder_states[i]`` is r_{i+1}, its reconstruction, so the two lists pair up
index by index; the intermediate-layer loss uses every pair but the top one
(r_L is h_L itself: the decoder starts from the top what).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import pooling as P
from .arch import BatchNorm, Conv, Dropout, Linear, LayerSpec, check_input_size, parse_arch, stages


@dataclass
class SWWAEOutput:
    """Everything one forward pass produces; the losses and the pictures read it."""

    logits: Tensor
    reconstruction: Tensor
    encoder_states: list[Tensor]
    decoder_states: list[Tensor]
    whats: list[Tensor]
    wheres: list[Tensor]


class ImageOutputConv2d(nn.Conv2d):
    """The decoder's last convolution, to the image's few channels: on CPU it runs channels-last.

    oneDNN's NCHW kernels are slow with so few output channels: 16 -> 1 channels, 5x5,
    forward + backward took 156 ms NCHW vs 52 ms channels-last at batch 256 on this
    project's CPU (16 -> 3: 212 vs 155 ms). Only the layout changes: the values, the
    weights' own layout and the checkpoints stay the same. (Running every decoder conv
    channels-last also slowed the soft-pooling path, whose window copies want NCHW; most
    of the gain is in this one layer.) Other devices run the plain convolution.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        layout = torch.channels_last
        return self._conv_forward(x.contiguous(memory_format=layout), self.weight.contiguous(memory_format=layout), self.bias)


def _conv_block(cin: int, cout: int, kernel: int, batch_norm: bool, relu: bool, image_output: bool = False) -> nn.Sequential:
    conv = ImageOutputConv2d if image_output else nn.Conv2d
    layers: list[nn.Module] = [conv(cin, cout, kernel, padding="same", bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class WhatWhereStage(nn.Module):
    """One encoder stage (convs, then what/where pooling) and its mirrored decoder stage."""

    def __init__(self, in_channels: int, convs: list[Conv], pool_size: int | None, batch_norm: bool, is_bottom: bool):
        super().__init__()
        self.pool_size = pool_size
        widths = [in_channels] + [c.channels for c in convs]
        self.encoder = nn.Sequential(
            *[_conv_block(widths[i], widths[i + 1], c.kernel, batch_norm, relu=True) for i, c in enumerate(convs)]
        )
        # Mirror: the decoder walks the widths back down; the very last layer of the
        # whole decoder (bottom stage, last conv) outputs the input image: no BN, no ReLU.
        blocks = []
        for i in reversed(range(len(convs))):
            last = is_bottom and i == 0
            blocks.append(_conv_block(widths[i + 1], widths[i], convs[i].kernel, batch_norm and not last, relu=not last,
                                      image_output=last))
        self.decoder = nn.Sequential(*blocks)
        self.out_channels = widths[-1]

    def encode(self, h: Tensor, pooling: str, beta: float) -> tuple[Tensor, Tensor | None]:
        z = self.encoder(h)
        if self.pool_size is None:
            return z, None
        return P.pool(z, self.pool_size, pooling, beta)

    def decode(self, r: Tensor, where: Tensor | None, unpooling: str) -> Tensor:
        if self.pool_size is not None:
            r = P.unpool(r, where, self.pool_size, unpooling)
        return self.decoder(r)


class StackedWhatWhere(nn.Module):
    """Convnet encoder + classifier head + deconvnet decoder unpooling with the switches.

    ``pooling`` ("hard"/"soft"), ``beta`` and ``unpooling`` ("where"/"copy") are plain
    attributes, so a trained network can be switched at run time (e.g. the
    where ablation reconstructs the same weights with ``unpooling="copy"``).
    """

    def __init__(
        self,
        arch: str | list[LayerSpec],
        in_channels: int,
        image_size: int | tuple[int, int],
        num_classes: int,
        pooling: str = "hard",
        beta: float = 100.0,
        unpooling: str = "where",
    ):
        super().__init__()
        specs = parse_arch(arch) if isinstance(arch, str) else list(arch)
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        sizes = check_input_size(specs, height, width)
        self.arch = arch if isinstance(arch, str) else "-".join(map(str, specs))
        self.pooling, self.beta, self.unpooling = pooling, beta, unpooling
        self.validate_modes()
        batch_norm = any(isinstance(s, BatchNorm) for s in specs)
        dropout = next((s.p for s in specs if isinstance(s, Dropout)), 0.0)

        self.stages = nn.ModuleList()
        channels = in_channels
        for index, (convs, pool) in enumerate(stages(specs)):
            stage = WhatWhereStage(channels, convs, pool.size if pool else None, batch_norm, is_bottom=index == 0)
            self.stages.append(stage)
            channels = stage.out_channels

        top_h, top_w = sizes[-1]
        features = channels * top_h * top_w
        head: list[nn.Module] = [nn.Flatten()]
        for spec in specs:
            if isinstance(spec, Linear):
                head += [nn.Dropout(dropout), nn.Linear(features, spec.features), nn.ReLU(inplace=True)]
                features = spec.features
        head += [nn.Dropout(dropout), nn.Linear(features, num_classes)]
        self.head = nn.Sequential(*head)
        self.input_shape = (in_channels, height, width)
        self.num_classes = num_classes

    def validate_modes(self) -> None:
        """Check the run-time switches, so a typo fails here and not deep in a forward."""
        if self.pooling not in P.POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not one of {P.POOLINGS}")
        if self.unpooling not in P.UNPOOLINGS:
            raise ValueError(f"unpooling={self.unpooling!r} is not one of {P.UNPOOLINGS}")
        if self.pooling == "soft" and not self.beta > 0:
            raise ValueError(f"beta={self.beta} must be > 0 for soft pooling (the paper uses 100)")

    def _encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"input of shape {tuple(x.shape[1:])} does not match the network's {self.input_shape}")
        states, wheres = [], []
        h = x
        for stage in self.stages:
            h, where = stage.encode(h, self.pooling, self.beta)
            states.append(h)
            wheres.append(where)
        return states, wheres

    def encode(self, x: Tensor) -> Tensor:
        """Logits from the encoder and head only: inference without the decoder's cost."""
        states, _ = self._encode(x)
        return self.head(states[-1])

    def forward(self, x: Tensor) -> SWWAEOutput:
        states, wheres = self._encode(x)
        logits = self.head(states[-1])
        decoded = [states[-1]]
        r = states[-1]
        for stage, where in zip(reversed(self.stages), reversed(wheres)):
            r = stage.decode(r, where, self.unpooling)
            decoded.append(r)
        reconstruction = decoded.pop()
        decoder_states = decoded[::-1]  # decoder_states[i] reconstructs states[i]
        whats = [s for s, w in zip(states, wheres) if w is not None]
        return SWWAEOutput(logits, reconstruction, states, decoder_states, whats, [w for w in wheres if w is not None])

    def pool_sizes(self) -> list[int]:
        return [s.pool_size for s in self.stages if s.pool_size is not None]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters a linear probe freezes: every encoder conv (not the head)."""
        return [p for s in self.stages for p in s.encoder.parameters()]
