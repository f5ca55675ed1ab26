"""The training objective and its registered terms (reconstruction, FixMatch, mean teacher, what-where swap,
virtual adversarial training, entropy minimization, one-vs-all heads)."""

from .base import (
    BATCH_PARTS,
    DECODER,
    NEEDS,
    OPEN_SET,
    TEACHER,
    TERMS,
    UNLABELED,
    VIEWS,
    LossParts,
    LossTerm,
    Objective,
    StepContext,
    TermContractError,
    active_terms,
    is_baseline,
    needs_of,
    views_needed,
)
from .consistency import Consistency
from .entropy import EntropyMinimization
from .fixmatch import FixMatch, confident_pseudo_labels
from .open_set import OneVsAll, known_probability
from .reconstruction import InputReconstruction, IntermediateReconstruction
from .swap import WhatWhereSwap
from .virtual_adversarial import VirtualAdversarial

__all__ = [
    "BATCH_PARTS",
    "TermContractError",
    "DECODER",
    "NEEDS",
    "OPEN_SET",
    "TEACHER",
    "TERMS",
    "UNLABELED",
    "VIEWS",
    "LossParts",
    "LossTerm",
    "Objective",
    "StepContext",
    "active_terms",
    "is_baseline",
    "needs_of",
    "views_needed",
    "InputReconstruction",
    "IntermediateReconstruction",
    "FixMatch",
    "confident_pseudo_labels",
    "Consistency",
    "WhatWhereSwap",
    "VirtualAdversarial",
    "EntropyMinimization",
    "OneVsAll",
    "known_probability",
]
