"""Virtual adversarial training (VAT): an unlabeled image's prediction should not move under the small
perturbation that moves it most.

The direction is the one that most increases the KL divergence from the clean prediction, found
to first order by one power-iteration step from a random direction (a finite difference of size
``XI``); the term is that divergence at distance ``vat_epsilon`` along it, with the clean
prediction as a fixed target. No label and no augmentation enter it, so it adds what the
mean teacher's view-to-view term does not: smoothness in the directions the network is most
sensitive to.

The perturbed passes leave batch norm's running statistics alone: averaging in images that are
adversarial by construction would shift what the network sees at test time.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import settings as S
from .base import TERMS, UNLABELED, LossTerm, StepContext

XI = 0.1  # the power iteration's finite-difference step (input units): far smaller steps vanish in float32 rounding


def unit_rows(d: Tensor) -> Tensor:
    """Each row scaled to L2 norm 1 over all its pixels and channels."""
    return d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (d.dim() - 1)))


def kl_from(target_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(softmax(target) || softmax(logits)), summed over classes, averaged over rows.

    A divergence is never negative, but its rounded sum can be, by a few ulps, when the two predictions
    all but agree (the sign then depends on the CPU's vector unit): it is clamped at 0, which leaves
    every positive value and its gradient as they were."""
    return F.kl_div(
        F.log_softmax(logits.float(), 1),
        F.log_softmax(target_logits.float(), 1),
        log_target=True,
        reduction="batchmean",
    ).clamp_min(0.0)


@contextmanager
def frozen_batch_norm_statistics(net: nn.Module):
    """Batch norm still normalizes with the batch's own statistics but does not update its running ones."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def adversarial_direction(net: nn.Module, images: Tensor, target_logits: Tensor) -> Tensor:
    """The unit direction (per row) in which the prediction on ``images`` moves fastest away from ``target_logits``."""
    d = (XI * unit_rows(torch.randn_like(images))).requires_grad_(True)
    divergence = kl_from(target_logits, net.encode(images + d))
    (grad,) = torch.autograd.grad(divergence, d)
    return unit_rows(grad.detach())


RADIUS = S.Setting(
    "vat_epsilon",
    6.0,
    "radius of the virtual adversarial perturbation: the L2 norm over a whole image, "
    "in the network's input units (standardized pixels), > 0",
    "objectives",
    type=float,
    check=S.greater_than(0),
)


@TERMS.register
class VirtualAdversarial(LossTerm):
    """KL between the student's clean prediction on the unlabeled (weak) view and its prediction at
    distance ``vat_epsilon`` in the virtually adversarial direction."""

    name = "vat"
    needs = frozenset({UNLABELED})  # the unlabeled batch and the student's logits of it, nothing else
    logits_for = ("unlabeled",)
    weight = S.Setting(
        "lambda_vat", 0.0, "weight of the VAT term (0: off)", "objectives", type=float, check=S.at_least(0)
    )
    settings = (RADIUS,)

    def __call__(self, step: StepContext) -> Tensor:
        target = step.logits("unlabeled").detach()
        images = step.unlabeled.detach()
        with frozen_batch_norm_statistics(step.net):
            direction = adversarial_direction(step.net, images, target)
            return kl_from(target, step.net.encode(images + self.options["vat_epsilon"] * direction))
