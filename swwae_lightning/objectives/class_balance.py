"""Class balance: the unlabeled batch's predictions, taken together, should use every class.

Entropy minimization makes each prediction confident but says nothing about which class: a
cluster that the few labels leave ambiguous can be absorbed by its neighbour, and a whole class
can shrink. Penalizing the distance of the batch's mean prediction from the uniform distribution
keeps the classes in use; beside entropy minimization the two make the mutual information between
image and prediction (regularized information maximization, Krause, Perona and Gomes, and its
use with VAT in IMSAT, Hu et al.), for datasets whose classes are about equally frequent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import settings as S
from .base import TERMS, UNLABELED, LossTerm, StepContext


@TERMS.register
class ClassBalance(LossTerm):
    """KL(mean prediction || uniform) in nats, ``log K - H(mean_b p_b)``, over the student's class
    probabilities on the unlabeled (weak) view: 0 when the batch uses the classes equally, ``log K``
    when every image goes to one class."""

    name = "balance"
    needs = frozenset({UNLABELED})
    logits_for = ("unlabeled",)
    weight = S.Setting(
        "lambda_balance",
        0.0,
        "weight of the class-balance term: the unlabeled batch's mean prediction held near uniform (0: off)",
        "objectives",
        type=float,
        check=S.at_least(0),
    )

    def __call__(self, step: StepContext) -> Tensor:
        logits = step.logits("unlabeled").float()
        log_mean = torch.logsumexp(F.log_softmax(logits, dim=1), dim=0) - math.log(logits.shape[0])
        return math.log(logits.shape[1]) + (log_mean.exp() * log_mean).sum()
