"""The NaN guard: it stops a run at any non-finite step, keeps every checkpoint finite, and reads the device only
on logging steps and checkpoint saves."""

import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_run

import train
from orchestration import trainer as trainer_module
from orchestration.checkpoints import load_checkpoint
from swwae_lightning.module import SWWAEModule

TINY = tiny_run("--arch", "4C3-BN-MP2-8C3-MP2-FC16", "--max-epochs", "2", pictures=False)
STEPS_PER_EPOCH = 10  # (400 - 50 - 40) unlabeled images / 32


def run(tmp_path, dataset, *args) -> int:
    return train.main(
        ["--dataset", dataset, "--data-dir", str(tmp_path / "data"), *TINY, "--run-dir", str(tmp_path / "run"), *args]
    )


def poison_at(monkeypatch, global_step: int):
    """Make the loss NaN at one global step; returns the unpoisoned compute_loss."""
    original = SWWAEModule.compute_loss

    def poisoned(self, batch):
        loss = original(self, batch)
        if self.global_step == global_step:
            loss.terms["rec"] = loss.terms["rec"] * float("nan")
            loss.total = loss.terms["nll"] + loss.terms["rec"]
        return loss

    monkeypatch.setattr(SWWAEModule, "compute_loss", poisoned)
    return original


@pytest.mark.parametrize(
    "bad_step, log_every",
    [(0, 20), (4, 20), (9, 20), (13, 3)],
    ids=["first-step", "mid-epoch", "last-batch-of-an-epoch", "between-logging-steps"],
)
def test_a_nan_at_any_step_stops_the_run_naming_it_and_leaves_only_finite_resumable_checkpoints(
    tmp_path, tiny_dataset, monkeypatch, capsys, bad_step, log_every
):
    original = poison_at(monkeypatch, bad_step)
    assert run(tmp_path, tiny_dataset, "--log-every", str(log_every)) == 1
    err = capsys.readouterr().err
    epoch, batch = divmod(bad_step, STEPS_PER_EPOCH)
    assert f"non-finite loss at global step {bad_step} (epoch {epoch}, batch {batch}): rec = [nan]" in err
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    if bad_step < STEPS_PER_EPOCH:  # before the first epoch's checkpoint: there is none, and the message says so
        assert not last.exists() and "no checkpoint was saved before it" in err
        return
    assert f"resume with: python train.py --run-dir {tmp_path / 'run'} --resume last" in err
    for path in (tmp_path / "run" / "checkpoints").glob("*.ckpt"):
        state = load_checkpoint(path)
        assert state["global_step"] == STEPS_PER_EPOCH, path  # the end of the last good epoch
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()), path
    monkeypatch.setattr(SWWAEModule, "compute_loss", original)
    assert train.main(["--resume", "last", "--run-dir", str(tmp_path / "run")]) == 0


class HostChecksPerStep(pl.Callback):
    """How many times the guard read the device during each training step."""

    def __init__(self):
        self.per_step: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._before = pl_module.nan_guard.host_checks

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.per_step.append((trainer.global_step - 1, pl_module.nan_guard.host_checks - self._before))


def test_the_guard_reads_the_device_only_on_logging_steps(tmp_path, tiny_dataset, monkeypatch):
    counter = HostChecksPerStep()
    monkeypatch.setattr(trainer_module, "image_callbacks", lambda cfg, run_dir: [counter])
    assert run(tmp_path, tiny_dataset, "--log-every", "4") == 0
    assert len(counter.per_step) == 2 * STEPS_PER_EPOCH
    for step, checks in counter.per_step:
        logging_step = (step + 1) % 4 == 0 or (step + 1) % STEPS_PER_EPOCH == 0
        assert checks == (1 if logging_step else 0), (step, checks)
