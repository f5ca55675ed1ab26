"""Trackers that degrade and never block a run; one W&B run across resumes.

W&B goes offline when there is no key, no route, a server that answers with an error, rejects
the key or does not answer within ``SERVER_TIMEOUT``; when it cannot start offline either, the
run keeps ``metrics.csv`` only. A tracker that fails to log later is dropped with one line.
Lightning's WandbLogger does not keep the W&B run id in the checkpoint, so a resumed run would
start a second W&B run; ``WandbRunId`` stores it there and ``wandb_logger`` reopens the same run
from it. The server is ``WANDB_BASE_URL``'s (self-hosted W&B) or the public one; runs of one
experiment share a group.
"""

from __future__ import annotations

import base64
import json
import netrc
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from swwae_lightning import settings as S

from .lightning_private import without_anonymous

PUBLIC_SERVER = "https://api.wandb.ai"
SERVER_TIMEOUT = 10.0  # seconds the start waits for the server to answer; W&B's own start gets as long again

S.declare(
    S.Setting("wandb_project", "swwae-lightning", "W&B project", "run", type=str, affects_result=False),
    S.Setting("wandb_entity", None, "W&B entity (team or user)", "run", type=str, affects_result=False),
    S.Setting(
        "wandb_name", None, "W&B run name; default: the run directory's name", "run", type=str, affects_result=False
    ),
    S.Setting("wandb_tags", [], "comma-separated W&B tags", "run", type=S.tags_value, affects_result=False),
    S.Setting(
        "wandb_group",
        None,
        "W&B group, so the seeds of one experiment sit together; default: the --config "
        "file's name, else <dataset>-<labels>-<mode>",
        "run",
        type=str,
        affects_result=False,
    ),
    S.Setting("wandb_job_type", "train", "W&B job type", "run", type=str, affects_result=False),
    S.Setting(
        "wandb_log_model",
        False,
        "log the best and last checkpoints as W&B artifacts at the end of fit (online only)",
        "run",
        flag="switch",
        affects_result=False,
    ),
)


def base_url() -> str:
    return (os.environ.get("WANDB_BASE_URL") or PUBLIC_SERVER).rstrip("/")


def server() -> tuple[str, int]:
    """(host, port) of the W&B server: ``WANDB_BASE_URL`` (self-hosted) or the public one."""
    url = urlparse(base_url())
    return url.hostname or "", url.port or (80 if url.scheme == "http" else 443)


def _api_key(host: str) -> str | None:
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        found = netrc.netrc().authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return found[2] if found else None


