"""One-vs-all heads: for each known class, is this image of it or not, so an image of no known class can say so.

A softmax must give every image to some class; a pool holding classes nobody labeled then has its
strangers pulled into known classes by every unlabeled term, and they pull those classes back. Beside
the classifier the network carries one binary head per class (``open_set_heads``). On the labeled
rows each image's own head learns "of my class" and the most mistaken other head "not of mine" (hard
negative mining); on the unlabeled rows each head is made confident (entropy minimization) and agreeing
across two weak views of an image. An unlabeled row whose predicted class's own head says "not of it"
is kept from the other terms: they train on the rows judged known. OpenMatch (Saito, Kim and Saenko,
2021) introduced this combination. The kept rows' number is read on the host each step (the other terms'
batch takes that shape): on a GPU, the one wait for the device a training step makes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import settings as S
from .base import OPEN_SET, TERMS, UNLABELED, LossTerm, StepContext

NOT_OF, OF = 0, 1  # the two outputs of each head


def known_probability(open_set_logits: Tensor, logits: Tensor) -> Tensor:
    """The probability, from the head of the class the classifier predicts, that each image is of that class."""
    predicted = logits.argmax(dim=1)
    of_class = F.softmax(open_set_logits.float(), dim=1)[:, OF]
    return of_class.gather(1, predicted.view(-1, 1)).squeeze(1)


def labeled_loss(open_set_logits: Tensor, labels: Tensor) -> Tensor:
    """-log p(of class y) on each image's own head plus the largest -log p(not of class k) over the other
    heads, averaged over rows."""
    log_p = F.log_softmax(open_set_logits.float(), dim=1)
    own = log_p[:, OF].gather(1, labels.view(-1, 1)).squeeze(1)
    others = (-log_p[:, NOT_OF]).scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)
    return (-own + others).mean()


def head_entropy(open_set_logits: Tensor) -> Tensor:
    """Each head's binary entropy (nats), averaged over heads and rows."""
    log_p = F.log_softmax(open_set_logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def head_disagreement(first: Tensor, second: Tensor) -> Tensor:
    """Squared distance between the heads' probabilities on two views, summed over heads, averaged over rows."""
    p, q = F.softmax(first.float(), dim=1), F.softmax(second.float(), dim=1)
    return (p - q).pow(2).sum(dim=(1, 2)).mean()


@TERMS.register
class OneVsAll(LossTerm):
    """The heads' labeled loss + ``ova_entropy`` x their entropy on the unlabeled rows + ``ova_consistency`` x
    their disagreement across two weak views; it keeps from the other terms the unlabeled rows whose
    predicted class's head gives "of it" a probability under 0.5. The share kept is logged as
    ``train/unlabeled_kept``."""

    name = "ova"
    weight = S.Setting(
        "lambda_ova",
        0.0,
        "weight of the one-vs-all heads' term, which also keeps images of no known class from the other "
        "unlabeled terms (0: off)",
        "objectives",
        type=float,
        check=S.at_least(0),
    )
    settings = (
        S.Setting(
            "ova_entropy",
            0.1,
            "weight, inside the one-vs-all term, of its heads' entropy on unlabeled images",
            "objectives",
            type=float,
            check=S.at_least(0),
        ),
        S.Setting(
            "ova_consistency",
            0.5,
            "weight, inside the one-vs-all term, of its heads' disagreement across two weak views",
            "objectives",
            type=float,
            check=S.at_least(0),
        ),
    )
    needs = frozenset({UNLABELED, OPEN_SET, "second"})
    logits_for = ("unlabeled", "second")

    def __call__(self, step: StepContext) -> Tensor:
        unlabeled = step.open_set_logits("unlabeled")
        loss = unlabeled.new_zeros((), dtype=torch.float32)
        if step.num_labeled:
            loss = loss + labeled_loss(step.open_set_logits("labeled"), step.labels)
        loss = loss + self.options["ova_entropy"] * head_entropy(unlabeled)
        if self.options["ova_consistency"]:
            loss = loss + self.options["ova_consistency"] * head_disagreement(unlabeled, step.open_set_logits("second"))
        return loss

    def unlabeled_rows(self, step: StepContext) -> Tensor:
        with torch.no_grad():
            return known_probability(step.open_set_logits("unlabeled"), step.logits("unlabeled")) >= 0.5
