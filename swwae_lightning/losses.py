"""L = L_NLL + lambda_rec * L_rec + lambda_mid * L_mid (SWWAE_SPEC.md, "Losses").

L_mid pairs each intermediate encoder state h_l (the pooled *what* of stage l, or
the conv output of a final stage without pooling) with the decoder state r_l
that reconstructs it, for l = 1 .. L-1; the top pair is left out because the
decoder starts from h_L itself. Gradients flow into both sides, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .network import SWWAEOutput


@dataclass
class SWWAELoss:
    """The total and each part, so a run can log which term does the work."""

    total: Tensor
    nll: Tensor
    rec: Tensor
    mid: Tensor

    def parts(self) -> dict[str, Tensor]:
        return {"loss": self.total, "nll": self.nll, "rec": self.rec, "mid": self.mid}


def swwae_loss(
    output: SWWAEOutput,
    x: Tensor,
    labels: Tensor | None = None,
    lambda_rec: float = 1.0,
    lambda_mid: float = 0.1,
) -> SWWAELoss:
    """Loss of one forward pass over ``x``.

    ``labels`` label the *first* ``len(labels)`` rows of ``x`` (a semi-supervised
    batch is the labeled rows followed by the unlabeled ones); ``None`` or an empty
    tensor gives no NLL term. Reconstruction terms cover every row.
    """
    zero = output.reconstruction.new_zeros((), dtype=torch.float32)
    if labels is not None and labels.numel() > 0:
        nll = F.cross_entropy(output.logits[: labels.shape[0]].float(), labels)
    else:
        nll = zero
    rec = F.mse_loss(output.reconstruction.float(), x.float())
    mid = zero
    for h, r in list(zip(output.encoder_states, output.decoder_states))[:-1]:
        mid = mid + F.mse_loss(r.float(), h.float())
    # A zero weight still reports its term but sends no gradient through the decoder.
    rec = rec if lambda_rec else rec.detach()
    mid = mid if lambda_mid else mid.detach()
    total = nll + lambda_rec * rec + lambda_mid * mid
    return SWWAELoss(total, nll, rec, mid)