def _reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def server_problem(key: str | None, timeout: float = SERVER_TIMEOUT) -> str | None:
    """What is wrong with the W&B server for this key (an HTTP error, a rejected key, no answer), or None.

    One GraphQL question (who is this key's user), the one W&B itself asks first, with a time limit.
    """
    url = f"{base_url()}/graphql"
    request = urllib.request.Request(
        url,
        data=json.dumps({"query": "query { viewer { id } }"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    if key:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"api:{key}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        rejected = " (the API key was rejected)" if error.code in (401, 403) else ""
        return f"the W&B server {url} answered HTTP {error.code}{rejected}"
    except (urllib.error.URLError, OSError) as error:  # a time-out is an OSError too
        reason = getattr(error, "reason", error)
        return f"the W&B server {url} did not answer within {timeout:g} s ({reason})"
    except ValueError:
        return f"the W&B server {url} answered something other than JSON"
    if not isinstance(body, dict) or not (body.get("data") or {}).get("viewer"):
        return f"the W&B server {url} did not accept the API key"
    return None


def offline_reason() -> str | None:
    """Why W&B must run offline, or None when online logging can work."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "dryrun"):
        return f"WANDB_MODE={mode}"
    host, port = server()
    key = _api_key(host)
    if key is None and mode != "online":
        return "no W&B credentials (WANDB_API_KEY or `wandb login`)"
    if not _reachable(host, port):
        return f"the W&B server {host}:{port} is not reachable"
    return server_problem(key)


def default_group(config: dict) -> str:
    return f"{config['dataset']}-{S.labels_text(config.get('labels'))}-{config['mode']}"


class _Degrading:
    """A logger that, when logging fails, says so in one line and is dropped: the run goes on (metrics.csv)."""

    _failed = False

    def _guarded(self, method: str, *args, **kwargs):
        if self._failed:
            return None
        try:
            return getattr(super(), method)(*args, **kwargs)
        except Exception as error:
            self._failed = True
            said = str(error).strip().splitlines()
            rank_zero_info(
                f"{type(self).__name__}: logging failed ({type(error).__name__}"
                f"{': ' + said[0] if said else ''}); it is dropped, metrics.csv keeps every metric"
            )
            return None

    def log_metrics(self, *args, **kwargs):
        return self._guarded("log_metrics", *args, **kwargs)

    def log_hyperparams(self, *args, **kwargs):
        return self._guarded("log_hyperparams", *args, **kwargs)


class TrackedWandbLogger(_Degrading, WandbLogger):
    def log_image(self, *args, **kwargs):
        return self._guarded("log_image", *args, **kwargs)


class TrackedTensorBoardLogger(_Degrading, TensorBoardLogger):
    pass


def _start_wandb(run_dir: Path, config: dict, resume_id: str | None, offline: bool) -> WandbLogger:
    """A started WandbLogger (``wandb.init`` has run): raises whatever W&B raised."""
    import wandb

    log_model = config["wandb_log_model"] and not offline
    logger = without_anonymous(
        TrackedWandbLogger(
            project=config["wandb_project"],
            name=config["wandb_name"] or run_dir.name,
            entity=config["wandb_entity"],
            tags=config["wandb_tags"] or None,
            group=config["wandb_group"] or default_group(config),
            job_type=config["wandb_job_type"],
            save_dir=str(run_dir),
            offline=offline,
            log_model=log_model,
            id=resume_id,
            resume="must" if resume_id and not offline else "allow",
            settings=wandb.Settings(init_timeout=SERVER_TIMEOUT),
        )
    )
    try:
        logger.experiment  # noqa: B018  (wandb.init, here, where a failure can still be handled)
    except BaseException:
        wandb.finish()
        wandb.teardown()  # a failed start leaves W&B's service in a state where no other run starts
        raise
    logger.log_hyperparams(config)
    return logger


def wandb_logger(run_dir: Path, config: dict, resume_id: str | None) -> WandbLogger | None:
    """The run's WandbLogger, offline when it must be, reopening ``resume_id`` if given; None (metrics.csv
    only) when W&B cannot start at all. Each fallback is said in one line."""
    reason = offline_reason()
    if reason is None:
        try:
            return _start_wandb(run_dir, config, resume_id, offline=False)
        except Exception as error:
            said = str(error).strip().splitlines()
            reason = f"W&B did not start online: {type(error).__name__}{': ' + said[0] if said else ''}"
    rank_zero_info(f"W&B: offline ({reason}); upload later with: wandb sync {run_dir / 'wandb'}/offline-run-*")
    if config["wandb_log_model"]:
        rank_zero_info(
            f"W&B: offline, so --wandb-log-model uploads no checkpoint; later: "
            f"wandb artifact put --type model {run_dir / 'checkpoints'}"
        )
    try:
        return _start_wandb(run_dir, config, resume_id, offline=True)
    except Exception as error:
        rank_zero_info(
            f"W&B: offline W&B did not start either ({type(error).__name__}); "
            "this run keeps its metrics in metrics.csv only"
        )
        return None


def tensorboard_logger(run_dir: Path) -> TensorBoardLogger | None:
    """TensorBoard's writer in run_dir/tensorboard, or None (said in one line) when it cannot be created."""
    logger = TrackedTensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
    try:
        logger.experiment  # noqa: B018  (creates the writer and its folder)
    except Exception as error:
        rank_zero_info(
            f"TensorBoard: cannot write {logger.log_dir} ({type(error).__name__}: {error}); "
            "this run keeps its metrics in metrics.csv only"
        )
        return None
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
    """Close the W&B run now, not only when the process exits (W&B's service may take a moment more to
    write its files)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()
