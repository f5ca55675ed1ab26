"""Results tables and plots from finished runs, and seed sweeps that produce them.

    python -m swwae_lightning.report RUNS_DIR... --out reports/
    python -m swwae_lightning.report --sweep configs/mnist-100.yaml --seeds 0 1 2 --out reports/ [-- TRAIN.PY OPTIONS]
    python -m swwae_lightning.report --plan configs/sweeps/mnist-100.yaml --jobs 8 --out reports/sweep-mnist-100
    python -m swwae_lightning.report --check-readme README.md      # (or --update-readme README.md): readme_tables

A run directory is one with ``results.json`` and ``config.yaml`` (what ``train.py``
leaves); a RUNS_DIR may also be a folder of them. Runs are grouped into experiments
by every setting that can change the result except the seed, and each experiment
becomes one row: mean ± sample std (ddof=1) of the test error over its seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import plugins
from . import settings as S
from .objectives import TERMS, active_terms, is_baseline

S.register_settings_modules()  # every setting's default, for runs whose config predates it

# The paper's figures (docs/model.md, "Claims and reported figures"), test error in %, for the standard
# model (hard pooling, unpooling with the where, lambda > 0): (dataset, labels or None for all, mode) -> (error, note).
PAPER_ERRORS: dict[tuple[str, int | None, str], tuple[float, str]] = {
    ("mnist", 100, "semi"): (9.0, "≈ 9 (recalled, not verified)"),
    ("svhn", 1000, "semi"): (27.83, "27.83 (23.56 with dropout)"),
    ("stl10", 1000, "semi"): (25.67, "25.67 (74.33 % acc.)"),
    ("cifar10", None, "supervised"): (7.8, "7.8 (92.2 % acc.)"),
    ("cifar100", None, "supervised"): (30.9, "30.9 (69.1 % acc.)"),
}

@dataclass
class Run:
    path: Path
    config: dict
    results: dict

    @property
    def settings(self) -> dict:
        """The run's settings: its config.yaml, with the architecture it actually built (null means the preset)."""
        return {**self.config, "arch": self.results.get("arch", self.config.get("arch"))}

    @property
    def is_baseline(self) -> bool:
        return is_baseline(self.settings)


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every finished run in or under ``paths`` (a results.json written by --evaluate has no config.yaml beside it)."""
    runs, seen = [], set()
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        candidates = [path / "results.json"] if (path / "results.json").is_file() else sorted(path.rglob("results.json"))
        for results_file in candidates:
            run_dir = results_file.parent.resolve()
            if run_dir in seen or not (run_dir / "config.yaml").is_file():
                continue
            results = json.loads(results_file.read_text())
            if "test_error" not in results:
                continue
            seen.add(run_dir)
            config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            plugins.load(config.get("plugins") or [])  # the terms and settings the run was trained with
            runs.append(Run(results_file.parent, config, results))
    return runs


def setting_values(run: Run, leave_out: set[str]) -> tuple:
    """The run's settings but ``leave_out`` as sorted (name, repr) pairs that compare equal when the
    settings are the same, defaults filled in for settings its config predates."""
    values = {**S.defaults(), **run.settings}
    # false and 0 (or true and 1) are the same setting: a resumed run's config may hold either.
    return tuple(sorted((k, repr(int(v) if isinstance(v, bool) else v)) for k, v in values.items() if k not in leave_out))


def experiment_key(run: Run) -> tuple:
    """Everything that defines the experiment but the seed (and bookkeeping such as paths and loggers)."""
    return setting_values(run, S.bookkeeping() | {"seed"})


def comparison_key(run: Run) -> tuple:
    """What a run and its baseline share: everything but the seed and the method's settings (what-where, objectives)."""
    return setting_values(run, S.bookkeeping() | {"seed"} | S.method_settings())


