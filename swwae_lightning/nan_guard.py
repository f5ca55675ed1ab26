"""The NaN guard: a non-finite loss stops the run, without making the host wait for the device every step.

Reading ``isfinite(loss)`` on the host each step would stop the CPU from queueing the next
step on a GPU. Instead the first non-finite step is recorded on the device (its global step,
epoch, batch and the loss parts' values) and looked at only where the host reads the device
anyway: the steps whose metrics are logged, and every checkpoint save. A checkpoint save
after a non-finite step raises before anything is written, so non-finite weights never reach
a file; the run stops naming the first bad step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class NonFiniteLossError(RuntimeError):
    """The loss was not finite; raised at the next logging step or checkpoint save, before anything is written."""


class NonFiniteGuard(nn.Module):
    """Keeps, on the loss's device, which call first saw a non-finite loss (not part of any checkpoint).

    The step, epoch and batch of each call stay on the host, in order, until the next check: turning
    them into a tensor each step would be a copy from the host, which a GPU's host waits for.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("first_bad_call", torch.full((), -1, dtype=torch.long), persistent=False)
        self.register_buffer("bad_values", torch.zeros(0), persistent=False)
        self.names: list[str] = []
        self.positions: list[tuple[int, int, int]] = []  # (step, epoch, batch) of each call since the last check
        self.host_checks = 0  # how often the host has read the device: counted so tests can hold it to logging steps

    @torch.no_grad()
    def record(self, parts: dict[str, Tensor], step: int, epoch: int, batch: int) -> None:
        """Note this step's loss parts; no host synchronization (and, under no_grad, no detach per part)."""
        names = [name for name in parts if name != "loss"]
        values = torch.stack([parts[name] for name in names])
        if values.dtype != torch.float32:
            values = values.float()
        if names != self.names:  # the first step (or the parts changed): start over on this device
            self.names, self.bad_values = names, torch.zeros_like(values)
            self.calls, self.first_bad_call = self.calls.to(values.device), self.first_bad_call.to(values.device)
        new = torch.isfinite(parts["loss"]).logical_not_() & (self.first_bad_call < 0)
        self.first_bad_call = torch.where(new, self.calls, self.first_bad_call)
        self.bad_values = torch.where(new, values, self.bad_values)
        self.calls += 1
        self.positions.append((step, epoch, batch))

    def check(self) -> None:
        """Raise ``NonFiniteLossError`` naming the first non-finite step and part, if there was one (syncs)."""
        self.host_checks += 1
        index = int(self.first_bad_call)
        if index < 0:  # nothing went wrong: the positions noted so far are not needed any more
            self.positions.clear()
            self.calls.zero_()
            return
        step, epoch, batch = self.positions[index]
        values = dict(zip(self.names, self.bad_values.tolist()))
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        what = f"{', '.join(bad)} = {[values[b] for b in bad]}" if bad else "the weighted sum is not finite"
        raise NonFiniteLossError(f"non-finite loss at global step {step} (epoch {epoch}, batch {batch}): {what}")
