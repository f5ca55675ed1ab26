"""The strong-view consistency term tried in this round, as the plugin it ran as (--plugins strong_mt.py):
the student's class probabilities on the strong view against the EMA teacher's on the weak view."""

import torch.nn.functional as F

from swwae_lightning import TERMS, LossTerm, Setting, settings
from swwae_lightning.objectives.base import TEACHER, UNLABELED


@TERMS.register
class StrongConsistency(LossTerm):
    name = "strongmt"
    weight = Setting("lambda_strongmt", 0.0, "weight", "objectives", type=float, check=settings.at_least(0))
    needs = frozenset({UNLABELED, TEACHER, "strong"})
    logits_for = ("strong",)

    def __call__(self, step):
        student = F.softmax(step.logits("strong").float(), dim=1)
        teacher = F.softmax(step.teacher_logits("unlabeled").float(), dim=1)
        return (student - teacher).pow(2).sum(dim=1).mean()
