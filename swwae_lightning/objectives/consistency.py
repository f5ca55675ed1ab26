"""Mean teacher (and the Pi-model): the student's prediction on one view agrees with the teacher's on another.

The teacher is an exponential moving average of the student's weights (``ema_decay``), kept
by the LightningModule with PyTorch's ``AveragedModel`` (``module.EMATeacher``); with ``ema_decay = 0`` it is the
current student, which makes this the Pi-model with a stop-gradient target.

Early on both networks predict nearly uniform classes, and a large weight from the first step
pulls the student onto that uniform answer for good; ``consistency_warmup`` raises the weight
linearly from 0 over the first share of training, as mean-teacher implementations do.

The average of the weights is usually the better classifier of the two; ``eval_teacher`` makes
validation, the choice of the best checkpoint and the test use it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .. import settings as S
from .base import TEACHER, TERMS, UNLABELED, LossTerm, StepContext


@TERMS.register
class Consistency(LossTerm):
    """Squared distance between the student's class probabilities on the unlabeled (weak) view and the
    teacher's on a second weak view of the same images, summed over classes, averaged over rows."""

    name = "consistency"
    weight = S.Setting(
        "lambda_consistency",
        0.0,
        "weight of the mean-teacher consistency term (0: off)",
        "objectives",
        type=float,
        check=S.at_least(0),
    )
    settings = (
        S.Setting(
            "ema_decay",
            0.99,
            "mean teacher's EMA decay, in [0, 1); 0: the teacher is the current student (Pi-model)",
            "objectives",
            type=float,
            check=S.within(0, 1, closed_low=True),
        ),
        S.Setting(
            "consistency_warmup",
            0.0,
            "share of training, in [0, 1], over which the consistency weight "
            "rises linearly from 0 (0: the full weight from the first step)",
            "objectives",
            type=float,
            check=S.within(0, 1, closed_low=True, closed_high=True),
        ),
        S.Setting(
            "eval_teacher",
            False,
            "validate, pick the best checkpoint and test with the teacher's (EMA) weights instead of the student's",
            "objectives",
            flag="switch",
        ),
    )
    needs = frozenset({UNLABELED, TEACHER, "second"})
    logits_for = ("unlabeled",)

    def __call__(self, step: StepContext) -> Tensor:
        student = F.softmax(step.logits("unlabeled").float(), dim=1)
        teacher = F.softmax(step.teacher_logits("second").float(), dim=1)
        return (student - teacher).pow(2).sum(dim=1).mean()

    def weight_scale(self, progress: float) -> float:
        warmup = self.options["consistency_warmup"]
        return min(1.0, progress / warmup) if warmup > 0 else 1.0
