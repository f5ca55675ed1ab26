"""Finished runs grouped into experiments: one row per experiment, with its paired differences.

A run directory is one with ``results.json`` and ``config.yaml`` (what ``train.py`` leaves); a
folder may hold many. Runs are grouped by every setting that can change the result except the
seed, and each experiment becomes one row: mean ± sample std (ddof=1) of the test error over
its seeds, and its difference from its baseline seed by seed.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import scipy.stats
import yaml

from datamodules.datasets import DATASETS
from swwae_lightning import settings as S
from swwae_lightning.objectives import TERMS, active_terms, is_baseline

from . import plugins
from .run_files import experiment_name

plugins.declare_all_settings()  # every setting's default, for runs whose config predates it

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
        """The run's settings: its config.yaml over the declared defaults (for settings it predates), with the
        architecture it actually built (null in the config means the preset). A fine-tuned run's starting
        weights are named by the experiment they came from, so its seeds make one experiment."""
        settings = {**S.defaults(), **self.config, "arch": self.results.get("arch", self.config.get("arch"))}
        if settings["finetune_from"]:  # RUN/checkpoints/last.ckpt or RUN/weights/best.ckpt -> RUN less its seed
            settings["finetune_from"] = experiment_name(Path(settings["finetune_from"]).parent.parent.name)
        return settings

    @property
    def minutes(self) -> float:
        """Training minutes, those of the weights it was fine-tuned from included (NaN where unknown)."""
        source = self.results.get("finetuned_from")
        seconds = [self.results.get("train_seconds"), *([source.get("train_seconds")] if source else [])]
        return float("nan") if None in seconds else sum(seconds) / 60

    @property
    def is_baseline(self) -> bool:
        return is_baseline(self.settings)


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every finished run in or under ``paths`` (a results.json written by --evaluate has no config.yaml beside it)."""
    runs, seen = [], set()
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        candidates = (
            [path / "results.json"] if (path / "results.json").is_file() else sorted(path.rglob("results.json"))
        )
        for results_file in candidates:
            run_dir = results_file.parent.resolve()
            if run_dir in seen or not (run_dir / "config.yaml").is_file():
                continue
            results = json.loads(results_file.read_text())
            if "test_error" not in results:
                continue
            seen.add(run_dir)
            config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            # the terms and settings the run was trained with: its plugins, if the reader chose them
            plugins.require_chosen(config.get("plugins"), f"run folder {str(run_dir)!r}")
            runs.append(Run(results_file.parent, config, results))
    return runs


def setting_values(run: Run, leave_out: set[str]) -> tuple:
    """The run's settings but ``leave_out`` as sorted (name, repr) pairs that compare equal when the
    settings are the same, defaults filled in for settings its config predates."""
    values = run.settings
    # false and 0 (or true and 1) are the same setting: a resumed run's config may hold either.
    return tuple(
        sorted((k, repr(int(v) if isinstance(v, bool) else v)) for k, v in values.items() if k not in leave_out)
    )


def bookkeeping(run: Run) -> set[str]:
    """The settings that do not change what ``run`` learned. A dataset read from files is the folder
    ``data_dir`` names, so there the folder is the data: two trees are two experiments."""
    name = run.settings["dataset"]
    from_files = name in DATASETS.names() and DATASETS[name].from_files
    return S.bookkeeping() - {"data_dir"} if from_files else S.bookkeeping()


def experiment_key(run: Run) -> tuple:
    """Everything that defines the experiment but the seed (and bookkeeping such as paths and loggers)."""
    return setting_values(run, bookkeeping(run) | {"seed"})


def comparison_key(run: Run) -> tuple:
    """What a run and its baseline share: everything but the seed and the method's settings (what-where,
    objectives, the pretraining it was fine-tuned from)."""
    return setting_values(run, bookkeeping(run) | {"seed", "finetune_from"} | S.method_settings())


def run_name(run: Run) -> str:
    """The run directory's name without its seed or timestamp suffix: runs/mnist-100-seed2 -> mnist-100."""
    return experiment_name(run.path.name)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1); no std from a single value."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paper_error(run: Run) -> tuple[float, str] | None:
    r = run.settings
    plain_swwae = {t.name for t in active_terms(r)} <= {"rec", "mid"} and r["decoder_top"] == "what"
    if run.is_baseline or not plain_swwae or r["pooling"] != "hard" or r["unpool"] != "where":
        return None
    labels = r["labels"]
    if labels is None and r["fold"] is not None:
        labels = 1000  # an STL-10 fold
    return PAPER_ERRORS.get((r["dataset"], labels, r["mode"]))


