"""Learning-rate schedules as factors of the base rate, stepped once per batch.

They are plain functions of (step, total) used through ``LambdaLR``, and the
total is asked of Lightning only at the first real step: asking
``trainer.estimated_stepping_batches`` inside ``configure_optimizers`` makes
Lightning build the training loader before a checkpoint is restored, and it then
never hands the loader its saved position (a mid-epoch resume would replay the
epoch's first batches). A resumed run with a new ``--max-epochs`` re-plans the
rest of its schedule instead of failing.
"""

from __future__ import annotations

import math

ONE_CYCLE_WARMUP = 0.3  # share of the steps spent warming up (as torch's OneCycleLR)
ONE_CYCLE_START_DIV = 25.0  # start at lr / 25
ONE_CYCLE_FINAL_DIV = 1e4  # end at lr / (25 * 1e4)


def _cosine_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0))) / 2


def one_cycle(step: int, total: int) -> float:
    """Cosine warm-up from lr/25 to lr over 30% of the steps, then cosine down to lr/2.5e5."""
    warmup = max(1, int(ONE_CYCLE_WARMUP * total))
    if step <= warmup:
        return _cosine_between(1 / ONE_CYCLE_START_DIV, 1.0, step / warmup)
    final = 1 / (ONE_CYCLE_START_DIV * ONE_CYCLE_FINAL_DIV)
    return _cosine_between(1.0, final, (step - warmup) / max(1, total - warmup))


def cosine(step: int, total: int) -> float:
    return _cosine_between(1.0, 0.0, step / max(1, total))


SCHEDULES = {"onecycle": one_cycle, "cosine": cosine, "constant": None}
