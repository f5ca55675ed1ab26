"""What a run leaves on disk: config.yaml, split.json, metrics.csv (whatever the logger), results.json.

Only global rank 0 writes, so a DDP run leaves one set of files.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import yaml
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from .lightning_private import AppendingWriter


class RunCSVLogger(CSVLogger):
    """CSVLogger writing ``metrics.csv`` straight into the run directory, kept across resumes."""

    def __init__(self, run_dir: Path):
        super().__init__(save_dir=str(run_dir), name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def experiment_name(run_dir_name: str) -> str:
    """A run directory's name without its seed or timestamp suffix: mnist-100-seed2 -> mnist-100."""
    name = re.sub(r"-seed\d+$", "", run_dir_name)
    return re.sub(r"-(\d{8}-\d{6}|slurm\d+)$", "", name)


@rank_zero_only
def write_yaml(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@rank_zero_only
def write_json(path: Path, data: dict) -> None:
    # Named like a checkpoint's temporary file, so that the next start removes it if a kill lands here.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RunRecord(Callback):
    """Writes the labeled split once the (possibly restored) split is final, puts the run's
    resolved config in every checkpoint so ``--evaluate`` knows the dataset, and keeps the
    training time across resumes, so a run stopped and resumed reports all of its minutes. A
    fine-tuned run's starting weights and their training time are kept the same way, so a resumed
    run need not find that file again.

    The clock is read at the end of each training batch, training epoch and validation, not when
    asked: every checkpoint written at one point of the run and the results.json written after
    ``fit`` returns then carry the same time, so a fine-tuned run's record of its source agrees
    with the source's own results."""

    def __init__(self, run_dir: Path, config: dict, finetuned_from: dict | None = None):
        self.run_dir, self.config = run_dir, config
        self.seconds_before = 0.0  # training time of this run's earlier, resumed-from segments
        self.finetuned_from = finetuned_from  # {checkpoint, train_seconds} of the weights it started from
        self._started: float | None = None
        self._elapsed = 0.0  # this segment's seconds up to the last training batch, epoch or validation
        self.resumed_at: list[int] = []  # the global step each resumed segment started from
        self._restored = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._started = time.perf_counter()

    def _read_clock(self) -> None:
        if self._started is not None:
            self._elapsed = time.perf_counter() - self._started

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._read_clock()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._read_clock()  # before a checkpoint saved here: Lightning runs checkpoint callbacks last

    def on_validation_end(self, trainer, pl_module) -> None:
        self._read_clock()

    def train_seconds(self) -> float:
        """Wall-clock seconds in ``fit`` over every segment of the run, up to its last step or validation."""
        return self.seconds_before + self._elapsed

    def state_dict(self) -> dict:
        return {
            "train_seconds": self.train_seconds(),
            "finetuned_from": self.finetuned_from,
            "resumed_at": self.resumed_at,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.seconds_before = float(state_dict.get("train_seconds", 0.0))
        self.finetuned_from = state_dict.get("finetuned_from", self.finetuned_from)
        self.resumed_at, self._restored = list(state_dict.get("resumed_at", [])), True

    @classmethod
    def seconds_in(cls, checkpoint: dict) -> float | None:
        """The training seconds a full checkpoint holds (a published, weights-only file has none)."""
        state = checkpoint.get("callbacks", {}).get(cls.__qualname__)  # Lightning's default state key
        return None if state is None else round(float(state["train_seconds"]), 1)

    @classmethod
    def started_from(cls, path: str, checkpoint: dict) -> dict:
        """What a fine-tuned run records of its starting weights: the file and the training time they cost.

        A published file holds no training time; its run's results.json, committed beside the
        ``weights/`` folder it sits in, does, so a row fine-tuned from committed weights still counts them.
        """
        seconds = cls.seconds_in(checkpoint)
        beside = Path(path).parent.parent / "results.json"
        if seconds is None and Path(path).parent.name == "weights" and beside.is_file():
            seconds = json.loads(beside.read_text()).get("train_seconds")
        return {"checkpoint": path, "train_seconds": seconds}

    def on_train_start(self, trainer, pl_module) -> None:
        if self._restored:  # a resumed segment: where it started, so a reader can check its step count
            self.resumed_at.append(trainer.global_step)
            self._restored = False
        datamodule = trainer.datamodule
        if trainer.is_global_zero and hasattr(datamodule, "write_run_files"):
            datamodule.write_run_files(self.run_dir)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["swwae_config"] = dict(self.config)
