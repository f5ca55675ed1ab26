"""W&B that never blocks a run: offline when there is no key or no route, and one run across resumes.

Lightning's WandbLogger does not keep the W&B run id in the checkpoint, so a
resumed run would start a second W&B run; ``WandbRunId`` stores it there and
``wandb_logger`` reopens the same run from it. The server is ``WANDB_BASE_URL``'s
(self-hosted W&B) or the public one; runs of one experiment share a group.
"""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from . import settings as S
from .lightning_private import without_anonymous

PUBLIC_SERVER = "https://api.wandb.ai"

S.declare(
    S.Setting("wandb_project", "swwae-lightning", "W&B project", "run", type=str, affects_result=False),
    S.Setting("wandb_entity", None, "W&B entity (team or user)", "run", type=str, affects_result=False),
    S.Setting("wandb_name", None, "W&B run name; default: the run directory's name", "run", type=str,
              affects_result=False),
    S.Setting("wandb_tags", [], "comma-separated W&B tags", "run", type=S.tags_value, affects_result=False),
    S.Setting("wandb_group", None, "W&B group, so the seeds of one experiment sit together; default: the --config "
              "file's name, else <dataset>-<labels>-<mode>", "run", type=str, affects_result=False),
    S.Setting("wandb_job_type", "train", "W&B job type", "run", type=str, affects_result=False),
    S.Setting("wandb_log_model", False, "log the best and last checkpoints as W&B artifacts at the end of fit "
              "(online only)", "run", flag="switch", affects_result=False),
)


def server() -> tuple[str, int]:
    """(host, port) of the W&B server: ``WANDB_BASE_URL`` (self-hosted) or the public one."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or PUBLIC_SERVER)
    return url.hostname or "", url.port or (80 if url.scheme == "http" else 443)


def _has_credentials(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
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
    host, port = server()
    if not _has_credentials(host):
        return "no W&B credentials (WANDB_API_KEY or `wandb login`)"
    if not _reachable(host, port):
        return f"the W&B server {host}:{port} is not reachable"
    return None


def default_group(config: dict) -> str:
    labels = "all" if config.get("labels") is None else config["labels"]
    return f"{config['dataset']}-{labels}-{config['mode']}"


def wandb_logger(run_dir: Path, config: dict, resume_id: str | None) -> WandbLogger:
    """The run's WandbLogger, offline when it must be (said in one line), reopening ``resume_id`` if given."""
    reason = offline_reason()
    if reason:
        rank_zero_info(f"W&B: offline ({reason}); upload later with: wandb sync {run_dir / 'wandb'}/offline-run-*")
    log_model = config["wandb_log_model"] and reason is None
    if config["wandb_log_model"] and reason:
        rank_zero_info(f"W&B: offline, so --wandb-log-model uploads no checkpoint; later: "
                       f"wandb artifact put --type model {run_dir / 'checkpoints'}")
    logger = without_anonymous(WandbLogger(
        project=config["wandb_project"], name=config["wandb_name"] or run_dir.name, entity=config["wandb_entity"],
        tags=config["wandb_tags"] or None, group=config["wandb_group"] or default_group(config),
        job_type=config["wandb_job_type"], save_dir=str(run_dir), offline=reason is not None, log_model=log_model,
        id=resume_id, resume="must" if resume_id and not reason else "allow",
    ))
    logger.log_hyperparams(config)
    return logger


def write_summary(trainer, name: str, value: float) -> None:
    """Set the W&B summary metric ``name`` (what a sweep optimizes) to ``value``: the best, not the last."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.summary[name] = value


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
