"""Entropy minimization: the student's prediction on an unlabeled image should be confident.

A decision boundary through a dense region of unlabeled images leaves them with spread-out
predictions; penalizing the entropy of those predictions pushes the boundary into the gaps
between clusters (Grandvalet and Bengio's low-density assumption). On its own it can lock in
early mistakes, so it is meant beside a term that makes predictions smooth first, virtual
adversarial training above all (the pairing the VAT authors report as their best).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .. import settings as S
from .base import TERMS, UNLABELED, LossTerm, StepContext


@TERMS.register
class EntropyMinimization(LossTerm):
    """The Shannon entropy (in nats) of the student's class probabilities on the unlabeled (weak) view,
    averaged over rows; gradients flow through the whole distribution."""

    name = "entmin"
    needs = frozenset({UNLABELED})
    logits_for = ("unlabeled",)
    weight = S.Setting(
        "lambda_entmin",
        0.0,
        "weight of the entropy-minimization term (0: off)",
        "objectives",
        type=float,
        check=S.at_least(0),
    )

    def __call__(self, step: StepContext) -> Tensor:
        log_p = F.log_softmax(step.logits("unlabeled").float(), dim=1)
        return -(log_p.exp() * log_p).sum(dim=1).mean()
