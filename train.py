"""Command line for SWWAE experiments: `python train.py --help` lists every flag with its default.

Precedence, lowest first: built-in defaults < the run's own config.yaml (with
--resume) or the checkpoint's config (with --evaluate) < --config FILE.yaml < flags.
Bad input ends with one line on stderr and exit status 2; nothing is written
before the input is known to be good.
"""

from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import time
from pathlib import Path

import yaml

DEFAULTS: dict = {}
FLAGS: dict[str, dict] = {}


class CLIError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


def _labels(value: str) -> int | None:
    if str(value).lower() in ("all", "none"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number or 'all'") from None


def _limit(value: str) -> int | float:
    """Lightning's convention: an int is a number of batches, a float a fraction."""
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of batches or a fraction") from None


def _tags(value: str) -> list[str]:
    return [t for t in str(value).split(",") if t]


def _add(group, name: str, default, help: str, **kwargs) -> None:
    dest = name.lstrip("-").replace("-", "_")
    DEFAULTS[dest] = default
    FLAGS[dest] = {"name": name, **kwargs}
    group.add_argument(name, dest=dest, help=f"{help} (default: {default})", **kwargs)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise CLIError(message)


def build_parser() -> argparse.ArgumentParser:
    from datamodules.registry import DATASETS
    from datamodules.semi_supervised import MODES
    from swwae_lightning.experiment import LOGGERS, PRECISIONS
    from swwae_lightning.module import SCHEDULES
    from swwae_lightning.pooling import POOLINGS, UNPOOLINGS

    p = _Parser(description=__doc__.splitlines()[0], argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="YAML file of flag values (snake_case or kebab-case keys); flags override it")
    data = p.add_argument_group("data")
    _add(data, "--dataset", "mnist", "dataset", choices=sorted(DATASETS))
    _add(data, "--data-dir", "data", "where datasets are looked for (and downloaded to)")
    _add(data, "--labels", 100, "labeled examples, balanced over classes; 'all' with --mode supervised", type=_labels)
    _add(data, "--mode", "semi", "semi: NLL on labeled + reconstruction on all; supervised; unsupervised", choices=MODES)
    _add(data, "--batch-size", 128, "labeled examples per step (per process)", type=int)
    _add(data, "--unlabeled-batch-size", 128, "unlabeled examples per step (per process)", type=int)
    _add(data, "--val-size", 5000, "training examples held out for validation", type=int)
    _add(data, "--fold", None, "STL-10 predefined 1,000-label fold (0-9)", type=int)
    _add(data, "--include-extra", False, "add SVHN 'extra' / STL-10 'unlabeled' to the unlabeled pool", action=argparse.BooleanOptionalAction)
    _add(data, "--augment", True, "random shifts (and flips where label-preserving)", action=argparse.BooleanOptionalAction)
    _add(data, "--download", True, "let torchvision download a dataset that is not found locally", action=argparse.BooleanOptionalAction)
    _add(data, "--num-workers", 0, "loader worker processes (data is in memory: 0 is usually fastest)", type=int)
    model = p.add_argument_group("model")
    _add(model, "--arch", None, "architecture string, e.g. 16C5-BN-MP2-32C3-MP2-FC128-D0.3; default: the dataset's preset")
    _add(model, "--pooling", "hard", "what/where pooling", choices=POOLINGS)
    _add(model, "--beta", 100.0, "soft pooling temperature (> 0)", type=float)
    _add(model, "--unpool", "where", "decoder unpooling: with the switches, or copy (the paper's ablation)", choices=UNPOOLINGS)
    _add(model, "--lambda-rec", 1.0, "weight of the input reconstruction loss", type=float)
    _add(model, "--lambda-mid", 0.1, "weight of the intermediate reconstruction losses", type=float)
    optim = p.add_argument_group("optimization")
    _add(optim, "--lr", 3e-3, "Adam (peak) learning rate", type=float)
    _add(optim, "--weight-decay", 0.0, "Adam weight decay", type=float)
    _add(optim, "--schedule", "onecycle", "learning-rate schedule, stepped every batch", choices=SCHEDULES)
    _add(optim, "--max-epochs", 4, "passes over the unlabeled pool (the labeled set in supervised mode)", type=int)
    _add(optim, "--seed", 0, "seed of the split, the batch order, augmentation and initialization", type=int)
    _add(optim, "--deterministic", False, "deterministic algorithms (bit-exact resume on CPU)", action=argparse.BooleanOptionalAction)
    hw = p.add_argument_group("hardware")
    _add(hw, "--gpus", 0, "shorthand: accelerator=gpu, devices=N, DDP when N > 1", type=int)
    _add(hw, "--accelerator", "auto", "Lightning accelerator (cpu, gpu, mps, auto)")
    _add(hw, "--devices", "auto", "Lightning devices (a count, a list, or auto)")
    _add(hw, "--strategy", "auto", "Lightning strategy (ddp, ddp_spawn, auto, ...)")
    _add(hw, "--num-nodes", 1, "machines (DDP)", type=int)
    _add(hw, "--precision", "32-true", "numeric precision", choices=PRECISIONS)
    _add(hw, "--channels-last", False, "channels-last memory format for every convolution (measured on this project's CPU: no gain; "
         "the decoder's image-output conv already runs channels-last on CPU)",
         action=argparse.BooleanOptionalAction)
    run = p.add_argument_group("run, logging and checkpoints")
    _add(run, "--logger", "wandb", "experiment tracker besides metrics.csv (W&B goes offline by itself without credentials)", choices=LOGGERS)
    _add(run, "--wandb-project", "swwae-lightning", "W&B project")
    _add(run, "--wandb-entity", None, "W&B entity (team or user)")
    _add(run, "--wandb-name", None, "W&B run name; default: the run directory's name")
    _add(run, "--wandb-tags", [], "comma-separated W&B tags", type=_tags)
    _add(run, "--run-dir", None, "run directory; default: runs/<dataset>-<labels>-<timestamp>")
    _add(run, "--resume", None, "continue training from PATH, or 'last' (the newest run's last.ckpt, or --run-dir's)")
    _add(run, "--finetune-from", None, "start from these weights with a fresh optimizer (any compatible dataset/mode)")
    _add(run, "--freeze-encoder", False, "train only the classifier head (and decoder): a linear probe", action=argparse.BooleanOptionalAction)
    _add(run, "--evaluate", None, "test this checkpoint on the official test split and exit")
    _add(run, "--recon-every", 1, "log reconstruction grids every N epochs (0: off)", type=int)
    _add(run, "--switch-every", 1, "log switch maps every N epochs (0: off)", type=int)
    _add(run, "--num-images", 8, "validation images in each picture", type=int)
    _add(run, "--log-every", 20, "log training metrics every N steps", type=int)
    _add(run, "--progress-every", 10, "refresh the progress bar every N steps", type=int)
    smoke = p.add_argument_group("smoke runs (Lightning's)")
    _add(smoke, "--fast-dev-run", 0, "run N batches (default 1) of train/val/test; writes no checkpoints", nargs="?", const=1, type=int)
    _add(smoke, "--limit-train-batches", None, "batches per epoch (int) or fraction (float)", type=_limit)
    _add(smoke, "--limit-val-batches", None, "validation batches (int) or fraction (float)", type=_limit)
    return p


def _read_config_file(path: str, parser: argparse.ArgumentParser) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise CLIError(f"config file {path!r} does not exist") from None
    except yaml.YAMLError as error:
        raise CLIError(f"config file {path!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CLIError(f"config file {path!r} must hold a mapping of flag names to values")
    config = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in DEFAULTS:
            close = difflib.get_close_matches(dest, DEFAULTS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise CLIError(f"config file {path!r}: unknown key {key!r}{hint}")
        config[dest] = _coerce(dest, value, f"config file {path!r}: {key}")
    return config


def _coerce(dest: str, value, where: str):
    """Check a config-file value as the flag would have checked it."""
    flag = FLAGS[dest]
    if value is None:
        return value
    if flag.get("action") is argparse.BooleanOptionalAction:
        if not isinstance(value, bool):
            raise CLIError(f"{where}: {value!r} is not true or false")
        return value
    try:
        converted = flag["type"](value) if "type" in flag and not isinstance(value, list) else value
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        raise CLIError(f"{where}: {error}") from None
    if "choices" in flag and converted not in flag["choices"]:
        raise CLIError(f"{where}: {converted!r} is not one of {list(flag['choices'])}")
    return converted


def resolve_config(argv: list[str]) -> dict:
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    config = dict(DEFAULTS)
    if given.get("resume"):
        run_config = _find_resume(given["resume"], given.get("run_dir"))[1] / "config.yaml"
        if run_config.is_file():
            config.update(_read_config_file(str(run_config), parser))
    if given.get("evaluate"):
        from swwae_lightning.checkpoints import load_checkpoint

        config.update(load_checkpoint(given["evaluate"]).get("swwae_config", {}))
    if "config" in given:
        config.update(_read_config_file(given.pop("config"), parser))
    config.update(given)
    _check_values(config)
    return config


def _check_values(cfg: dict) -> None:
    """Value checks argparse cannot express, so they fail before any data is loaded."""
    positive = ("batch_size", "unlabeled_batch_size", "max_epochs", "num_nodes", "num_images", "log_every", "progress_every")
    for key in positive:
        if cfg[key] is not None and cfg[key] < 1:
            raise CLIError(f"--{key.replace('_', '-')} {cfg[key]} must be >= 1")
    for key in ("lambda_rec", "lambda_mid", "weight_decay", "val_size", "num_workers", "gpus", "recon_every", "switch_every"):
        if cfg[key] < 0:
            raise CLIError(f"--{key.replace('_', '-')} {cfg[key]} must be >= 0")
    if cfg["lr"] <= 0:
        raise CLIError(f"--lr {cfg['lr']} must be > 0")
    if cfg["pooling"] == "soft" and cfg["beta"] <= 0:
        raise CLIError(f"--beta {cfg['beta']} must be > 0 for soft pooling (the paper uses 100)")
    if cfg["resume"] and cfg["finetune_from"]:
        raise CLIError("--resume continues a run and --finetune-from starts a new one: give only one")


def _find_resume(resume: str, run_dir: str | None) -> tuple[Path, Path]:
    """(checkpoint, run directory) for --resume PATH|last."""
    if resume == "last":
        if run_dir:
            ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
        else:
            candidates = sorted(Path("runs").glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
            if not candidates:
                raise CLIError("--resume last found no runs/*/checkpoints/last.ckpt; give a path or --run-dir")
            ckpt = candidates[-1]
    else:
        ckpt = Path(resume)
    if not ckpt.is_file():
        raise CLIError(f"--resume: checkpoint {str(ckpt)!r} does not exist")
    return ckpt, ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _new_run_dir(cfg: dict) -> Path:
    if cfg["run_dir"]:
        return Path(cfg["run_dir"])
    # DDP children started by Lightning inherit this from rank 0; SLURM ranks share the job id.
    if os.environ.get("SWWAE_RUN_DIR"):
        return Path(os.environ["SWWAE_RUN_DIR"])
    labels = "all" if cfg["labels"] is None else cfg["labels"]
    stamp = f"slurm{os.environ['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in os.environ else time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg['dataset']}-{labels}-{stamp}"


def _prepare_run_dir(run_dir: Path, fresh: bool, is_rank_zero: bool) -> None:
    # A SLURM requeue reruns the same command in the same directory: Lightning resumes from its hpc checkpoint.
    requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    if is_rank_zero and fresh and not requeued and ((run_dir / "results.json").exists() or (run_dir / "checkpoints").exists()):
        raise CLIError(f"run directory {str(run_dir)!r} already holds a run; choose another --run-dir or --resume it")
    try:
        (run_dir / "images").mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise CLIError(f"cannot write run directory {str(run_dir)!r}: {error.strerror or error}") from None


def main(argv: list[str] | None = None) -> int:
    from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from datamodules.sources import DatasetNotFound
    from swwae_lightning import experiment
    from swwae_lightning.checkpoints import load_checkpoint
    from swwae_lightning.module import NonFiniteLossError
    from swwae_lightning.run_files import write_yaml

    try:
        cfg = resolve_config(sys.argv[1:] if argv is None else argv)
        if cfg["evaluate"]:
            experiment.evaluate(cfg, cfg["evaluate"])
            return 0
        resume_from = None
        if cfg["resume"]:
            ckpt, run_dir = _find_resume(cfg["resume"], cfg["run_dir"])
            load_checkpoint(ckpt)  # a missing, empty or corrupt file fails here, in one line
            resume_from = str(ckpt)
        else:
            run_dir = _new_run_dir(cfg)
        module, datamodule = experiment.prepare(cfg)  # every input check, before anything is written
        _prepare_run_dir(run_dir, fresh=resume_from is None, is_rank_zero=rank_zero_only.rank == 0)
        cfg["run_dir"] = str(run_dir)
        write_yaml(run_dir / "config.yaml", cfg)
        previous = os.environ.get("SWWAE_RUN_DIR")
        os.environ["SWWAE_RUN_DIR"] = str(run_dir)  # for the DDP processes Lightning launches during fit
        try:
            experiment.fit(cfg, run_dir, module, datamodule, resume_from)
        finally:
            if previous is None:
                os.environ.pop("SWWAE_RUN_DIR", None)
            else:
                os.environ["SWWAE_RUN_DIR"] = previous
        return 0
    except (CLIError, ValueError, DatasetNotFound, MisconfigurationException, ImportError, OSError) as error:
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    except SIGTERMException:  # last.ckpt is saved; a scheduler must not read this as success
        return 128 + signal.SIGTERM
    except NonFiniteLossError as error:
        print(f"error: {error}; the last good checkpoint is untouched (resume with --resume last)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
