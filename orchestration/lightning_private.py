"""The one place this project relies on private parts of Lightning.

Lightning's CSV writer deletes an existing ``metrics.csv`` in its private
``_check_log_dir_exists``, and has no public hook to append instead; a resumed run must keep
its earlier rows. If a Lightning release renames or drops what the override uses, importing
this module fails with a message saying so, instead of a resumed run silently losing its metrics.

Lightning's WandbLogger always passes ``anonymous`` to ``wandb.init``, which W&B answers with a
deprecation warning the user cannot act on; the logger's private init arguments are the only
place to leave it out. If they move, the warning comes back and nothing else changes.
"""

from __future__ import annotations

import csv
import os
import tempfile

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


def check_csv_writer(writer_class: type = ExperimentWriter) -> None:
    """Raise ImportError naming what is missing from Lightning's CSV writer, if anything is."""
    with tempfile.TemporaryDirectory() as log_dir:
        writer = writer_class(log_dir=log_dir)
    missing = [
        name
        for name, holder in (
            ("_check_log_dir_exists", writer_class),
            ("metrics_file_path", writer),
            ("metrics_keys", writer),
        )
        if not hasattr(holder, name)
    ]
    if missing:
        raise ImportError(
            f"pytorch_lightning {pl.__version__}'s CSV ExperimentWriter no longer has "
            f"{', '.join(missing)}: orchestration.lightning_private must be updated so a resumed "
            f"run keeps its metrics.csv"
        )


check_csv_writer()


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but a resumed run appends to metrics.csv instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        # Start from the existing header so that the columns of the earlier rows are kept.
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


def without_anonymous(logger: WandbLogger) -> WandbLogger:
    """``logger`` with W&B's deprecated ``anonymous`` argument left out of its ``wandb.init`` call."""
    init_arguments = getattr(logger, "_wandb_init", None)
    if isinstance(init_arguments, dict):
        init_arguments.pop("anonymous", None)
    return logger