def run_name(run: Run) -> str:
    """The run directory's name without its seed or timestamp suffix: runs/mnist-100-seed2 -> mnist-100."""
    name = re.sub(r"-seed\d+$", "", run.path.name)
    return re.sub(r"-(\d{8}-\d{6}|slurm\d+)$", "", name)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1); no std from a single value."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paper_error(run: Run) -> tuple[float, str] | None:
    r = run.settings
    plain_swwae = {t.name for t in active_terms(r)} <= {"rec", "mid"} and r.get("decoder_top", "what") == "what"
    if run.is_baseline or not plain_swwae or r.get("pooling") != "hard" or r.get("unpool") != "where":
        return None
    labels = r.get("labels")
    if labels is None and run.config.get("fold") is not None:
        labels = 1000  # an STL-10 fold
    return PAPER_ERRORS.get((r.get("dataset"), labels, r.get("mode")))


def summarize(runs: list[Run]) -> list[dict]:
    """One row per experiment, sorted by dataset, label count, then SWWAE before its baseline."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(experiment_key(run), []).append(run)
    rows = []
    for members in groups.values():
        members.sort(key=lambda r: r.results.get("seed", 0))
        first = members[0]
        errors = [100 * m.results["test_error"] for m in members]
        mean, std = mean_std(errors)
        paper = paper_error(first)
        names = sorted({run_name(m) for m in members})
        seeds = [m.results.get("seed") for m in members]
        if len(set(seeds)) < len(seeds):
            print(f"warning: {', '.join(names)}: several runs share a seed ({seeds}); each counts as one", file=sys.stderr)
        settings = {**S.defaults(), **first.settings}
        rows.append({
            "experiment": names[0] if len(names) == 1 else " / ".join(names),
            "dataset": settings["dataset"], "labels": settings["labels"], "fold": settings["fold"],
            "mode": settings["mode"], "pooling": settings["pooling"], "unpool": settings["unpool"],
            "terms": {t.name: settings[t.weight.name] for t in active_terms(settings)},
            "decoder_top": settings["decoder_top"], "baseline": first.is_baseline, "seeds": seeds,
            "errors": errors, "error_mean": mean, "error_std": std,
            "paper_error": paper[0] if paper else None, "paper_note": paper[1] if paper else None,
            "steps": round(mean_std([m.results.get("global_step", 0) for m in members])[0]),
            "minutes_mean": mean_std([m.results.get("train_seconds", float("nan")) / 60 for m in members])[0],
            "hardware": sorted({str(m.results.get("hardware", "?")) for m in members}),
            "run_dirs": [str(m.path) for m in members],
            "comparison_key": comparison_key(first),
        })
    add_paired_differences(rows)
    rows.sort(key=lambda r: (r["dataset"], r["labels"] is None, r["labels"] or 0, r["mode"] == "unsupervised",
                             r["baseline"], r["experiment"]))
    return rows


def _labels_text(row: dict) -> str:
    labels = "all" if row["labels"] is None else f"{row['labels']:,}"
    return f"{labels} (fold {row['fold']})" if row["fold"] is not None else labels


def error_text(row: dict) -> str:
    std = "—" if row["error_std"] is None else f"{row['error_std']:.2f}"
    return f"{row['error_mean']:.2f} ± {std}"


def what_where_terms(terms) -> set[str]:
    """Those of ``terms`` (names) that declare they need the decoder: what a what-where network adds."""
    return {name for name in terms if TERMS[name].uses_decoder()}


def _paired(row: dict, other: dict) -> tuple[float, float | None, int] | None:
    """Mean and std over the shared seeds of row's error minus other's, and how many seeds."""
    ours, theirs = dict(zip(row["seeds"], row["errors"])), dict(zip(other["seeds"], other["errors"]))
    shared = sorted(set(ours) & set(theirs))
    return (*mean_std([ours[s] - theirs[s] for s in shared]), len(shared)) if shared else None


def add_paired_differences(rows: list[dict]) -> None:
    """Paired differences, seed by seed (same seed: same labeled subset and data order).

    Seeds draw different labeled subsets, which moves the error by more than the method does at
    100 labels; the paired difference takes that out. Sets, as (mean, std or None, shared seeds) or None:
    row["vs_baseline"], the row minus the baseline with the same other settings; and
    row["vs_without_what_where"], a row that adds what-where terms (those that need the decoder) to other terms
    (FixMatch + SWWAE, say) minus the row with those other terms alone (FixMatch): what the
    what-where terms add on top.
    """
    for row in rows:
        row["vs_baseline"] = row["vs_without_what_where"] = None
        if row["baseline"]:
            continue
        same = [r for r in rows if r["comparison_key"] == row["comparison_key"]]
        baselines = [b for b in same if b["baseline"]]
        if len(baselines) == 1:
            row["vs_baseline"] = _paired(row, baselines[0])
        decoder_terms = what_where_terms(row["terms"])
        rest = {k: v for k, v in row["terms"].items() if k not in decoder_terms}
        if rest and len(rest) < len(row["terms"]):
            without = [r for r in same if r["terms"] == rest]
            if len(without) == 1:
                row["vs_without_what_where"] = _paired(row, without[0])


def difference_text(difference: tuple | None) -> str:
    if difference is None:
        return "—"
    mean, std, n = difference
    return f"{mean:+.2f} ± {'—' if std is None else f'{std:.2f}'} ({n})"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| experiment | dataset | labels | model | steps | n seeds | test error % (mean ± std) | per seed "
        "| vs baseline, same seeds (points) | what-where terms' effect, same seeds | paper error % | minutes (mean) | hardware |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        model = model_text(row)
        lines.append(
            f"| {row['experiment']} | {row['dataset']} | {_labels_text(row)} | {model} | {row['steps']:,} | {len(row['errors'])} "
            f"| {error_text(row)} | {' / '.join(f'{e:.2f}' for e in row['errors'])} | {difference_text(row['vs_baseline'])} "
            f"| {difference_text(row['vs_without_what_where'])} | {row['paper_note'] or '—'} | {row['minutes_mean']:.1f} "
            f"| {'; '.join(row['hardware'])} |"
        )
    return "\n".join(lines) + "\n"


def _uses_decoder(row: dict) -> bool:
    return bool(what_where_terms(row["terms"]))


def model_text(row: dict) -> str:
    if row["baseline"]:
        return f"{row['mode']}, no unlabeled term (baseline)"
    terms = " + ".join(f"{name} {weight:g}" for name, weight in row["terms"].items())
    decoder = (f", {row['pooling']} pool, {row['unpool']} unpool, {row['decoder_top']} top"
               if _uses_decoder(row) else "")
    return f"{row['mode']}{decoder}, λ: {terms}"


def _series_name(row: dict) -> str:
    if row["baseline"]:
        return "supervised-only baseline"
    method = "SWWAE" if set(row["terms"]) <= {"rec", "mid"} else " + ".join(row["terms"])
    extras = [x for x in (_uses_decoder(row) and row["pooling"] != "hard" and f"{row['pooling']} pooling",
                          _uses_decoder(row) and row["unpool"] != "where" and f"{row['unpool']} unpooling",
                          _uses_decoder(row) and row["decoder_top"] != "what" and f"{row['decoder_top']} top") if x]
    return method + (f" ({', '.join(extras)})" if extras else "")


def plot_error_vs_labels(rows: list[dict], path: Path) -> None:
    """Test error against label count, one panel per dataset: SWWAE vs its baseline, paper points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plotted = [r for r in rows if r["labels"] is not None and r["mode"] != "unsupervised"]
    datasets = sorted({r["dataset"] for r in plotted}) or ["(no runs with a labeled subset)"]
    fig = Figure(figsize=(5.5 * len(datasets), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets):
        series: dict[str, list[dict]] = {}
        for row in plotted:
            if row["dataset"] == dataset:
                series.setdefault(_series_name(row), []).append(row)
        for name, members in sorted(series.items()):
            members.sort(key=lambda r: r["labels"])
            ax.errorbar([r["labels"] for r in members], [r["error_mean"] for r in members],
                        yerr=[r["error_std"] or 0 for r in members], marker="o", capsize=4,
                        linestyle="--" if name.startswith("supervised") else "-", label=name)
        paper = sorted((labels, err) for (ds, labels, _), (err, _) in PAPER_ERRORS.items() if ds == dataset and labels)
        if paper:
            ax.scatter(*zip(*paper), marker="*", s=160, color="black", zorder=3, label="paper (SWWAE)")
        ax.set_xscale("log")
        ax.set_xlabel("labeled examples")
        ax.set_ylabel("test error (%)")
        ax.set_title(dataset)
        ax.grid(True, which="both", alpha=0.3)
        if series or paper:
            ax.legend()
    fig.savefig(path, dpi=120)


RUN_FILES = ("config.yaml", "split.json", "results.json")  # small: what a table is recomputed from


def archive_runs(runs: list[Run], out_dir: Path) -> None:
    """Copy each run's config.yaml, split.json and results.json to out_dir/runs/<run directory's name>/,
    so a committed report keeps the files behind every number (run directories are not committed)."""
    for run in runs:
        target = out_dir / "runs" / run.path.name
        if target.resolve() == run.path.resolve():
            continue  # already the archived copy
        target.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (run.path / name).is_file():
                shutil.copyfile(run.path / name, target / name)


def write_report(run_paths: list[str | Path], out_dir: str | Path) -> list[dict]:
    """results.md, error_vs_labels.png and the runs' small files in ``out_dir``; returns the table's rows."""
    runs = find_runs(run_paths)
    if not runs:
        raise ValueError(f"no finished runs (results.json + config.yaml) in {', '.join(map(str, run_paths))}")
    rows = summarize(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive_runs(runs, out_dir)
    header = (
        "# Results\n\n"
        f"{len(runs)} runs in {len(rows)} experiments. Test error on the official test split; "
        "± is the sample standard deviation over seeds (— for one seed). Steps: optimizer steps per run; "
        "minutes: training wall-clock per run. vs baseline: the run's test error minus that of the supervised-only "
        "baseline with the same settings and seed (the seed draws the labeled subset), mean ± std over the shared "
        "seeds (their number in brackets); negative: the row is better. What-where terms' effect: for a row that adds "
        "reconstruction or swap terms to another objective, its error minus that objective's alone, seed by seed. "
        "The runs' config.yaml, split.json and results.json are in runs/ beside this file.\n\n"
    )
    (out_dir / "results.md").write_text(header + markdown_table(rows))
    plot_error_vs_labels(rows, out_dir / "error_vs_labels.png")
    return rows


def plan_configs(plan_file: str | Path, runs_root: str | Path) -> list[Path]:
    """Expand a sweep plan into one config file per variant, under runs_root/configs/.

    A plan is YAML: ``base`` (a config path, relative to the plan's folder or the working directory),
    optional ``common`` settings for every variant, and ``variants``, a mapping of variant name to
    the settings it changes, e.g. ``{baseline: {lambda_rec: 0, lambda_mid: 0}, no-augment: {augment: false}}``.
    Each variant's config is the base with its settings replaced; its runs go to runs_root/<variant>-seed<S>.
    """
    plan_file = Path(plan_file)
    try:
        plan = yaml.safe_load(plan_file.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"sweep plan {plan_file} does not exist") from None
    variants = plan.get("variants") if isinstance(plan, dict) else None
    if not isinstance(variants, dict) or not variants or "base" not in plan:
        raise ValueError(f"sweep plan {plan_file} needs 'base: CONFIG' and 'variants: {{NAME: {{SETTING: VALUE}}}}'")
    base_path = next((p for p in (plan_file.parent / plan["base"], Path(plan["base"])) if p.is_file()), None)
    if base_path is None:
        raise ValueError(f"sweep plan {plan_file}: base config {plan['base']!r} does not exist")
    base = {**(yaml.safe_load(base_path.read_text()) or {}), **(plan.get("common") or {})}
    out_dir = Path(runs_root) / "configs"
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = []
    for name, changes in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(name)) or not isinstance(changes or {}, dict):
            raise ValueError(f"sweep plan {plan_file}: variant {name!r} needs a plain name (letters, digits, . _ -) "
                             f"and a mapping of settings")
        config = out_dir / f"{name}.yaml"
        config.write_text(f"# {name}: {base_path.name} with {changes or 'nothing'} changed (from {plan_file})\n"
                          + yaml.safe_dump({**base, **(changes or {})}, sort_keys=False))
        configs.append(config)
    return configs


def sweep(configs: list[str | Path], seeds: list[int], runs_root: str | Path = "runs",
          train_args: list[str] | None = None, jobs: int = 1, plugin_specs: list[str] | None = None
          ) -> tuple[list[Path], list[str]]:
    """The training command line once per (config, seed) into runs_root/<config>-seed<S>, ``jobs`` at a time,
    each given ``plugin_specs`` (a config's own ``plugins:`` key reaches its run by itself).

    A finished run (results.json) is kept; an interrupted one (last.ckpt, no results.json) is resumed.
    With jobs > 1 each run's output goes to its run directory's train.log instead of the terminal.
    Returns the run directories and a line for each run that failed.
    """
    run_dirs, commands = [], []
    for config in configs:
        for seed in seeds:
            run_dir = Path(runs_root) / f"{Path(config).stem}-seed{seed}"
            run_dirs.append(run_dir)
            if (run_dir / "results.json").is_file():
                print(f"[sweep] {run_dir} is finished; kept", flush=True)
                continue
            command = [sys.executable, "-m", "swwae_lightning.cli", "--config", str(config), "--seed", str(seed),
                       "--run-dir", str(run_dir), *(["--plugins", *plugin_specs] if plugin_specs else []),
                       *(train_args or [])]
            if (run_dir / "checkpoints" / "last.ckpt").is_file():
                command += ["--resume", "last"]
            commands.append((run_dir, command))

    def train(run_dir: Path, command: list[str]) -> str | None:
        print(f"[sweep] {' '.join(command)}", flush=True)
        if jobs == 1:
            code = subprocess.run(command).returncode
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "train.log", "ab") as log:
                code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        return None if code == 0 else f"{run_dir}: train.py exited with status {code}"

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        failures = [line for line in pool.map(lambda job: train(*job), commands) if line]
    return run_dirs, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="In --sweep mode, options after a lone -- go to train.py, "
                                            "e.g. --sweep configs/mnist-100.yaml -- --logger csv")
    parser.add_argument("runs", nargs="*", help="run directories, or folders holding them")
    parser.add_argument("--out", default="reports", help="where results.md and error_vs_labels.png go (default: reports)")
    parser.add_argument("--sweep", nargs="+", metavar="CONFIG", help="train these configs first, once per seed")
    parser.add_argument("--plan", help="train every variant of this sweep plan (YAML: base config + variants), once per seed")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of --sweep/--plan (default: 0 1 2)")
    parser.add_argument("--jobs", type=int, default=1, help="train.py processes at once in --sweep/--plan (default: 1)")
    parser.add_argument("--runs-root", default="runs", help="where --sweep puts its run directories (default: runs)")
    parser.add_argument("--plugins", nargs="+", default=[], metavar="PATH_OR_MODULE",
                        help="files or modules to import first (their terms and settings); passed on to every run")
    parser.add_argument("--check-readme", metavar="README", help="recompute the README's marked tables (results and "
                        "benchmarks) from the files committed under reports/; exit 1 naming each table that differs")
    parser.add_argument("--update-readme", metavar="README", help="rewrite the README's marked tables from them")
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.check_readme or args.update_readme:
        from .readme_tables import check_readme, update_readme  # it builds on this module

        if args.update_readme:
            print(f"rewrote {update_readme(args.update_readme)} table(s) of {args.update_readme}")
        mismatches = check_readme(args.check_readme or args.update_readme)
        for line in mismatches:
            print(f"error: {line}", file=sys.stderr)
        return 1 if mismatches else 0
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
    except (ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if configs:
        run_dirs, failures = sweep(configs, args.seeds, args.runs_root, train_args, args.jobs, plugin_specs)
        paths += [d for d in run_dirs if (d / "results.json").is_file()]
    try:
        rows = write_report(paths, args.out)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(rows), end="")
    print(f"wrote {Path(args.out) / 'results.md'} and {Path(args.out) / 'error_vs_labels.png'}")
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
