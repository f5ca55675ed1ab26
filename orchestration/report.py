"""Results tables and plots from finished runs, and the seed sweeps that produce them.

    python -m orchestration.report RUNS_DIR... --out reports/
    python -m orchestration.report --sweep configs/mnist-100.yaml --seeds 0 1 2 \
        --out reports/ [-- TRAIN.PY OPTIONS]
    python -m orchestration.report --plan configs/sweeps/mnist-100.yaml --jobs 8 \
        --out reports/sweep-mnist-100

The rows come from ``results``, the figure from ``results_plot``, the runs from ``sweep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from . import ledger, plugins
from .results import Run, difference_text, error_text, find_runs, labels_text, model_text, summarize
from .results_plot import plot_error_vs_labels
from .sweep import plan_configs, sweep


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| experiment | dataset | labels | model | steps | n seeds | test error % (mean ± std) | per seed "
        "| vs baseline, same seeds (points) | what-where terms' effect, same seeds | paper error % | minutes (mean) "
        "| hardware |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cells = [
            row["experiment"],
            row["dataset"],
            labels_text(row),
            model_text(row),
            f"{row['steps']:,}",
            len(row["errors"]),
            error_text(row),
            " / ".join(f"{e:.2f}" for e in row["errors"]),
            difference_text(row["vs_baseline"]),
            difference_text(row["vs_without_what_where"]),
            row["paper_note"] or "—",
            f"{row['minutes_mean']:.1f}",
            "; ".join(row["hardware"]),
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


# small: what a table is recomputed from (the class-mismatch study's pool detection where a run has it)
RUN_FILES = ("config.yaml", "split.json", "results.json", "unknown_detection.json")


def archive_runs(runs: list[Run], out_dir: Path) -> None:
    """Copy each run's ``RUN_FILES`` to out_dir/runs/<run directory's name>/,
    so a committed report keeps the files behind every number (run directories are not committed), and
    its test reads to the archive's ledger, so the record of who saw which test error travels with them."""
    archived = out_dir / "runs" / ledger.LEDGER
    for run in runs:
        target = out_dir / "runs" / run.path.name
        if target.resolve() == run.path.resolve():
            continue  # already the archived copy
        target.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (run.path / name).is_file():
                shutil.copyfile(run.path / name, target / name)
        known = ledger.entries(archived)
        read = [e for e in ledger.entries(run.path.parent / ledger.LEDGER) if e["run"] == run.path.name]
        with open(archived, "a") as handle:
            handle.writelines(json.dumps(e) + "\n" for e in read if e not in known)


def without_archived_twins(runs: list[Run], out_dir: Path) -> list[Run]:
    """Runs given both as their run directory and as its copy already archived in ``out_dir`` count once
    (the directory), so the archiving command can be repeated over the same runs."""
    archive = (out_dir / "runs").resolve()
    sources = {run.path.name for run in runs if run.path.resolve().parent != archive}
    return [run for run in runs if run.path.resolve().parent != archive or run.path.name not in sources]


def write_report(run_paths: list[str | Path], out_dir: str | Path) -> list[dict]:
    """results.md, error_vs_labels.png and the runs' small files in ``out_dir``; returns the table's rows."""
    out_dir = Path(out_dir)
    runs = without_archived_twins(find_runs(run_paths), out_dir)
    if not runs:
        raise ValueError(f"no finished runs (results.json + config.yaml) in {', '.join(map(str, run_paths))}")
    rows = summarize(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive_runs(runs, out_dir)
    header = (
        "# Results\n\n"
        f"{len(runs)} runs in {len(rows)} experiments. Test error on the official test split; "
        "± is the sample standard deviation over seeds (— for one seed). Steps: optimizer steps per run; "
        "minutes: training wall-clock per run, a fine-tuned row's including its pretraining. "
        "vs baseline: the run's test error minus that of the supervised-only "
        "baseline with the same settings and seed (the seed draws the labeled subset), mean ± std over the shared "
        "seeds (their number in brackets); negative: the row is better. What-where terms' effect: for a row that adds "
        "reconstruction or swap terms to another objective, its error minus that objective's alone, and for a row "
        "fine-tuned from a pretraining, its error minus the same training from scratch, seed by seed. "
        "The runs' config.yaml, split.json and results.json are in runs/ beside this file.\n\n"
    )
    (out_dir / "results.md").write_text(header + markdown_table(rows))
    plot_error_vs_labels(rows, out_dir / "error_vs_labels.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="In --sweep mode, options after a lone -- go to train.py, "
        "e.g. --sweep configs/mnist-100.yaml -- --logger csv",
    )
    parser.add_argument("runs", nargs="*", help="run directories, or folders holding them")
    parser.add_argument(
        "--out", default="reports", help="where results.md and error_vs_labels.png go (default: reports)"
    )
    parser.add_argument("--sweep", nargs="+", metavar="CONFIG", help="train these configs first, once per seed")
    parser.add_argument(
        "--plan", help="train every variant of this sweep plan (YAML: base config + variants), once per seed"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of --sweep/--plan (default: 0 1 2)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="train.py processes at once in --sweep/--plan (default: 1)")
    parser.add_argument("--runs-root", default="runs", help="where --sweep puts its run directories (default: runs)")
    parser.add_argument(
        "--plugins",
        nargs="+",
        default=[],
        metavar="PATH_OR_MODULE",
        help="files or modules to import first (their terms and settings); passed on to every run",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if train_args and not (args.sweep or args.plan):
        parser.error(f"options for train.py ({' '.join(train_args)}) need --sweep or --plan")
    if not args.runs and not args.sweep and not args.plan:
        parser.error("give run directories, --sweep CONFIG or --plan PLAN")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give 1 or more processes")
    paths, failures = list(args.runs), []
    try:
        plugin_specs = plugins.load(args.plugins)
        configs = list(args.sweep or []) + (plan_configs(args.plan, args.runs_root) if args.plan else [])
        for config in configs:  # the caller's own files: their plugins are chosen, as train.py --config's are
            plugins.load(plugins.named_in_config(Path(config)))
    except (ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if configs:
        run_dirs, failures = sweep(configs, args.seeds, args.runs_root, train_args, args.jobs, plugin_specs)
        paths += [d for d in run_dirs if (d / "results.json").is_file()]
    try:
        rows = write_report(paths, args.out)
    except (ValueError, FileNotFoundError, ImportError) as error:  # ImportError: a run names a plugin not chosen
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(rows), end="")
    print(f"wrote {Path(args.out) / 'results.md'} and {Path(args.out) / 'error_vs_labels.png'}")
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
