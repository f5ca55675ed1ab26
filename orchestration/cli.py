"""Command line for SWWAE experiments: `python train.py --help` lists every flag with its default.

``train.py`` at the repository root and ``python -m orchestration.cli`` both run ``main``.

Precedence, lowest first: built-in defaults < the run's own config.yaml (with
--resume) or the checkpoint's config (with --evaluate) < --config FILE.yaml < flags.
Plugins named in any of these are imported before any of them is read; a checkpoint's are
imported only where the command line chose them too (see ``plugins``).

Errors by kind: bad input (settings, files, checkpoints, data found before training
starts) ends with one line on stderr and exit status 2, and nothing is written before
the input is known to be good. An exception once training has started is a bug, not
bad input: its traceback, exit status 1, and a line saying how to resume.
"""

from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import traceback
from pathlib import Path

import yaml

from swwae_lightning import settings as S

from . import plugins
from .run_directory import RunDirectory, find_resume


class CLIError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise CLIError(message)


def build_parser() -> argparse.ArgumentParser:
    """One flag per declared setting (see ``settings``), plus ``--config``."""
    plugins.declare_all_settings()
    p = _Parser(description=__doc__.splitlines()[0], argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="YAML file of flag values (snake_case or kebab-case keys); flags override it")
    S.add_arguments(p)
    return p


