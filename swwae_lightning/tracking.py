"""W&B that never blocks a run: offline when there is no key or no route, and one run across resumes.

Lightning's WandbLogger does not keep the W&B run id in the checkpoint, so a
resumed run would start a second W&B run; ``WandbRunId`` stores it there and
``wandb_logger`` reopens the same run from it.
"""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from . import settings as S

WANDB_HOST = "api.wandb.ai"

S.declare(
    S.Setting("wandb_project", "swwae-lightning", "W&B project", "run", type=str, affects_result=False),
    S.Setting("wandb_entity", None, "W&B entity (team or user)", "run", type=str, affects_result=False),
    S.Setting("wandb_name", None, "W&B run name; default: the run directory's name", "run", type=str,
              affects_result=False),
    S.Setting("wandb_tags", [], "comma-separated W&B tags", "run", type=S.tags_value, affects_result=False),
)


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _reachable(host: str, timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def offline_reason() -> str | None:
    """Why W&B must run offline, or None when online logging can work."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "dryrun"):
        return f"WANDB_MODE={mode}"
    if mode == "online":
        return None
    if not _has_credentials():
        return "no W&B credentials (WANDB_API_KEY or `wandb login`)"
    if not _reachable(WANDB_HOST):
        return f"{WANDB_HOST} is not reachable"
    return None


def wandb_logger(run_dir: Path, project: str, name: str, entity: str | None, tags: list[str],
                 config: dict, resume_id: str | None) -> WandbLogger:
    reason = offline_reason()
    if reason:
        rank_zero_info(f"W&B: offline ({reason}); upload later with: wandb sync {run_dir / 'wandb'}/offline-run-*")
    logger = WandbLogger(
        project=project, name=name, entity=entity, tags=tags or None, save_dir=str(run_dir),
        offline=reason is not None, id=resume_id, resume="must" if resume_id and not reason else "allow",
    )
    logger.log_hyperparams(config)
    return logger


class WandbRunId(Callback):
    """Keeps the W&B run id in every checkpoint, so ``--resume`` continues the same W&B run."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint["wandb_run_id"] = logger.version


def finish_wandb(trainer) -> None:
    """Close the W&B run now, not only when the process exits (W&B's service may take a moment more to write its files)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()
