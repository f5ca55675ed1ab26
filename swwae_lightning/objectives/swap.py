"""The what-where swap: a term only a what-where network can have.

The paper's claim is that the *what* is invariant to small shifts and the *where* carries the
position. If so, the top code of one view decoded with the wheres of a second, differently
shifted view of the same image must reconstruct that second view. The term is the MSE of
that swapped reconstruction; it trains the top code to be shift-invariant and the wheres
to move with the image.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .. import settings as S
from .base import DECODER, TERMS, UNLABELED, LossTerm, StepContext


@TERMS.register
class WhatWhereSwap(LossTerm):
    """MSE between the second view and the decoding of the first view's top code with the second view's wheres."""

    name = "swap"
    weight = S.Setting(
        "lambda_swap", 0.0, "weight of the what-where swap term (0: off)", "objectives", type=float, check=S.at_least(0)
    )
    needs = frozenset({DECODER, UNLABELED, "second"})

    def __call__(self, step: StepContext) -> Tensor:
        second = step.views["second"]
        _, wheres = step.net.encode_states(second)
        top_first = step.output.decoder_states[-1][step.num_labeled :]
        swapped = step.net.decode(top_first, wheres)[-1]
        return F.mse_loss(swapped.float(), second.float())
