"""Exact resume, interruption, the NaN guard, atomic and safe checkpoints."""

import fcntl
import json
import os
import pty
import random
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_run

import train
from datamodules.batches import InMemoryBatches, ResumableLoader
from datamodules.sampling import EpochSampler
from orchestration import trainer as trainer_module
from orchestration.checkpoints import AtomicCheckpointIO, CheckpointError, load_checkpoint
from swwae_lightning.module import SWWAEModule

REPO = Path(__file__).resolve().parents[1]
TINY = tiny_run(
    "--test", "--arch", "4C3-BN-MP2-8C3-MP2-FC16-D0.5", "--deterministic", "--max-epochs", "2", pictures=False
)


class StopAt(pl.Callback):
    """Presses Ctrl-C after a given training batch, records which unlabeled images each step used."""

    def __init__(self, epoch=None, batch=None, seen=None):
        self.epoch, self.batch, self.seen = epoch, batch, seen

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen is not None and trainer.current_epoch == 0:
            self.seen.extend(bytes(img.numpy()) for img in batch["unlabeled"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            raise KeyboardInterrupt


@pytest.fixture
def extra_callback(monkeypatch):
    """Adds a test callback to the Trainer that train.py builds."""
    added = []
    monkeypatch.setattr(trainer_module, "image_callbacks", lambda cfg, run_dir: list(added))
    return added


def run(tmp_path, dataset, run_dir, *args):
    return train.main(
        ["--dataset", dataset, "--data-dir", str(tmp_path / "data"), *TINY, "--run-dir", str(tmp_path / run_dir), *args]
    )


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize(
    "options",
    [
        ["--no-augment"],
        [],  # augmentation on (the default)
        # the EMA teacher, both extra views (strong and second) and every objective at once
        [
            "--lambda-fixmatch",
            "1",
            "--fixmatch-threshold",
            "0.3",
            "--lambda-consistency",
            "1",
            "--ema-decay",
            "0.9",
            "--lambda-swap",
            "0.5",
            "--decoder-top",
            "label",
        ],
    ],
    ids=["no-augment", "augment", "teacher-and-strong-views"],
)
def test_mid_epoch_interrupt_and_resume_is_bit_exact_and_sees_each_example_once(
    tmp_path, tiny_dataset, extra_callback, options
):
    seen_full = []
    extra_callback[:] = [StopAt(seen=seen_full)]
    assert run(tmp_path, tiny_dataset, "full", *options) == 0

    seen_split = []
    extra_callback[:] = [StopAt(epoch=0, batch=3, seen=seen_split)]
    with pytest.raises(SystemExit):
        run(tmp_path, tiny_dataset, "split", *options)
    extra_callback[:] = [StopAt(seen=seen_split)]
    assert train.main(["--resume", "last", "--run-dir", str(tmp_path / "split")]) == 0

    assert sorted(seen_split) == sorted(seen_full)  # neither replayed nor skipped
    assert len(set(seen_full)) == len(seen_full)
    full, split = final_state(tmp_path / "full"), final_state(tmp_path / "split")
    assert full["global_step"] == split["global_step"]
    for key, value in full["state_dict"].items():
        assert torch.equal(value, split["state_dict"][key]), key
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("full", "split")]
    assert results[0]["test_error"] == results[1]["test_error"]


class StopWhere(pl.Callback):
    """Stops a run once, at a named point of epoch 0 (``batch`` for a training batch): by Ctrl-C, by SIGTERM (the
    flag Lightning's handler sets, acted on where Lightning checks it), or by SIGKILL during epoch 1 (nothing
    saved then: only the epoch-end last.ckpt is left, put back over the interrupt's)."""

    def __init__(self, how: str, where: str, batch: int | None, run_dir: Path):
        self.how, self.where, self.batch, self.run_dir, self.done = how, where, batch, run_dir, False

    def _stop(self, trainer, where: str, batch_idx: int | None = None) -> None:
        epoch = 1 if self.how == "sigkill" else 0
        if self.done or trainer.sanity_checking or trainer.current_epoch != epoch or where != self.where:
            return
        if self.batch is not None and batch_idx != self.batch:
            return
        self.done = True
        if self.how == "sigterm":
            trainer._signal_connector.received_sigterm = True
            return
        if self.how == "sigkill":
            shutil.copy(self.run_dir / "checkpoints" / "last.ckpt", self.run_dir / "epoch-end.ckpt")
        raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._stop(trainer, "training batch", batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._stop(trainer, "validation batch", batch_idx)

    def on_validation_end(self, trainer, pl_module):
        self._stop(trainer, "validation end")

    def on_train_epoch_end(self, trainer, pl_module):
        self._stop(trainer, "epoch end")


STEPS_PER_EPOCH = 10  # TINY: 310 unlabeled images in batches of 32
DRAW = random.Random(51)  # the stop points, drawn once: the same in every run of the suite
STOPS = [
    *[("ctrl-c", "training batch", DRAW.randrange(STEPS_PER_EPOCH - 1)) for _ in range(2)],
    *[("sigterm", "training batch", DRAW.randrange(STEPS_PER_EPOCH - 1)) for _ in range(2)],
    *[(how, "training batch", STEPS_PER_EPOCH - 1) for how in ("ctrl-c", "sigterm")],  # the epoch's last batch
    *[(how, "validation batch", DRAW.randrange(3)) for how in ("ctrl-c", "sigterm")],
    *[(how, where, None) for how in ("ctrl-c", "sigterm") for where in ("validation end", "epoch end")],
    *[("sigkill", "training batch", DRAW.randrange(STEPS_PER_EPOCH))],
]
TEACHER_AND_STRONG_VIEW = ["--lambda-fixmatch", "1", "--fixmatch-threshold", "0.3", "--lambda-consistency", "1"]


@pytest.fixture(scope="module")
def unstopped(tmp_path_factory):
    """The run never stopped, once for every stop point (the tiny dataset registered for this module only)."""
    from conftest import make_tiny_splits

    from datamodules import datasets

    splits = make_tiny_splits()
    info = datasets.DatasetInfo(
        "tiny", lambda *_, **__: splits, (1, 8, 8), 4, (0.3,), (0.3,), False, preset="4C3-MP2-FC16"
    )
    deterministic = torch.are_deterministic_algorithms_enabled()  # --deterministic sets it for the process
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(datasets.DATASETS._items, "tiny", info)
        patch.setattr(trainer_module, "image_callbacks", lambda cfg, run_dir: [])
        tmp_path = tmp_path_factory.mktemp("unstopped")
        assert run(tmp_path, "tiny", "full", *TEACHER_AND_STRONG_VIEW) == 0
    torch.use_deterministic_algorithms(deterministic)
    return tmp_path / "full"


@pytest.mark.parametrize("how, where, batch", STOPS, ids=[f"{h}-{w.replace(' ', '-')}-{b}" for h, w, b in STOPS])
def test_a_run_stopped_anywhere_and_resumed_ends_bit_identical_to_the_run_never_stopped(
    tmp_path, tiny_dataset, extra_callback, unstopped, how, where, batch
):
    run_dir = tmp_path / "stopped"
    extra_callback[:] = [StopWhere(how, where, batch, run_dir)]
    if how == "sigterm":
        assert run(tmp_path, tiny_dataset, "stopped", *TEACHER_AND_STRONG_VIEW) == 128 + signal.SIGTERM
    else:
        with pytest.raises(SystemExit):
            run(tmp_path, tiny_dataset, "stopped", *TEACHER_AND_STRONG_VIEW)
    if how == "sigkill":  # the interrupt's own save never happened
        shutil.copy(run_dir / "epoch-end.ckpt", run_dir / "checkpoints" / "last.ckpt")
    stopped_at = final_state(run_dir)["global_step"]
    extra_callback[:] = []
    assert train.main(["--resume", "last", "--run-dir", str(run_dir)]) == 0
    full, resumed = final_state(unstopped), final_state(run_dir)
    assert resumed["global_step"] == full["global_step"] == 2 * STEPS_PER_EPOCH
    assert (run_dir / "split.json").read_text() == (unstopped / "split.json").read_text()
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert json.loads((run_dir / "results.json").read_text())["resumed_at_steps"] == [stopped_at]
    assert "resumed_at_steps" not in json.loads((unstopped / "results.json").read_text())


def test_two_ranks_resumed_mid_epoch_cover_the_epoch_exactly_once():
    data = InMemoryBatches(torch.arange(203).view(203, 1, 1, 1))
    seen = []
    for rank in range(2):
        loader = ResumableLoader(data, EpochSampler(203, 16, seed=1, rank=rank, world_size=2))
        it = iter(loader)
        seen += [next(it) for _ in range(3)]
        for _ in range(3):
            loader.mark_consumed()
        resumed = ResumableLoader(data, EpochSampler(203, 16, seed=1, rank=rank, world_size=2))
        resumed.load_state_dict(loader.state_dict())
        seen += list(resumed)
    assert sorted(torch.cat(seen).flatten().tolist()) == list(range(203))


def test_non_finite_loss_stops_naming_step_and_part_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_dataset, monkeypatch, capsys
):
    original = SWWAEModule.compute_loss

    def poisoned(self, batch):
        loss = original(self, batch)
        if self.current_epoch == 1 and self.trainer.fit_loop.epoch_loop.batch_idx == 2:
            loss.terms["rec"] = loss.terms["rec"] * float("nan")
            loss.total = loss.terms["nll"] + loss.terms["rec"]
        return loss

    monkeypatch.setattr(SWWAEModule, "compute_loss", poisoned)
    assert run(tmp_path, tiny_dataset, "nan") == 1
    err = capsys.readouterr().err
    assert "non-finite loss at global step 12 (epoch 1, batch 2): rec = [nan]" in err
    assert (
        f"the last good checkpoint is untouched; resume with: python train.py --run-dir {tmp_path / 'nan'} "
        "--resume last"
    ) in err
    good = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.ckpt")
    assert good["epoch"] == 0 and good["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())
    monkeypatch.setattr(SWWAEModule, "compute_loss", original)
    assert train.main(["--resume", "last", "--run-dir", str(tmp_path / "nan")]) == 0


def test_a_non_finite_loss_before_any_checkpoint_says_that_none_was_saved(tmp_path, tiny_dataset, monkeypatch, capsys):
    original = SWWAEModule.compute_loss

    def poisoned(self, batch):
        loss = original(self, batch)
        loss.terms["nll"] = loss.terms["nll"] * float("inf")
        loss.total = loss.terms["nll"] + loss.terms["rec"]
        return loss

    monkeypatch.setattr(SWWAEModule, "compute_loss", poisoned)
    assert run(tmp_path, tiny_dataset, "nan") == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "error: non-finite loss at global step 0 (epoch 0, batch 0): nll = [inf]; no checkpoint was saved before it"
    )
    assert not (tmp_path / "nan" / "checkpoints").exists()


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the kill arrives mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = _RunsCode()
    payload.marker = marker
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": payload}, evil)
    with pytest.raises(CheckpointError, match="refusing checkpoint"):
        load_checkpoint(evil)
    assert train.main(["--evaluate", str(evil)]) == 2
    assert train.main(["--finetune-from", str(evil), "--run-dir", str(tmp_path / "r")]) == 2
    assert not marker.exists()


def test_sigterm_mid_epoch_saves_last_and_resume_continues_from_that_step(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        str(REPO / "train.py"),
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "data"),
        "--val-size",
        "500",
        "--limit-val-batches",
        "1",
        "--logger",
        "csv",
        "--recon-every",
        "0",
        "--switch-every",
        "0",
        "--overview-every",
        "0",
        "--max-epochs",
        "1",
        "--batch-size",
        "128",
        "--unlabeled-batch-size",
        "128",
        "--limit-train-batches",
        "2000",
        "--progress-every",
        "1",
        "--run-dir",
        str(run_dir),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # On a terminal, where the progress bar says which step the run has reached (a log file hears only of epochs).
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)

    def read() -> str:
        try:
            return os.read(controller, 4096).decode(errors="replace")
        except OSError:  # the process closed the terminal
            return ""

    output = ""
    deadline = time.time() + 240
    while "Epoch 0:" not in output or "10/" not in output.split("Epoch 0:")[-1]:
        chunk = read()
        assert chunk and time.time() < deadline, output[-2000:]
        output += chunk
    proc.send_signal(signal.SIGTERM)
    while chunk := read():
        output += chunk
    proc.wait(timeout=120)
    os.close(controller)
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "Continue with: python train.py --resume" in output
    saved = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert 10 <= saved["global_step"] < 400 and saved["epoch"] == 0  # mid-epoch: an epoch is 429 steps
    assert not (run_dir / "results.json").exists()
    # Resume, and stop 3 steps later (a shorter epoch re-plans the schedule, which is fine here).
    resumed = subprocess.run(
        args[:2]
        + ["--resume", "last", "--run-dir", str(run_dir), "--limit-train-batches", str(saved["global_step"] + 3)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == saved["global_step"] + 3
