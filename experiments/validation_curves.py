"""Validation error after each epoch of several runs side by side: the table to tune on.

    python -m experiments.validation_curves RUN_DIR... --out reports/mnist-100-tuning

Reads each run's ``config.yaml`` and ``metrics.csv`` and writes ``validation.json`` and
``validation.md``: the settings in which the runs differ, the epochs each ran (a run stopped
early says so) and its validation error after each epoch. The test error is left out on
purpose, so that a choice made from this table is made on the validation split.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

from orchestration import results
from swwae_lightning import settings as S


def read_run(run_dir: Path) -> dict:
    """One run's settings (defaults filled in, and as the report compares them), whether it finished,
    and its validation error per epoch."""
    for name in ("config.yaml", "metrics.csv"):
        if not (run_dir / name).is_file():
            raise ValueError(f"{run_dir} has no {name}: give run directories that train.py wrote with --logger csv")
    run = results.Run(run_dir, yaml.safe_load((run_dir / "config.yaml").read_text()) or {}, results={})
    by_epoch: dict[int, float] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val/error"):  # a resumed run may repeat an epoch: its last value counts
                by_epoch[int(row["epoch"])] = float(row["val/error"])
    return {
        "run": run_dir.name,
        "config": {**S.defaults(), **run.config},
        "compared": dict(results.setting_values(run, S.bookkeeping())),
        "finished": (run_dir / "results.json").is_file(),
        "val_error": [by_epoch[e] for e in sorted(by_epoch)],
    }


def differing_settings(runs: list[dict]) -> list[str]:
    """The settings (bookkeeping such as paths and loggers aside) whose value is not the same in every run."""
    names = sorted(set().union(*(r["compared"] for r in runs)))
    return [n for n in names if len({r["compared"].get(n) for r in runs}) > 1]


def summarize(run_dirs: list[Path]) -> dict:
    runs = [read_run(Path(d)) for d in run_dirs]
    differ = differing_settings(runs)
    return {
        "differing_settings": differ,
        "runs": [
            {
                "run": r["run"],
                "settings": {n: r["config"].get(n) for n in differ},
                "finished": r["finished"],
                "max_epochs": r["config"].get("max_epochs"),
                "val_error": r["val_error"],
            }
            for r in runs
        ],
    }


def markdown(summary: dict) -> str:
    lines = [
        "| run | settings that differ | epochs | validation error % after each epoch | last |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in summary["runs"]:
        settings = ", ".join(f"{k} {v}" for k, v in r["settings"].items()) or "—"
        epochs = f"{len(r['val_error'])} of {r['max_epochs']}" + ("" if r["finished"] else ", stopped")
        errors = " / ".join(f"{100 * e:.2f}" for e in r["val_error"])
        last = f"{100 * r['val_error'][-1]:.2f}" if r["val_error"] else "—"
        lines.append(f"| {r['run']} | {settings} | {epochs} | {errors} | {last} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (config.yaml and metrics.csv)")
    parser.add_argument("--out", type=Path, required=True, help="folder for validation.json and validation.md")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.runs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = markdown(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "validation.md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
