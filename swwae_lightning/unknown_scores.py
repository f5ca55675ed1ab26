"""How unlike the known classes an image looks: four scores, higher meaning more likely unknown.

A pool may hold classes nobody labeled. The classifier's own confidence is the usual guard, but a
semi-supervised model trained to be confident on its pool is confident on those images too. The
energy of the logits (minus their log-sum-exp) keeps the scale the softmax throws away, and the
what-where decoder's reconstruction error asks a different question: does the image look like the
images the auto-encoder learned to rebuild? One-vs-all heads, where the network was trained with them,
are asked directly whether the image is of the class the classifier picked. ``auroc`` measures how
well a score separates two sets.
"""

from __future__ import annotations

import scipy.stats
import torch
from torch import Tensor

from .objectives.open_set import known_probability

SCORES = ("probability", "energy", "reconstruction", "one_vs_all")


def probability_score(logits: Tensor) -> Tensor:
    """Minus the log of the top class's probability, as log(1 + the other classes' mass relative to the
    top one): it ranks images as the top probability does, and stays above 0 where that rounds to 1."""
    z = logits.float()
    top = z.argmax(dim=1, keepdim=True)
    others = torch.exp(z - z.gather(1, top)).scatter(1, top, 0.0)
    return torch.log1p(others.sum(dim=1))


def energy_score(logits: Tensor) -> Tensor:
    """The energy of the logits, minus their log-sum-exp: low where some class scores high."""
    return -torch.logsumexp(logits.float(), dim=1)


def reconstruction_score(reconstruction: Tensor, images: Tensor) -> Tensor:
    """The mean squared error of each image's reconstruction, on the normalized scale the network sees."""
    return (reconstruction.float() - images.float()).pow(2).flatten(1).mean(dim=1)


def one_vs_all_score(open_set_logits: Tensor, logits: Tensor) -> Tensor:
    """The probability, from the predicted class's one-vs-all head, that the image is not of that class."""
    return 1.0 - known_probability(open_set_logits, logits)


def auroc(known: Tensor, unknown: Tensor) -> float:
    """The chance that an unknown image scores above a known one (ties count half): 0.5 is a coin."""
    n_known, n_unknown = len(known), len(unknown)
    if not n_known or not n_unknown:
        return float("nan")
    ranks = scipy.stats.rankdata(torch.cat([known.double(), unknown.double()]).numpy())  # ties share their mean rank
    rank_sum = float(ranks[n_known:].sum())
    return (rank_sum - n_unknown * (n_unknown + 1) / 2) / (n_known * n_unknown)
