"""The class-balance term tried in this round, as a plugin (--plugins class_balance.py --lambda-balance 1):
KL(mean prediction || uniform) in nats, log K - H(mean_b p_b), over the student's class probabilities on
the unlabeled (weak) view; 0 when the batch uses every class equally, log K when every image goes to one."""

import math

import torch
import torch.nn.functional as F

from swwae_lightning import TERMS, LossTerm, Setting, settings
from swwae_lightning.objectives.base import UNLABELED


@TERMS.register
class ClassBalance(LossTerm):
    name = "balance"
    weight = Setting("lambda_balance", 0.0, "weight", "objectives", type=float, check=settings.at_least(0))
    needs = frozenset({UNLABELED})
    logits_for = ("unlabeled",)

    def __call__(self, step):
        log_p = F.log_softmax(step.logits("unlabeled").float(), dim=1)
        log_mean = torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])
        return math.log(log_p.shape[1]) + (log_mean.exp() * log_mean).sum()
