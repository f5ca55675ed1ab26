"""What both studies share: train (or reuse) a run with train.py, load its network, read test images."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from datamodules.datasets import DATASETS
from orchestration.checkpoints import load_checkpoint
from orchestration.training import result_settings
from swwae_lightning import settings as S
from swwae_lightning.module import SWWAEModule
from swwae_lightning.network import StackedWhatWhere

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"


def train_or_reuse(argv: list[str], run_dir: Path) -> Path:
    """Run ``train.py argv --run-dir run_dir`` in this process; returns the run's last.ckpt.

    A finished run (results.json) is reused as it is, an interrupted one is resumed, so a
    study can be rerun to redo only its tables and pictures.
    """
    from orchestration.cli import main

    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / "results.json").is_file() and last.is_file():
        print(f"reusing the finished run {run_dir} (delete it to train again)", flush=True)
        return last
    argv = [*argv, "--run-dir", str(run_dir)] + (["--resume", "last"] if last.is_file() else [])
    print(f"python train.py {' '.join(argv)}", flush=True)
    code = main(argv)  # it restores SWWAE_RUN_DIR itself, so the next run here starts clean
    if code != 0 or not last.is_file():
        raise RuntimeError(f"train.py {' '.join(argv)} failed (exit status {code}); see the messages above")
    return last


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file as given, or a run directory's checkpoints/last.ckpt (its final weights)."""
    path = Path(path)
    return path / "checkpoints" / "last.ckpt" if path.is_dir() else path


def load_network(path: str | Path) -> tuple[StackedWhatWhere, dict]:
    """The trained network (eval mode) and the run's resolved config, from a run directory or a checkpoint."""
    checkpoint = load_checkpoint(checkpoint_path(path))
    module = SWWAEModule.from_settings(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return module.net.eval(), checkpoint.get("swwae_config", {})


def load_test_images(config: dict, limit: int | None = None) -> tuple[Tensor, tuple, tuple]:
    """The first ``limit`` images of the official test split as float [0, 1], and the dataset's mean and std."""
    config = {**S.defaults(["data"]), **config}  # a config written before a data setting existed
    info = DATASETS[config["dataset"]]
    splits = info.load(Path(config["data_dir"]), download=config["download"], include_extra=False)
    images = splits.test_images[:limit] if limit else splits.test_images
    return images.float() / 255, info.mean, info.std


def training_settings(models: list[tuple[str, dict]]) -> list[str]:
    """Markdown: each model's settings that can change a result, read from its checkpoint, a column per model.

    A study's figures depend on how its models were trained; the configs and the defaults may
    change after the report is written, the checkpoint's record of the run does not.
    """
    names = list(dict.fromkeys(name for _, config in models for name in result_settings(config)))
    lines = [
        "## Training settings",
        "",
        "Each trained model's settings that can change a result, as its checkpoint records them.",
        "",
        "| setting | " + " | ".join(label for label, _ in models) + " |",
        "| --- |" + " --- |" * len(models),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{config.get(name, '—')}" for _, config in models) + " |")
    return lines + [""]


def parse_study_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The study's own options, and everything else (after an optional '--') for train.py."""
    args, train_args = parser.parse_known_args(argv)
    return args, train_args[1:] if train_args[:1] == ["--"] else train_args


def run_and_report(study: Callable[[], object], out_dir: str | Path, stem: str) -> int:
    """Run a study; one error line and exit status 1 if it fails, else say which files it wrote."""
    try:
        study()
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {Path(out_dir) / (stem + '.md')} and {Path(out_dir) / (stem + '.png')}")
    return 0
