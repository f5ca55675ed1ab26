"""The class-mismatch study after its runs: find the pool's unknown images with each run, archive, plot.

    python -m experiments.class_mismatch runs/mnist-class-mismatch --out reports/mnist-class-mismatch

The runs come from a sweep plan such as ``configs/sweeps/mnist-class-mismatch.yaml``, on trees written
by ``datamodules.export_mismatch`` (their ``data_dir`` must still be there). For each finished run this
predicts its own pool with its best checkpoint (``--predict``), scores that against the pool's hidden
truth (``experiments.unknown_detection``) into ``unknown_detection.json`` beside the run, archives the
run files under ``--out/runs``, and draws the test error on the known classes against the share of
unknown images, one line per method (``error_vs_mismatch.png``). The tables are
``orchestration.mismatch``'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.unknown_detection import detection
from orchestration.mismatch import DETECTION, cells, error_table, methods_and_shares
from orchestration.report import archive_runs
from orchestration.results import find_runs


def detect(run_dir: Path, tree: Path) -> None:
    """The run's own pool, predicted with its best checkpoint and scored against the tree's truth."""
    from orchestration.cli import main

    pool = run_dir / "pool.csv"
    if main(["--predict", str(run_dir / "checkpoints" / "best.ckpt"), "--out", str(pool)]) != 0:
        raise RuntimeError(f"--predict of {run_dir} failed; see the messages above")
    (run_dir / DETECTION).write_text(json.dumps(detection(pool, tree), indent=2) + "\n")


def plot(report_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = cells(report_dir)
    methods, shares = methods_and_shares(table)
    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    for method in methods:
        points = [(s, [r["test"] for r in table.get((method, s), [])]) for s in shares]
        points = [(s, errors) for s, errors in points if errors]
        means = [sum(e) / len(e) for _, e in points]
        axes.plot([s for s, _ in points], means, marker="o", label=method)
    axes.set_xlabel("unknown-class share of the unlabeled pool (%)")
    axes.set_ylabel("test error on the known classes (%)")
    axes.set_xticks(shares)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    out = report_dir / "error_vs_mismatch.png"
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the folder of the study's run directories")
    parser.add_argument("--out", type=Path, required=True, help="the study's folder under reports/")
    args = parser.parse_args(argv)
    try:
        runs = find_runs([args.runs])
        for run in runs:
            if not (run.path / DETECTION).is_file():
                detect(run.path, Path(run.config["data_dir"]))
        archive_runs(runs, args.out)
        picture = plot(args.out)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(error_table(args.out) + f"\nwrote {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
