"""The private parts of Lightning this project relies on are checked, and a change to them fails loudly."""

import os
import subprocess
import sys

import pytest
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from orchestration import lightning_private


def test_the_installed_lightning_has_what_the_metrics_csv_override_uses():
    lightning_private.check_csv_writer()  # what importing the module does; raises if anything is missing
    # the override replaces a method Lightning's writer really has (and calls when it opens metrics.csv)
    assert callable(getattr(ExperimentWriter, "_check_log_dir_exists", None))
    assert "_check_log_dir_exists" in vars(lightning_private.AppendingWriter)


def test_a_lightning_without_it_fails_at_import_naming_what_is_missing():
    class Renamed(ExperimentWriter):
        def __init__(self, log_dir):
            pass  # sets neither metrics_file_path nor metrics_keys

    with pytest.raises(ImportError, match=r"no longer has metrics_file_path, metrics_keys: orchestration"):
        lightning_private.check_csv_writer(Renamed)


def test_a_resumed_run_appends_to_metrics_csv_keeping_its_columns(tmp_path):
    first = lightning_private.AppendingWriter(log_dir=str(tmp_path))
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.save()
    second = lightning_private.AppendingWriter(log_dir=str(tmp_path))  # a resume opens it again
    second.log_metrics({"train/loss": 0.5, "val/error": 0.2}, step=1)
    second.save()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == ["step", "train/loss", "val/error"] and len(rows) == 3


def test_an_offline_wandb_run_starts_without_the_anonymous_deprecation_warning(tmp_path):
    # W&B warns once per process and WANDB_SILENT hides it, so the run starts in a fresh, unsilenced process.
    script = (
        f"from pathlib import Path\nfrom swwae_lightning import settings\n"
        f"from orchestration import tracking\n"
        f"config = dict(settings.defaults(), dataset='mnist', labels=100, mode='semi')\n"
        f"logger = tracking.wandb_logger(Path({str(tmp_path)!r}), config, None)\n"
        f"logger.experiment.finish()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Tracking run with wandb" in result.stderr + result.stdout  # W&B spoke, so its warnings would show
    assert "anonymous" not in result.stderr + result.stdout
