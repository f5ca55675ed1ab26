"""FixMatch: a confident prediction on the weak view is the label of the strong view of the same image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import settings as S
from .base import TERMS, UNLABELED, LossTerm, StepContext


def confident_pseudo_labels(logits: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(pseudo-labels, mask): the argmax class and whether its probability reaches ``threshold``."""
    confidence, labels = F.softmax(logits.detach().float(), dim=1).max(dim=1)
    return labels, (confidence >= threshold).float()


@TERMS.register
class FixMatch(LossTerm):
    """Cross-entropy of the strong view's logits against the weak view's confident pseudo-labels.

    Averaged over the whole unlabeled batch (masked rows count as zero), as in FixMatch; the
    share of rows that pass the threshold is logged as ``train/fixmatch_mask``.
    """

    name = "fixmatch"
    weight = S.Setting(
        "lambda_fixmatch", 0.0, "weight of the FixMatch term (0: off)", "objectives", type=float, check=S.at_least(0)
    )
    settings = (
        S.Setting(
            "fixmatch_threshold",
            0.95,
            "FixMatch confidence threshold for a pseudo-label, in (0, 1)",
            "objectives",
            type=float,
            check=S.within(0, 1),
        ),
    )
    needs = frozenset({UNLABELED, "strong"})
    logits_for = ("unlabeled", "strong")
    validation_metrics = ("pseudo_share", "pseudo_acc")  # logged as val/fixmatch_<name>

    def __call__(self, step: StepContext) -> Tensor:
        pseudo, mask = confident_pseudo_labels(step.logits("unlabeled"), self.options["fixmatch_threshold"])
        step.metrics["fixmatch_mask"] = mask.mean()
        return (F.cross_entropy(step.logits("strong").float(), pseudo, reduction="none") * mask).mean()

    def validation_counts(self, logits: Tensor, labels: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """What the pseudo-labels would be on labeled data: (value, weight) pairs for weighted means."""
        pseudo, mask = confident_pseudo_labels(logits, self.options["fixmatch_threshold"])
        correct = (pseudo == labels).float()
        kept = mask.sum()
        accuracy = (correct * mask).sum() / kept.clamp(min=1)
        return {"pseudo_share": (mask.mean(), torch.tensor(float(len(labels)))), "pseudo_acc": (accuracy, kept)}