def _resumed_text(run: Run) -> str:
    resumed = run.results.get("resumed_at_steps")
    return f" (resumed at step {', '.join(map(str, resumed))})" if resumed else ""


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
            print(
                f"warning: {', '.join(names)}: several runs share a seed ({seeds}); each counts as one", file=sys.stderr
            )
        steps = [m.results.get("global_step") for m in members]
        if len(set(steps)) > 1:  # one experiment's seeds take the same number of steps, unless a stop lost some
            said = ", ".join(f"seed {seed}: {step}{_resumed_text(m)}" for seed, step, m in zip(seeds, steps, members))
            print(f"warning: {', '.join(names)}: its seeds ended at different global steps ({said})", file=sys.stderr)
        settings = first.settings
        rows.append(
            {
                "experiment": names[0] if len(names) == 1 else " / ".join(names),
                "dataset": settings["dataset"],
                "labels": settings["labels"],
                "val_size": settings["val_size"],
                "fold": settings["fold"],
                "mode": settings["mode"],
                "pooling": settings["pooling"],
                "unpool": settings["unpool"],
                "terms": {t.name: settings[t.weight.name] for t in active_terms(settings)},
                "decoder_top": settings["decoder_top"],
                "baseline": first.is_baseline,
                "seeds": seeds,
                "errors": errors,
                "error_mean": mean,
                "error_std": std,
                "paper_error": paper[0] if paper else None,
                "paper_note": paper[1] if paper else None,
                "steps": round(mean_std([m.results.get("global_step", 0) for m in members])[0]),
                "steps_differ": len(set(steps)) > 1,
                "minutes_mean": mean_std([m.minutes for m in members])[0],
                "finetune_from": settings["finetune_from"],
                "hardware": sorted({str(m.results.get("hardware", "?")) for m in members}),
                "run_dirs": [str(m.path) for m in members],
                "comparison_key": comparison_key(first),
            }
        )
    add_paired_differences(rows)
    rows.sort(
        key=lambda r: (
            r["dataset"],
            r["labels"] is None,
            r["labels"] or 0,
            r["mode"] == "unsupervised",
            r["baseline"],
            r["experiment"],
        )
    )
    return rows


def labels_text(row: dict) -> str:
    labels = S.labels_text(row["labels"], ",")
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
    what-where terms add on top; for a row fine-tuned from a pretraining, the row minus the same
    training from scratch: what the pretraining adds.
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
        if row["finetune_from"]:
            without = [r for r in same if r["terms"] == row["terms"] and not r["finetune_from"]]
        elif rest and len(rest) < len(row["terms"]):
            without = [r for r in same if r["terms"] == rest and not r["finetune_from"]]
        else:
            without = []
        if len(without) == 1:
            row["vs_without_what_where"] = _paired(row, without[0])


def interval(mean: float, std: float | None, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided Student-t interval of a mean difference over ``n`` paired seeds (None from one seed)."""
    if std is None or n < 2:
        return None
    half = float(scipy.stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def verdict(difference: tuple | None) -> str:
    """'lower' or 'higher' where the 95 % interval of a paired difference excludes 0, 'level' where it holds it."""
    bounds = interval(*difference) if difference else None
    if bounds is None:
        return ""
    return "lower" if bounds[1] < 0 else "higher" if bounds[0] > 0 else "level"


def difference_text(difference: tuple | None) -> str:
    """Mean ± std (seeds), its 95 % interval and what the interval says: a difference is claimed only beyond it."""
    if difference is None:
        return "—"
    mean, std, n = difference
    text = f"{mean:+.2f} ± {'—' if std is None else f'{std:.2f}'} ({n})"
    bounds = interval(mean, std, n)
    return text if bounds is None else f"{text} [{bounds[0]:+.2f}, {bounds[1]:+.2f}] {verdict(difference)}"


def uses_decoder(row: dict) -> bool:
    return bool(what_where_terms(row["terms"]))


def model_text(row: dict) -> str:
    if row["baseline"]:
        return f"{row['mode']}, no unlabeled term (baseline)"
    terms = " + ".join(f"{name} {weight:g}" for name, weight in row["terms"].items())
    decoder = f", {row['pooling']} pool, {row['unpool']} unpool, {row['decoder_top']} top" if uses_decoder(row) else ""
    source = f", fine-tuned from {row['finetune_from']}" if row["finetune_from"] else ""
    return f"{row['mode']}{decoder}, λ: {terms}{source}"
