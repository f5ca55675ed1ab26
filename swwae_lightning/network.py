"""The stacked what-where network: plain PyTorch, usable and testable without Lightning.

State naming (docs/model.md, "Notation and states"): encoder stage l maps h_{l-1} -> z_l
(convs) -> (what_l, where_l) = pool(z_l), h_l = what_l. Decoder stage l maps r_l -> unpool
with where_l -> convs -> r_{l-1}. ``encoder_states[i]`` is h_{i+1} and ``decoder_states[i]``
is r_{i+1}, its reconstruction, so the two lists pair up index by index. The decoder's top
r_L is either h_L itself (``decoder_top="what"``) or decoded from the class layer through
layers mirroring the classifier (``decoder_top="label"``: the paper's label-topped decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import pooling as P
from . import settings as S
from .arch import BatchNorm, Conv, Dropout, LayerSpec, Linear, check_input_size, parse_arch, stages


@dataclass
class SWWAEOutput:
    """Everything one forward pass produces; the losses and the pictures read it."""

    logits: Tensor
    reconstruction: Tensor
    encoder_states: list[Tensor]
    decoder_states: list[Tensor]
    whats: list[Tensor]
    wheres: list[Tensor]
    top_is_copy: bool = True  # r_L is h_L itself, so that pair carries no loss
    open_set_logits: Tensor | None = None  # the one-vs-all heads' (N, 2, classes), where the network has them

    def reconstruction_pairs(self) -> list[tuple[Tensor, Tensor]]:
        """(h_l, r_l) pairs the intermediate loss compares: all but a copied top."""
        pairs = list(zip(self.encoder_states, self.decoder_states))
        return pairs[:-1] if self.top_is_copy else pairs


DECODER_TOPS = ("what", "label")


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
        return self._conv_forward(
            x.contiguous(memory_format=layout), self.weight.contiguous(memory_format=layout), self.bias
        )


def _conv_block(
    cin: int, cout: int, kernel: int, batch_norm: bool, relu: bool, image_output: bool = False
) -> nn.Sequential:
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
            blocks.append(
                _conv_block(
                    widths[i + 1], widths[i], convs[i].kernel, batch_norm and not last, relu=not last, image_output=last
                )
            )
        self.decoder = nn.Sequential(*blocks)
        self.out_channels = widths[-1]

    def encode(self, h: Tensor, pooling: P.Pooling) -> tuple[Tensor, Tensor | None]:
        z = self.encoder(h)
        if self.pool_size is None:
            return z, None
        return pooling.pool(z, self.pool_size)

    def decode(self, r: Tensor, where: Tensor | None, pooling: P.Pooling, unpool: str) -> Tensor:
        if self.pool_size is not None:
            r = P.unpool(pooling, r, where, self.pool_size, unpool)
        return self.decoder(r)


class StackedWhatWhere(nn.Module):
    """Convnet encoder + classifier head + deconvnet decoder unpooling with the switches.

    ``pooling``: a registered variant's name (with its default options) or a ``Pooling`` built
    with options of its own (``SoftPooling(beta=20)``). ``unpool``: ``"where"`` unpools with
    the switches, ``"copy"`` without them (the paper's ablation). ``decoder_top``: the decoder
    starts from the top what, or from the class layer (``"label"``). ``pooling`` and ``unpool``
    are plain attributes, so a trained network can be switched at run time (the where ablation
    reconstructs the same weights with ``unpool = "copy"``). ``open_set_heads`` adds one-vs-all
    heads beside the classifier (on its input features): for each class, is the image of it or not.
    """

    def __init__(
        self,
        arch: str | list[LayerSpec],
        in_channels: int,
        image_size: int | tuple[int, int],
        num_classes: int,
        *,
        pooling: str | P.Pooling = "hard",
        unpool: str = "where",
        decoder_top: str = "what",
        open_set_heads: bool = False,
    ):
        super().__init__()
        if isinstance(pooling, str):
            pooling = P.make_pooling(S.check_all({"pooling": pooling}, style="python")["pooling"])
        decoder_top = S.check_all({"decoder_top": decoder_top}, style="python")["decoder_top"]
        specs = parse_arch(arch) if isinstance(arch, str) else list(arch)
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        sizes = check_input_size(specs, height, width)
        self.arch = arch if isinstance(arch, str) else "-".join(map(str, specs))
        self.pooling = pooling
        self.unpool = unpool
        self.decoder_top = decoder_top
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
        self.top_shape = (channels, top_h, top_w)
        head: list[nn.Module] = [nn.Flatten()]
        widths = [features]
        for spec in specs:
            if isinstance(spec, Linear):
                head += [nn.Dropout(dropout), nn.Linear(widths[-1], spec.features), nn.ReLU(inplace=True)]
                widths.append(spec.features)
        head += [nn.Dropout(dropout), nn.Linear(widths[-1], num_classes)]
        self.head = nn.Sequential(*head)
        # index 0: "not of the class", 1: "of the class", for every class
        self.open_set = nn.Linear(widths[-1], 2 * num_classes) if open_set_heads else None
        if self.decoder_top == "label":
            # The classifier mirrored: classes -> its hidden widths in reverse -> the top what's size.
            # ReLU throughout, as the top what it reconstructs is a pooled ReLU map.
            widths = [num_classes] + widths[::-1]
            self.top_decoder = nn.Sequential(
                *[
                    m
                    for i in range(len(widths) - 1)
                    for m in (nn.Linear(widths[i], widths[i + 1]), nn.ReLU(inplace=True))
                ]
            )
        self.input_shape = (in_channels, height, width)
        self.num_classes = num_classes

    @property
    def unpool(self) -> str:
        return self._unpool

    @unpool.setter
    def unpool(self, mode: str) -> None:
        if mode not in P.UNPOOLINGS:
            raise ValueError(f"unpool={mode!r} is not one of {P.UNPOOLINGS}")
        self._unpool = mode

    def set_pooling(self, name: str, **options) -> None:
        """Switch the what/where pooling of a built (or trained) network."""
        self.pooling = P.make_pooling(name, **options)

    def encode_states(self, x: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
        """Every encoder state h_l and its where (None for a final stage without pooling)."""
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"input of shape {tuple(x.shape[1:])} does not match the network's {self.input_shape}")
        states, wheres = [], []
        h = x
        for stage in self.stages:
            h, where = stage.encode(h, self.pooling)
            states.append(h)
            wheres.append(where)
        return states, wheres

    def encode(self, x: Tensor) -> Tensor:
        """Logits from the encoder and head only: inference without the decoder's cost."""
        states, _ = self.encode_states(x)
        return self.head(states[-1])

    def classify(self, top_what: Tensor) -> tuple[Tensor, Tensor | None]:
        """The class logits of the top what, and the one-vs-all heads' (N, 2, classes) logits (None without them)."""
        if self.open_set is None:
            return self.head(top_what), None
        features = self.head[:-1](top_what)
        return self.head[-1](features), self.open_set(features).view(-1, 2, self.num_classes)

    def encode_open(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``classify`` from the images: the encoder and both heads, no decoder."""
        states, _ = self.encode_states(x)
        return self.classify(states[-1])

    def top_code(self, top_what: Tensor, logits: Tensor, labels: Tensor | None = None) -> Tensor:
        """The decoder's starting point r_L for this batch (see the module docstring).

        With ``decoder_top="label"`` the first ``len(labels)`` rows start from their one-hot
        label and the others from the classifier's softmax, through which the reconstruction's
        gradient reaches the classifier.
        """
        if self.decoder_top == "what":
            return top_what
        top = F.softmax(logits.float(), dim=1).to(logits.dtype)
        if labels is not None and labels.numel() > 0:
            # F.one_hot checks the labels' range on the host (a sync per step); a scatter does not.
            one_hot = torch.zeros_like(top[: labels.shape[0]]).scatter_(1, labels.view(-1, 1), 1.0)
            top = torch.cat([one_hot, top[labels.shape[0] :]])
        return self.top_decoder(top).view(-1, *self.top_shape)

    def decode(self, top: Tensor, wheres: list[Tensor | None]) -> list[Tensor]:
        """[r_L, r_{L-1}, ..., r_1, reconstruction]: the decoder from ``top`` with these wheres."""
        decoded = [top]
        r = top
        for stage, where in zip(reversed(self.stages), reversed(wheres)):
            r = stage.decode(r, where, self.pooling, self.unpool)
            decoded.append(r)
        return decoded

    def forward(self, x: Tensor, labels: Tensor | None = None) -> SWWAEOutput:
        """Everything; ``labels`` (of the first rows) matter only to the label-topped decoder."""
        states, wheres = self.encode_states(x)
        logits, open_set_logits = self.classify(states[-1])
        decoded = self.decode(self.top_code(states[-1], logits, labels), wheres)
        reconstruction = decoded.pop()
        decoder_states = decoded[::-1]  # decoder_states[i] reconstructs states[i]
        whats = [s for s, w in zip(states, wheres) if w is not None]
        return SWWAEOutput(
            logits,
            reconstruction,
            states,
            decoder_states,
            whats,
            [w for w in wheres if w is not None],
            top_is_copy=self.decoder_top == "what",
            open_set_logits=open_set_logits,
        )

    def pool_sizes(self) -> list[int]:
        return [s.pool_size for s in self.stages if s.pool_size is not None]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters a linear probe freezes: every encoder conv (not the head)."""
        return [p for s in self.stages for p in s.encoder.parameters()]


def network_from_settings(
    arch: str | list[LayerSpec],
    in_channels: int,
    image_size: int | tuple[int, int],
    num_classes: int,
    values: dict,
    open_set_heads: bool = False,
) -> StackedWhatWhere:
    """The network a run's what-where settings describe (flags, a config file, a checkpoint's
    hyper-parameters), its pooling built with the options of the chosen variant; ``open_set_heads``
    where the objective trains them."""
    return StackedWhatWhere(
        arch,
        in_channels,
        image_size,
        num_classes,
        pooling=P.make_pooling(values["pooling"], **values),
        unpool=values["unpool"],
        decoder_top=values["decoder_top"],
        open_set_heads=open_set_heads,
    )


S.declare(
    S.Setting(
        "pooling",
        S.default_of(StackedWhatWhere, "pooling"),
        "what/where pooling",
        "what-where",
        type=str,
        choices=P.POOLINGS.names,
    ),
    S.Setting(
        "unpool",
        S.default_of(StackedWhatWhere, "unpool"),
        "decoder unpooling: with the switches, or copy (the paper's ablation)",
        "what-where",
        type=str,
        choices=lambda: P.UNPOOLINGS,
    ),
)
S.declare(
    S.Setting(
        "decoder_top",
        S.default_of(StackedWhatWhere, "decoder_top"),
        "where the decoder starts: the top what, or the class layer (one-hot label for labeled "
        "rows, the classifier's softmax for unlabeled rows) decoded through layers mirroring the classifier",
        "what-where",
        type=str,
        choices=lambda: DECODER_TOPS,
    ),
)
