"""Promises about real processes and real signals: Ctrl-C, SLURM's SIGUSR1 and requeue, a SIGKILL during
a checkpoint save, and two processes racing for one run directory.

Every process here is real: a launcher process imports train.py's modules once (about 10 s on a busy CPU)
and forks a child per run, which executes ``train.py`` as ``__main__`` with its own argv, environment,
working directory and log file. The children get real signals from this test (``os.kill``), hold real
kernel locks and die for real; forking only saves each child the import time. The launcher registers the
tiny dataset of ``conftest.py`` and one probe callback, driven by environment variables:
PROBE_TRACE=1 prints ``training step N`` before each step; PROBE_PAUSE_AT=N prints ``paused after global
step N`` after that step and waits there (until the file PROBE_RELEASE exists), which is where the signals
land, so that they arrive at a known step. The children of a race are held after their input checks
and released together, right before they claim the run directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml

import train
from orchestration import run_directory
from orchestration.checkpoints import load_checkpoint, remove_stale_temporaries

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TIMEOUT = 120  # seconds any one child may take; each takes a few

LAUNCHER = r'''
import json, os, runpy, select, signal, sys, time, traceback

REPO, TESTS = sys.argv[1], sys.argv[2]
sys.path[:0] = [REPO, TESTS]
import pytorch_lightning as pl
import torch

import train  # noqa: F401  (everything train.py's main imports, imported once for all children)
from conftest import make_tiny_splits
from datamodules import DATASETS, DatasetInfo
from swwae_lightning import settings
from orchestration import trainer as trainer_module
from orchestration import training
from orchestration.checkpoints import AtomicCheckpointIO
from orchestration.cli import build_parser

build_parser()
splits = make_tiny_splits()
DATASETS.register(DatasetInfo("tiny", lambda data_dir, download, include_extra: splits, (1, 8, 8), 4, (0.3,), (0.3,),
                             False, preset="4C3-MP2-FC16"))


class Probe(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if os.environ.get("PROBE_TRACE"):
            print(f"training step {trainer.global_step}", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == int(os.environ.get("PROBE_PAUSE_AT", "-1")):
            print(f"paused after global step {trainer.global_step}", flush=True)
            release, deadline = os.environ.get("PROBE_RELEASE"), time.monotonic() + 120
            while time.monotonic() < deadline and not (release and os.path.exists(release)):
                time.sleep(0.01)  # signals are handled here


trainer_module.image_callbacks = lambda cfg, run_dir: [Probe()]
GATE = None
checked = training.prepare


def prepare_then_wait_at_the_gate(cfg, finetune_source=None):
    """main runs every input check (prepare) and then claims the run directory: the children of a race
    wait between the two, so that they all reach the claim at the same moment."""
    prepared = checked(cfg, finetune_source)
    if GATE is not None:
        arrived, gate = GATE
        os.write(arrived, b"x")
        os.read(gate, 1)  # opens when every child of the race has arrived
    return prepared


training.prepare = prepare_then_wait_at_the_gate


def stalled_save(job):
    """AtomicCheckpointIO saving job["path"] on a disk whose flush never ends: the kill lands mid-save."""
    def stall(fd):
        open(job["marker"], "w").close()
        time.sleep(120)

    os.fsync = stall
    checkpoint = {"state_dict": {"w": torch.zeros(1 << 20)}, "hyper_parameters": {}}
    AtomicCheckpointIO().save_checkpoint(checkpoint, job["path"])


def child(job, gate):
    code = 99
    try:
        os.chdir(job["cwd"])
        os.environ.update(job["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        # Python's Ctrl-C handler, as in a terminal (a shell running a test suite in the background ignores SIGINT).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        global GATE
        GATE = gate
        if job["what"] == "train.py":
            sys.argv = [os.path.join(REPO, "train.py"), *job["argv"]]
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = 0
        else:
            stalled_save(job)
            code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def reply(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


running = set()
reply({"ready": os.getpid()})
for line in iter(sys.stdin.readline, ""):
    request = json.loads(line)
    if request["op"] == "start":
        jobs = request["jobs"]
        race = len(jobs) > 1
        arrivals, arrived = os.pipe() if race else (None, None)
        gate, open_gate = os.pipe() if race else (None, None)
        pids = []
        for job in jobs:
            pid = os.fork()
            if pid == 0:
                if race:
                    os.close(arrivals)
                    os.close(open_gate)
                child(job, (arrived, gate) if race else None)
            pids.append(pid)
        running.update(pids)
        if race:
            os.close(arrived)
            count, deadline = 0, time.monotonic() + 120
            while count < len(pids) and time.monotonic() < deadline:  # until all arrive (or exit: EOF)
                if select.select([arrivals], [], [], 1)[0]:
                    got = os.read(arrivals, 16)
                    if not got:
                        break
                    count += len(got)
            os.write(open_gate, b"x" * len(pids))
            for fd in (arrivals, gate, open_gate):
                os.close(fd)
        reply({"pids": pids})
    elif request["op"] == "wait":
        pid, deadline = request["pid"], time.monotonic() + request["timeout"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = None
                break
            time.sleep(0.01)
        running.discard(pid)
        reply({"code": None if status is None else os.waitstatus_to_exitcode(status)})
for pid in running:  # the test ended early: leave nothing behind
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
'''


class Child:
    def __init__(self, launcher: "Launcher", pid: int, log: Path):
        self.launcher, self.pid, self.log = launcher, pid, log

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{self.output()[-3000:]}"
            time.sleep(0.02)

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = TIMEOUT) -> int:
        code = self.launcher.request({"op": "wait", "pid": self.pid, "timeout": timeout})["code"]
        assert code is not None, f"still running after {timeout} s:\n{self.output()[-3000:]}"
        return code


class Launcher:
    def __init__(self, proc: subprocess.Popen, logs: Path):
        self.proc, self.logs, self.count = proc, logs, 0

    def request(self, message: dict) -> dict:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the launcher died: {self.logs.joinpath('launcher.err').read_text()[-3000:]}"
        return json.loads(line)

    def start(self, *jobs: dict) -> list[Child]:
        """Fork one child per job; several are released together, as close to the same instant as can be."""
        for job in jobs:
            self.count += 1
            job["log"] = str(self.logs / f"child-{self.count}.log")
        pids = self.request({"op": "start", "jobs": list(jobs)})["pids"]
        return [Child(self, pid, Path(job["log"])) for pid, job in zip(pids, jobs)]


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    logs = tmp_path_factory.mktemp("launcher")
    script = logs / "launcher.py"
    script.write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(logs / "launcher.err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(REPO), str(TESTS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=REPO,
        )
    ready = proc.stdout.readline()
    assert ready, (logs / "launcher.err").read_text()[-3000:]
    yield Launcher(proc, logs)
    proc.stdin.close()
    proc.wait(timeout=60)


def tiny(tmp_path: Path, *extra: str) -> list[str]:
    """10 training steps per epoch on the tiny dataset."""
    return [
        "--dataset",
        "tiny",
        "--data-dir",
        str(tmp_path / "data"),
        "--arch",
        "4C3-MP2-FC16",
        "--labels",
        "40",
        "--val-size",
        "50",
        "--batch-size",
        "16",
        "--unlabeled-batch-size",
        "32",
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
        *extra,
    ]


def train_py(tmp_path: Path, argv: list[str], **env: str) -> dict:
    return {"what": "train.py", "argv": argv, "cwd": str(tmp_path), "env": env}


def steps_trained(child: Child) -> list[int]:
    return [int(s) for s in re.findall(r"training step (\d+)", child.output())]


def test_ctrl_c_prints_the_resume_command_and_resume_last_continues_from_that_step(
    launcher, tmp_path, tiny_dataset, capsys
):
    run_dir = tmp_path / "run"
    argv = tiny(tmp_path, "--run-dir", str(run_dir))
    (first,) = launcher.start(train_py(tmp_path, argv, PROBE_PAUSE_AT="5"))
    first.wait_for("paused after global step 5")
    first.send(signal.SIGINT)  # what Ctrl-C in a terminal sends
    assert first.wait() == 1, first.output()[-3000:]  # Lightning's exit status after a graceful Ctrl-C
    command = re.search(r"Continue with: python train\.py --resume (\S+)", first.output())
    assert command, first.output()[-3000:]
    assert Path(command.group(1)) == run_dir / "checkpoints" / "last.ckpt"
    assert load_checkpoint(command.group(1))["global_step"] == 5
    assert not (run_dir / "results.json").exists()

    (second,) = launcher.start(
        train_py(
            tmp_path,
            ["--resume", "last", "--run-dir", str(run_dir)],
            PROBE_TRACE="1",
            PROBE_PAUSE_AT="7",
            PROBE_RELEASE=str(tmp_path / "release"),
        )
    )
    second.wait_for("paused after global step 7")
    # While the resumed run trains, nothing else may resume it (or start a new run in its directory).
    capsys.readouterr()
    assert train.main(["--resume", "last", "--run-dir", str(run_dir)]) == 2
    assert train.main(argv) == 2
    refusals = capsys.readouterr().err.strip().splitlines()
    assert len(refusals) == 2, refusals
    assert refusals[0].startswith("error: ") and f"is in use by another process (pid {second.pid} on " in refusals[0]
    assert refusals[1].startswith("error: ") and "already holds a run" in refusals[1]
    (tmp_path / "release").touch()
    assert second.wait() == 0, second.output()[-3000:]
    assert steps_trained(second) == [5, 6, 7, 8, 9]  # from the saved step on, to the end of the epoch
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 10


SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_NODEID": "0",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODELIST": "localhost",
}


def test_slurm_sigusr1_saves_an_hpc_checkpoint_requeues_and_the_requeued_job_continues(launcher, tmp_path):
    """Lightning's SLURMEnvironment (auto-requeue) is detected from SLURM_NTASKS and a job name other than
    bash/interactive. On SIGUSR1 it saves hpc_ckpt_1.ckpt in the run directory and calls `scontrol requeue`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\nexit 0\n')
    scontrol.chmod(0o755)
    env = {**SLURM, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    run_dir = tmp_path / "run"
    argv = tiny(tmp_path, "--run-dir", str(run_dir))

    (job,) = launcher.start(train_py(tmp_path, argv, PROBE_PAUSE_AT="5", **env))
    job.wait_for("paused after global step 5")
    job.send(signal.SIGUSR1)  # what `sbatch --signal=SIGUSR1@90` sends before the time limit
    deadline = time.monotonic() + TIMEOUT
    while not (tmp_path / "scontrol.calls").exists():
        assert time.monotonic() < deadline, job.output()[-3000:]
        time.sleep(0.02)
    assert (tmp_path / "scontrol.calls").read_text() == "requeue 4242\n"
    assert load_checkpoint(run_dir / "hpc_ckpt_1.ckpt")["global_step"] == 5
    job.send(signal.SIGKILL)  # SLURM ends the job it requeued
    assert job.wait() == -signal.SIGKILL
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # the hpc checkpoint is the only saved state

    # The requeued job: the same command, in the same run directory, which the dead job's lock no longer holds.
    (requeued,) = launcher.start(train_py(tmp_path, argv, PROBE_TRACE="1", SLURM_RESTART_COUNT="1", **env))
    assert requeued.wait() == 0, requeued.output()[-3000:]
    assert steps_trained(requeued) == [5, 6, 7, 8, 9]  # continued, not restarted
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 10


def test_a_sigkill_during_a_checkpoint_save_leaves_last_ckpt_loadable_and_the_next_start_removes_the_leftover(
    launcher, tmp_path, tiny_dataset
):
    run_dir = tmp_path / "run"
    assert train.main(tiny(tmp_path, "--run-dir", str(run_dir))) == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    marker = tmp_path / "written"
    (saver,) = launcher.start(
        {"what": "stalled-save", "path": str(last), "marker": str(marker), "cwd": str(tmp_path), "env": {}}
    )
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():  # the new checkpoint is written to the temporary file, not yet renamed
        assert time.monotonic() < deadline, saver.output()[-3000:]
        time.sleep(0.01)
    leftover = last.with_name(f".last.ckpt.tmp-{saver.pid}")
    assert leftover.stat().st_size > 4 << 20  # the whole new payload
    saver.send(signal.SIGKILL)
    assert saver.wait() == -signal.SIGKILL
    assert last.read_bytes() == before
    assert load_checkpoint(last)["global_step"] == 10
    assert leftover.exists()

    assert train.main(["--resume", "last", "--run-dir", str(run_dir), "--max-epochs", "2"]) == 0
    assert not [p.name for p in run_dir.rglob("*.tmp-*")]
    assert load_checkpoint(last)["global_step"] == 20


def test_two_processes_started_together_on_one_new_run_dir_one_trains_and_the_other_refuses(launcher, tmp_path):
    """20 races of two children released together right before they claim (about 0.4 s a race). A claim
    that checks and then writes, instead of locking, let both run in 4 of 20 such races: 20 races miss
    it with a probability of about 1%."""
    seen = []
    for race in range(20):
        run_dir = tmp_path / f"race{race}"
        jobs = [
            train_py(tmp_path, tiny(tmp_path, "--fast-dev-run", "--seed", str(seed), "--run-dir", str(run_dir)))
            for seed in (1, 2)
        ]
        children = launcher.start(*jobs)
        codes = [child.wait() for child in children]
        assert sorted(codes) == [0, 2], [child.output()[-2000:] for child in children]
        winner_seed, loser = (1, 2)[codes.index(0)], children[codes.index(2)]
        refusal = loser.output().strip()
        assert refusal.startswith("error: run directory ") and "\n" not in refusal, refusal
        seen.append("in use" if "is in use by another process" in refusal else refusal)
        # Everything in the run directory is the winner's: the loser wrote nothing.
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == winner_seed
        assert json.loads((run_dir / "results.json").read_text())["seed"] == winner_seed
    # Released at the same instant, the loser mostly reaches the claim while the winner holds it.
    assert seen.count("in use") >= 10, seen


def test_only_global_rank_zero_claims_and_a_released_claim_can_be_taken_again(tmp_path):
    run_dir = tmp_path / "run"
    claim = run_directory.prepare(run_dir, fresh=True, is_rank_zero=True)
    try:
        # DDP ranks > 0 run main too (Lightning relaunches train.py with SWWAE_RUN_DIR): they must not claim.
        assert run_directory.prepare(run_dir, fresh=True, is_rank_zero=False) is None
        with pytest.raises(run_directory.RunDirectoryError, match=r"is in use by another process \(pid \d+ on "):
            run_directory.prepare(run_dir, fresh=False, is_rank_zero=True)
    finally:
        run_directory.release(claim)
    run_directory.release(run_directory.prepare(run_dir, fresh=False, is_rank_zero=True))


def test_without_the_claim_only_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    live = tmp_path / f".last.ckpt.tmp-{os.getppid()}"
    stale = tmp_path / f".last.ckpt.tmp-{dead.pid}"
    other = tmp_path / "best.ckpt"
    for path in (live, stale, other):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path, claimed=False) == [stale]
    assert sorted(remove_stale_temporaries(tmp_path, claimed=True)) == [live]
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]


class Steps(pl.Callback):
    """Records the global step before each training step; presses Ctrl-C after ``stop_after``."""

    def __init__(self, stop_after: int | None = None):
        self.seen, self.stop_after = [], stop_after

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.stop_after:
            raise KeyboardInterrupt


def test_a_requeued_slurm_job_without_an_hpc_checkpoint_continues_from_last_ckpt(tmp_path, tiny_dataset, monkeypatch):
    """Requeued after a plain SIGTERM (preemption, or a node failure with --requeue; no --signal=SIGUSR1):
    Lightning finds no hpc checkpoint, but last.ckpt holds the state the job saved when it was stopped."""
    from orchestration import trainer as trainer_module

    run_dir = tmp_path / "run"
    argv = tiny(tmp_path, "--run-dir", str(run_dir))
    probe = Steps(stop_after=3)
    monkeypatch.setattr(trainer_module, "image_callbacks", lambda cfg, run_dir: [probe])
    with pytest.raises(SystemExit):
        train.main(argv)
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 3
    for name, value in {**SLURM, "SLURM_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(name, value)
    probe = Steps()
    assert train.main(argv) == 0
    assert probe.seen == [3, 4, 5, 6, 7, 8, 9]
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 10
