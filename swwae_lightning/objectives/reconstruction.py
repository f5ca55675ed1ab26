"""SWWAE's own terms: the input reconstruction and the intermediate ones (docs/model.md, "Losses").

L_mid pairs each intermediate encoder state h_l (the pooled *what*) with the decoder state r_l
that reconstructs it; the top pair is left out when the decoder starts from h_L itself.
Gradients flow into both sides, as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import settings as S
from .base import DECODER, TERMS, LossTerm, StepContext


@TERMS.register
class InputReconstruction(LossTerm):
    """MSE between the (normalized) input and its reconstruction, over labeled and unlabeled rows."""

    name = "rec"
    weight = S.Setting(
        "lambda_rec", 1.0, "weight of the input reconstruction loss", "objectives", type=float, check=S.at_least(0)
    )
    needs = frozenset({DECODER})

    def __call__(self, step: StepContext) -> Tensor:
        return F.mse_loss(step.output.reconstruction.float(), step.inputs.float())


@TERMS.register
class IntermediateReconstruction(LossTerm):
    """Sum over the intermediate stages of the MSE between h_l and its reconstruction r_l."""

    name = "mid"
    weight = S.Setting(
        "lambda_mid",
        0.1,
        "weight of the intermediate reconstruction losses",
        "objectives",
        type=float,
        check=S.at_least(0),
    )
    needs = frozenset({DECODER})

    def __call__(self, step: StepContext) -> Tensor:
        mid = step.output.reconstruction.new_zeros((), dtype=torch.float32)
        for h, r in step.output.reconstruction_pairs():
            mid = mid + F.mse_loss(r.float(), h.float())
        return mid