def _read_config_file(path: str) -> dict:
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
        if dest not in S.SETTINGS:
            close = difflib.get_close_matches(dest, S.SETTINGS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise CLIError(f"config file {path!r}: unknown key {key!r}{hint}")
        try:
            config[dest] = S.convert(S.SETTINGS[dest], value, f"config file {path!r}: {key}:")
        except ValueError as error:
            raise CLIError(str(error)) from None
    return config


_named: dict[str, dict] = {}  # the checkpoint --evaluate or --predict names, read once for the command


def read_named(path: str) -> dict:
    """The checkpoint a command names: its plugins, its settings and its weights come from one read."""
    if path not in _named:
        from .checkpoints import load_checkpoint

        _named.clear()
        _named[path] = load_checkpoint(path)
    return _named[path]


def load_requested_plugins(argv: list[str]) -> list[str]:
    """Import every plugin the command chooses, before any setting is parsed (a plugin declares settings):
    ``--plugins``, the ``--config`` file's ``plugins:``, the resumed run's config.yaml, and those handed down
    by the process that started this one. The checkpoint of ``--evaluate`` or ``--predict`` came from
    elsewhere: the plugins it names must be among those (or installed), or the command ends in one line."""
    pre = _Parser(add_help=False, allow_abbrev=False, argument_default=argparse.SUPPRESS)
    pre.add_argument("--plugins", nargs="+")
    for flag in ("--config", "--resume", "--run-dir", "--run_dir", "--evaluate", "--predict"):
        pre.add_argument(flag)
    known = vars(pre.parse_known_args(argv)[0])
    specs = plugins.plugins_value(known.get("plugins", []))
    files = [Path(known["config"])] if "config" in known else []
    if "resume" in known:
        files.append(find_resume(known["resume"], known.get("run_dir"))[1] / "config.yaml")
    for path in files:
        specs += plugins.named_in_config(path)
    chosen = plugins.load(specs + plugins.from_environment())
    for reads in ("evaluate", "predict"):
        if reads in known:
            named = read_named(known[reads]).get("swwae_config", {}).get("plugins")
            chosen += plugins.require_chosen(named, f"checkpoint {known[reads]!r}")
    return list(dict.fromkeys(chosen))


def resolve_config(argv: list[str]) -> dict:
    """Defaults < the run's config.yaml (--resume) or the checkpoint's config (--evaluate) < --config < flags."""
    requested = load_requested_plugins(argv)
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    config = S.defaults()
    if given.get("resume"):
        run_config = find_resume(given["resume"], given.get("run_dir"))[1] / "config.yaml"
        if run_config.is_file():
            config.update(_read_config_file(str(run_config)))
    started_from = config["finetune_from"]  # a resumed fine-tuned run's own starting weights: history, not a request
    for reads in ("evaluate", "predict"):  # the checkpoint's own data and preprocessing
        if given.get(reads):
            saved = read_named(given[reads]).get("swwae_config", {})
            config.update({k: v for k, v in saved.items() if k in S.SETTINGS and k not in ("evaluate", "predict")})
    if "config" in given:
        config_file = given.pop("config")
        config.update(_read_config_file(config_file))
        config.setdefault("wandb_group", None)
        if config["wandb_group"] is None:  # the seeds of one config group together on the W&B dashboard
            config["wandb_group"] = Path(config_file).stem
    config.update(given)
    try:
        config = S.check_all(config)  # the values each setting allows, checked once for every source
    except ValueError as error:
        raise CLIError(str(error)) from None
    if config["resume"] and config["finetune_from"] != started_from:
        raise CLIError("--resume continues a run and --finetune-from starts a new one: give only one")
    config["plugins"] = requested  # every source's, so that config.yaml brings them all back
    return config


def _keep_preprocessing(cfg: dict, checkpoint: dict, who: str) -> None:
    """A resumed or fine-tuned model sees a folder's images as it was trained to: its image size and
    channels (its mean and std are the DataModule's to restore), or one line."""
    from datamodules.datasets import DATASETS

    saved = checkpoint.get("SemiSupervisedDataModule", {}).get("preprocessing")
    if not saved or not DATASETS[cfg["dataset"]].from_files:
        return
    for name in ("image_size", "channels"):
        if cfg[name] is not None and cfg[name] != saved[name]:
            raise CLIError(
                f"--{name.replace('_', '-')} {cfg[name]} differs from the checkpoint's {saved[name]}: "
                f"{who} keeps the preprocessing its model was trained with"
            )
        cfg[name] = saved[name]


def _resume_hint(run_dir: Path) -> str:
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return f"the last good checkpoint is untouched; resume with: python train.py --run-dir {run_dir} --resume last"
    return "no checkpoint was saved before it"


class _Environment:
    """Variables set for the processes a run starts (DDP ranks, sweeps), restored when it ends."""

    def __init__(self, **values: str):
        self.values, self.previous = values, {k: os.environ.get(k) for k in values}

    def __enter__(self):
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for key, value in self.previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(argv: list[str] | None = None) -> int:
    from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from datamodules.sources import DatasetNotFound
    from swwae_lightning.module import NonFiniteLossError

    from . import training
    from .checkpoints import load_checkpoint
    from .run_files import RunRecord
    from .trainer import build_trainer

    run = None
    _named.clear()  # a file named by an earlier command in this process may have changed since
    try:  # input: everything that can be wrong before a training step is taken
        cfg = resolve_config(sys.argv[1:] if argv is None else argv)
        if cfg["evaluate"]:
            training.evaluate(cfg, cfg["evaluate"], read_named(cfg["evaluate"]))
            return 0
        if cfg["predict"]:
            from .predict import predict

            predict(cfg, read_named(cfg["predict"]))
            return 0
        source, started = None, None
        run = RunDirectory(cfg)  # found, and the checkpoint it resumes from read
        run_dir, resume_from, resumed = run.path, run.resume_from, run.resumed
        if resume_from:
            _keep_preprocessing(cfg, resumed, "a resumed run")
        if cfg["finetune_from"] and not resume_from:  # a resumed run restores its weights and record instead
            source = load_checkpoint(cfg["finetune_from"])  # the one read of the file
            _keep_preprocessing(cfg, source, "a fine-tuned run")
            started = RunRecord.started_from(cfg["finetune_from"], source)
        module, datamodule = training.prepare(cfg, source)  # every input check, before anything is written
        del source  # not held in memory through training
        if resume_from:
            datamodule.check_same_files(resumed.get("SemiSupervisedDataModule", {}))
        cfg.update(training.resolved_data_settings(datamodule))  # a folder's image size and channels, as found
        # Held until main returns (or the process dies): a second process can neither start nor resume here.
        run.open(cfg, is_rank_zero=rank_zero_only.rank == 0)
        trainer = build_trainer(cfg, run_dir, resumed.get("wandb_run_id"), finetuned_from=started)  # the same W&B run
    except (CLIError, ValueError, DatasetNotFound, MisconfigurationException, ImportError, OSError) as error:
        if run is not None:
            run.close()
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    # training: the DDP processes Lightning launches find the run directory and the plugins here
    try:
        with _Environment(SWWAE_RUN_DIR=str(run_dir), **{plugins.ENVIRONMENT: os.pathsep.join(cfg["plugins"])}):
            training.fit(cfg, run_dir, module, datamodule, resume_from, trainer=trainer)
        return 0
    except SIGTERMException:  # last.ckpt is saved; a scheduler must not read this as success
        return 128 + signal.SIGTERM
    except NonFiniteLossError as error:
        print(f"error: {error}; {_resume_hint(run_dir)}", file=sys.stderr)
        return 1
    except Exception as error:  # a bug (ours or a plugin's), not bad input: it needs its traceback
        traceback.print_exc()
        said = str(error).strip().splitlines()
        print(
            f"error: training stopped by {type(error).__name__}{': ' + said[0] if said else ''}; "
            f"{_resume_hint(run_dir)}",
            file=sys.stderr,
        )
        return 1
    finally:
        run.close()


if __name__ == "__main__":
    sys.exit(main())
