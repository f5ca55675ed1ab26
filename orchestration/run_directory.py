"""A run's directory from start to end: found (resumed, requeued by SLURM, or new), claimed, written, released.

``RunDirectory`` is the one owner: the command line builds one, opens it once its input is known to
be good, and closes it when the run ends. Only global rank 0 claims; DDP ranks > 0 use the directory
their rank 0 holds.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: run directories are not locked
    fcntl = None

from swwae_lightning import settings as S

from .checkpoints import load_checkpoint, remove_stale_temporaries
from .run_files import write_yaml


class RunDirectoryError(ValueError):
    """Bad input about the run directory: printed as one line, exit status 2."""


def find_resume(resume: str, run_dir: str | None) -> tuple[Path, Path]:
    """(checkpoint, run directory) for --resume PATH|last."""
    if resume == "last":
        if run_dir:
            ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
        else:
            candidates = sorted(Path("runs").glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
            if not candidates:
                raise RunDirectoryError("--resume last found no runs/*/checkpoints/last.ckpt; give a path or --run-dir")
            ckpt = candidates[-1]
    else:
        ckpt = Path(resume)
    if not ckpt.is_file():
        raise RunDirectoryError(f"--resume: checkpoint {str(ckpt)!r} does not exist")
    return ckpt, ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def new_path(cfg: dict) -> Path:
    if cfg["run_dir"]:
        return Path(cfg["run_dir"])
    # DDP children started by Lightning inherit this from rank 0; SLURM ranks share the job id.
    if os.environ.get("SWWAE_RUN_DIR"):
        return Path(os.environ["SWWAE_RUN_DIR"])
    stamp = f"slurm{os.environ['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in os.environ else time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg['dataset']}-{S.labels_text(cfg['labels'])}-{stamp}"


def requeued() -> bool:
    """A SLURM requeue reruns the same command in the same run directory."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def requeue_checkpoint(run_dir: Path) -> Path | None:
    """On a SLURM requeue, the newest state the job saved before: Lightning's hpc_ckpt_N.ckpt (SIGUSR1)
    or checkpoints/last.ckpt (SIGTERM, the end of an epoch), whichever was written last; None otherwise.

    Lightning itself looks only for hpc checkpoints: a job requeued after a plain SIGTERM, or whose
    SIGUSR1 came before the last epoch ended, would otherwise start again from step 0 over its own files.
    """
    if not requeued():
        return None
    candidates = [p for p in [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "checkpoints" / "last.ckpt"] if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns, default=None)


CLAIM_FILE = ".lock"


def claim_lock(run_dir: Path) -> int | None:
    """An exclusive ``flock`` on ``run_dir/.lock``, held until ``release`` or the end of the process.

    The kernel drops the lock when its holder dies (even by SIGKILL), so a stale lock cannot block a
    resume or a SLURM requeue. Returns the locked file descriptor, or None where the file system has no locks.
    """
    lock = run_dir / CLAIM_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if isinstance(error, BlockingIOError) or error.errno in (errno.EACCES, errno.EAGAIN):
            try:
                holder = lock.read_text().strip()
            except OSError:
                holder = ""
            raise RunDirectoryError(
                f"run directory {str(run_dir)!r} is in use by another process"
                f"{f' ({holder})' if holder else ''}: wait for it to end or choose another --run-dir"
            ) from None
        print(
            f"warning: cannot lock run directory {str(run_dir)!r} ({error.strerror or error}): "
            "nothing stops a second process from using it",
            file=sys.stderr,
        )
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def release(claim: int | None) -> None:
    if claim is not None:
        os.close(claim)  # closing the descriptor releases the flock; the file stays, which is harmless


def prepare(run_dir: Path, fresh: bool, is_rank_zero: bool) -> int | None:
    """Check, claim and create the run directory; returns the claim to release when the run ends.

    Only global rank 0 claims: DDP ranks > 0 (launched by Lightning with ``SWWAE_RUN_DIR``, or by
    srun/torchrun) use the directory their rank 0 holds.
    """
    is_requeue = requeued()

    def refuse_if_taken() -> None:
        # A SLURM requeue reruns the same command in the same directory and resumes from its own checkpoints.
        if fresh and not is_requeue and ((run_dir / "results.json").exists() or (run_dir / "checkpoints").exists()):
            raise RunDirectoryError(
                f"run directory {str(run_dir)!r} already holds a run; choose another --run-dir or --resume it"
            )

    claim = None
    try:
        if is_rank_zero:
            refuse_if_taken()  # before anything is written
            run_dir.mkdir(parents=True, exist_ok=True)
            claim = claim_lock(run_dir)
            refuse_if_taken()  # again under the claim: a process that held it may have started a run meanwhile
        (run_dir / "images").mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
        if is_rank_zero:
            for directory in (run_dir, run_dir / "checkpoints"):
                for path in remove_stale_temporaries(directory, claimed=claim is not None):
                    print(f"removed {path}, left by a checkpoint save that was killed", flush=True)
    except BaseException as error:
        release(claim)
        if isinstance(error, OSError):
            raise RunDirectoryError(f"cannot write run directory {str(run_dir)!r}: {error.strerror or error}") from None
        raise
    return claim


class RunDirectory:
    """The directory a command trains in, and the checkpoint it resumes from (read once, here).

    ``--resume PATH|last`` names both; otherwise ``--run-dir``, the directory rank 0 handed down, or a
    new name, and on a SLURM requeue the newest state that job saved there.
    """

    def __init__(self, cfg: dict):
        if cfg["resume"]:
            self.checkpoint_path, self.path = find_resume(cfg["resume"], cfg["run_dir"])
        else:
            self.path = new_path(cfg)
            self.checkpoint_path = requeue_checkpoint(self.path)  # a requeued SLURM job continues from what it saved
        # a missing, empty or corrupt file fails here, in one line
        self.resumed: dict = load_checkpoint(self.checkpoint_path) if self.checkpoint_path is not None else {}
        self._claim: int | None = None

    @property
    def resume_from(self) -> str | None:
        return str(self.checkpoint_path) if self.checkpoint_path is not None else None

    def open(self, cfg: dict, is_rank_zero: bool) -> None:
        """Claim and create the directory (held until ``close``), then write the run's ``config.yaml``."""
        self._claim = prepare(self.path, fresh=self.checkpoint_path is None, is_rank_zero=is_rank_zero)
        cfg["run_dir"] = str(self.path)
        write_yaml(self.path / "config.yaml", cfg)

    def close(self) -> None:
        release(self._claim)
        self._claim = None
