"""Checkpoints that are never half-written and never run code when read.

Lightning writes a checkpoint straight into its final path, so a kill during the
write leaves a truncated ``last.ckpt`` in place of the good one: we write to a
temporary file in the same directory, fsync, then ``os.replace`` (atomic on POSIX).
A SIGKILL during the write leaves that temporary file behind (``.last.ckpt.tmp-<pid>``);
the next start in the run directory removes it (``remove_stale_temporaries``).
Weights for ``--evaluate`` / ``--finetune-from`` are read with
``torch.load(weights_only=True)``, which refuses any pickle that would build an
arbitrary object (a crafted checkpoint cannot execute code).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe or from another network."""


_TEMPORARY = re.compile(r"\..+\.tmp-(\d+)")  # .<name>.tmp-<pid of the writer>


def temporary_path(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it: a hidden name in the same directory."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(directory: Path, claimed: bool) -> list[Path]:
    """Delete the temporary files that killed saves left in ``directory``; returns them.

    With the run directory ``claimed`` (this process holds its lock, so no other process writes
    there) every one is stale, whatever its pid: after a requeue or in a container a dead writer's
    pid may belong to a live, unrelated process. Without the claim, only files whose writer is no
    longer alive (or is this process, which has not started saving) are removed.
    """
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = _TEMPORARY.fullmatch(path.name)
        if not match or not path.is_file():
            continue
        pid = int(match.group(1))
        if claimed or pid == os.getpid() or not _alive(pid):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class BestAndLastCheckpoint(ModelCheckpoint):
    """``best.ckpt`` when the monitored error improves, and ``last.ckpt`` at the end of every epoch, whatever it did.

    Lightning's ``save_last=True`` writes ``last.ckpt`` only in a step where a best file is saved too,
    so once validation stops improving, ``--resume last`` (after a kill, a requeue, a power cut) would
    throw away every epoch since, and the final weights would be saved nowhere.
    """

    def __init__(self, ties_to_later: bool = False, **kwargs):
        super().__init__(save_last=True, **kwargs)
        self.ties_to_later = ties_to_later

    def check_monitor_top_k(self, trainer, current=None) -> bool:
        """With ``ties_to_later``, an epoch that equals the best error replaces it: on a validation set of a few
        dozen images the error is often level for many epochs, and the first of them is the least trained."""
        if self.ties_to_later and current is not None and self.best_k_models and self.save_top_k == 1:
            if bool(torch.eq(current, self.best_k_models[self.kth_best_model_path])):
                return trainer.strategy.reduce_boolean_decision(True)
        return super().check_monitor_top_k(trainer, current)

    @property
    def state_key(self) -> str:  # the key Lightning's own class gives: checkpoints keep restoring the best score
        return ModelCheckpoint.__qualname__ + super().state_key.removeprefix(type(self).__qualname__)

    def _save_last_at_epoch_end(self, trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # skipped where this step's best save wrote it already
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_at_epoch_end(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_at_epoch_end(trainer)


class InterruptCheckpoint(Callback):
    """Saves ``last.ckpt`` when Ctrl-C or SIGTERM stops a run (Lightning turns both into exceptions).

    Unlike Lightning's OnExceptionCheckpoint it ignores crashes and non-finite
    losses, which must not overwrite the last good ``last.ckpt``, and it does not
    delete its file at teardown.
    """

    def __init__(self, ckpt_path: Path):
        self.ckpt_path = ckpt_path

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        trainer.save_checkpoint(self.ckpt_path)
        rank_zero_info(
            f"Interrupted at epoch {trainer.current_epoch}, global step {trainer.global_step}: saved {self.ckpt_path}. "
            f"Continue with: python train.py --resume {self.ckpt_path}"
        )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; every failure becomes one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): an interrupted copy?")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = (
            str(error).splitlines()[0]
            if "weights_only" not in str(error)
            else "it holds objects other than tensors and plain data"
        )
        raise CheckpointError(
            f"refusing checkpoint {str(path)!r}: {reason} (only weights_only-safe files are loaded)"
        ) from None
    except Exception as error:  # truncated zip, not a torch file, ...
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable ({type(error).__name__}: {error}); is it truncated?"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{str(path)!r} is not a swwae-lightning checkpoint (no state_dict / hyper_parameters)")
    return checkpoint


TEACHER_PREFIX = "teacher."  # the EMA teacher's entries in a state dict


def has_teacher(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(TEACHER_PREFIX) for k in state)


def without_teacher(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(TEACHER_PREFIX)}


def load_measured_weights(module: torch.nn.Module, checkpoint: dict, path: str | Path) -> None:
    """Load ``checkpoint``'s weights for testing or predicting, refused if the layers differ.

    A published file leaves the EMA teacher out unless the teacher is the network measured
    (``eval_teacher``), so a teacher the file lacks is left as built.
    """
    own, theirs = module.state_dict(), checkpoint["state_dict"]
    if not checkpoint["hyper_parameters"].get("eval_teacher") and not has_teacher(theirs):
        own = without_teacher(own)
    check_compatible(own, theirs, path)
    module.load_state_dict(theirs, strict=False)  # check_compatible left only an unused teacher unmatched


def check_compatible(own: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights from another architecture, naming the layers that do not match."""
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    mismatched = [
        f"{k} {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in theirs and theirs[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        details = "; ".join(
            filter(
                None,
                [
                    f"shape mismatch: {', '.join(mismatched[:4])}" if mismatched else "",
                    f"missing: {', '.join(missing[:4])}" if missing else "",
                    f"unexpected: {', '.join(unexpected[:4])}" if unexpected else "",
                ],
            )
        )
        raise CheckpointError(f"checkpoint {str(path)!r} is from another architecture ({details})")
