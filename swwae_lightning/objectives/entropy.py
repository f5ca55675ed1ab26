"""The entropies of the student's predictions on unlabeled images: each one's, to be made small, and
the batch's mean prediction's, to be kept large.

Entropy minimization: a decision boundary through a dense region of unlabeled images leaves them
with spread-out predictions; penalizing the entropy of each prediction pushes the boundary into the
gaps between clusters (Grandvalet and Bengio's low-density assumption). On its own it can lock in
early mistakes, so it is meant beside a term that makes predictions smooth first, virtual
adversarial training above all (the pairing the VAT authors report as their best).

Class balance: confident predictions say nothing about which class, so a cluster the few labels
leave ambiguous can be absorbed by its neighbour. Penalizing the distance of the batch's mean
prediction from uniform keeps every class in use; with entropy minimization at the same weight the
two make the mutual information between image and prediction (regularized information
maximization, Krause, Perona and Gomes; IMSAT, Hu et al., pairs it with VAT), for datasets whose
classes are about equally frequent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import settings as S
from .base import TERMS, UNLABELED, LossTerm, StepContext


class _OnUnlabeledPredictions(LossTerm):
    """A term of the student's class probabilities on the unlabeled (weak) view, nothing else."""

    needs = frozenset({UNLABELED})
    logits_for = ("unlabeled",)

    @staticmethod
    def log_probabilities(step: StepContext) -> Tensor:
        return F.log_softmax(step.logits("unlabeled").float(), dim=1)


@TERMS.register
class EntropyMinimization(_OnUnlabeledPredictions):
    """The Shannon entropy (in nats) of each prediction, averaged over rows; gradients flow through the whole
    distribution."""

    name = "entmin"
    weight = S.Setting(
        "lambda_entmin",
        0.0,
        "weight of the entropy-minimization term (0: off)",
        "objectives",
        type=float,
        check=S.at_least(0),
    )

    def __call__(self, step: StepContext) -> Tensor:
        log_p = self.log_probabilities(step)
        return -(log_p.exp() * log_p).sum(dim=1).mean()


@TERMS.register
class ClassBalance(_OnUnlabeledPredictions):
    """KL(mean prediction || uniform) in nats, ``log K - H(mean_b p_b)``: 0 when the batch uses the classes
    equally, ``log K`` when every image goes to one class."""

    name = "balance"
    weight = S.Setting(
        "lambda_balance",
        0.0,
        "weight of the class-balance term: the unlabeled batch's mean prediction held near uniform (0: off)",
        "objectives",
        type=float,
        check=S.at_least(0),
    )

    def __call__(self, step: StepContext) -> Tensor:
        log_p = self.log_probabilities(step)
        log_mean = torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])
        return math.log(log_p.shape[1]) + (log_mean.exp() * log_mean).sum()
