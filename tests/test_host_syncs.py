"""A training step never makes the host wait for the device: between two logging steps nothing reads a
tensor's value on the host (``.item()``, ``bool()``, ``float()``, ``.tolist()``) or copies host data to a
tensor (``torch.tensor(...)``, which on a GPU is a blocking copy), whatever the objective. The one
exception is chosen and counted: the one-vs-all heads' gate finds the unlabeled rows it keeps
(``nonzero``), whose number the host must know to shape the other terms' batch.

On the CPU nothing waits, so the test counts the operations that would: the data path, the forward,
every loss term, the NaN guard's record, backward, the optimizer and the schedule, through train.py.
"""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import train
from orchestration import trainer as trainer_module

# aten ops that hand a tensor's value to the host, or make a tensor from host data
HOST_READS = {"_local_scalar_dense", "is_nonzero", "equal", "lift_fresh", "nonzero"}
STEPS_PER_EPOCH = 10  # (400 - 50 - 40) unlabeled images / 32


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in HOST_READS:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


class HostReadsPerStep(pl.Callback):
    """The host reads of each training step, from its ``on_train_batch_start`` to the next one's: the step
    (forward, every term, the NaN guard, backward, the optimizer, the schedule), what Lightning does with
    its results after ``on_train_batch_end`` (metrics for the loggers and the progress bar), and the next
    batch's fetch and preparation on the device (the DataModule's ``on_after_batch_transfer``)."""

    def __init__(self, monkeypatch):
        self.per_step: list[tuple[int, list[str]]] = []
        self.mode: HostReads | None = None
        self.step = -1
        original_tolist = torch.Tensor.tolist

        def counted_tolist(tensor):  # .tolist() reads the data without going through the dispatcher
            if self.mode is not None:
                self.mode.seen.append("tolist")
            return original_tolist(tensor)

        monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)

    def setup(self, trainer, pl_module, stage):
        # First of the callbacks, so a step's window opens before any other callback's hook of that step
        trainer.callbacks.remove(self)
        trainer.callbacks.insert(0, self)

    def _step_ended(self) -> None:
        self.per_step.append((self.step, self.mode.seen))
        self.mode.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.mode is None:
            self.mode = HostReads()
            self.mode.__enter__()
        else:
            self._step_ended()
        self.step = trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module):
        self._step_ended()
        self.mode.__exit__(None, None, None)
        self.mode = None


@pytest.mark.parametrize(
    "objective, allowed",
    [
        ([], []),  # the default job: SWWAE's reconstruction terms
        (["--lambda-fixmatch", "1", "--lambda-consistency", "1", "--lambda-swap", "1", "--decoder-top", "label"], []),
        (
            ["--lambda-vat", "1", "--lambda-entmin", "1", "--lambda-ova", "1"],
            ["nonzero.default"],
        ),  # the gate's one read
    ],
    ids=["default-job", "every-term", "one-vs-all"],
)
def test_no_training_step_reads_the_device_on_the_host_between_logging_steps(
    tmp_path, tiny_dataset, monkeypatch, capsys, objective, allowed
):
    counter = HostReadsPerStep(monkeypatch)
    monkeypatch.setattr(trainer_module, "image_callbacks", lambda cfg, run_dir: [counter])
    argv = ["--dataset", tiny_dataset, "--data-dir", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run")]
    argv += ["--arch", "4C3-BN-MP2-8C3-MP2-FC16", "--labels", "40", "--val-size", "50", "--batch-size", "16"]
    argv += ["--unlabeled-batch-size", "32", "--logger", "csv", "--max-epochs", "1", "--log-every", "4"]
    argv += ["--progress-every", "100", *objective]
    assert train.main(argv) == 0
    assert len(counter.per_step) == STEPS_PER_EPOCH
    # Steps that log nothing; the first makes the device's constants (normalization, pixel scale) once.
    quiet = {step: reads for step, reads in counter.per_step if (step + 1) % 4 and 0 < step < STEPS_PER_EPOCH - 1}
    assert len(quiet) == 6 and all(reads == allowed for reads in quiet.values()), quiet
    logged = [reads for step, reads in counter.per_step if (step + 1) % 4 == 0]
    assert all(logged)  # the counter sees the reads a logging step makes: the test can fail
    assert "  train/loss " in capsys.readouterr().out  # a log file's epoch line shows the loss, read from the log
