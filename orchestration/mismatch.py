"""The class-mismatch study's tables: each method's error on the known classes as the pool fills with
images of classes nobody labeled, and how well it finds those images.

A study's runs are named ``mismatch-<percent unknown>-<method>-seed<S>`` (its sweep plan's variants).
Beside each archived run, ``unknown_detection.json`` (``experiments.class_mismatch``) holds the AUROC of
each unknown-class score over the run's pool and the share of unknown images given a known class.
The default for a pool nobody curated is chosen here from validation errors only: among the methods
never above the labels-only baseline's mean validation error at any mismatch, the lowest mean over
the mismatches; each mean is over the seeds every method has run at that mismatch.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from .results import find_runs

NAME = re.compile(r"mismatch-(\d+)-(.+)")
BASELINE = "baseline"
DETECTION = "unknown_detection.json"


def cells(report_dir: Path) -> dict[tuple[str, int], list[dict]]:
    """(method, percent unknown) -> one dict per seed: test and validation error (%), and the detection figures."""
    grouped: dict[tuple[str, int], list[dict]] = {}
    for run in find_runs([report_dir / "runs"]):
        match = NAME.fullmatch(re.sub(r"-seed\d+$", "", run.path.name))
        if not match:
            continue
        detection = run.path / DETECTION
        grouped.setdefault((match[2], int(match[1])), []).append(
            {
                "seed": run.config["seed"],
                "test": 100 * run.results["test_error"],
                "val": 100 * run.results["val_error"],
                **(json.loads(detection.read_text()) if detection.is_file() else {}),
            }
        )
    return {key: sorted(seeds, key=lambda s: s["seed"]) for key, seeds in sorted(grouped.items())}


def methods_and_shares(table: dict) -> tuple[list[str], list[int]]:
    methods = sorted({m for m, _ in table}, key=lambda m: (m != BASELINE, m))
    return methods, sorted({share for _, share in table})


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{_mean(values):.2f}{spread} ({len(values)})"


def chosen_default(table: dict) -> tuple[str | None, dict[str, float]]:
    """The method the validation errors choose (see the module docstring), and each method's mean validation
    error over the mismatches."""
    methods, shares = methods_and_shares(table)
    paired = {  # at each mismatch, the seeds every method has run: the comparison is seed by seed
        share: set.intersection(*[{s["seed"] for s in table.get((m, share), [])} for m in methods]) for share in shares
    }
    val = {
        (m, share): _mean([s["val"] for s in seeds if s["seed"] in paired[share]])
        for (m, share), seeds in table.items()
        if paired[share]
    }
    complete = [m for m in methods if all((m, share) in val for share in shares)]
    means = {m: _mean([val[m, share] for share in shares]) for m in complete}
    if BASELINE not in means:
        return None, means
    safe = [m for m in complete if all(val[m, share] <= val[BASELINE, share] for share in shares)]
    return min(safe, key=lambda m: (means[m], m)), means


def error_table(report_dir: Path) -> str:
    """Test error on the known classes (mean ± std (seeds)) per method and mismatch, the validation means
    that chose the default, and the chosen default."""
    table = cells(report_dir)
    methods, shares = methods_and_shares(table)
    chosen, means = chosen_default(table)
    header = " | ".join(f"{share} % unknown" for share in shares)
    lines = [
        f"| method | {header} | validation error %, mean over mismatches |",
        "| --- |" + " --- |" * (len(shares) + 1),
    ]
    for method in methods:
        errors = [_mean_std([s["test"] for s in table.get((method, share), [])]) for share in shares]
        mean = f"{means[method]:.2f}" if method in means else "—"
        lines.append(f"| {method}{' (default)' if method == chosen else ''} | {' | '.join(errors)} | {mean} |")
    return "\n".join(lines) + "\n"


def detection_table(report_dir: Path) -> str:
    """Per method and mismatch with unknown images: each score's AUROC over the pool (mean over seeds), the share
    of unknown images given a known class at p > 0.95, and the share the validation threshold let through."""
    table = cells(report_dir)
    methods, shares = methods_and_shares(table)
    scores = ("probability", "energy", "reconstruction", "one_vs_all")
    lines = [
        "| method | % unknown | seeds | "
        + " | ".join(f"AUROC {s}" for s in scores)
        + " | unknown at p > 0.95 | unknown labelled known |",
        "| --- | --- | --- |" + " --- |" * (len(scores) + 2),
    ]
    for method in methods:
        for share in (s for s in shares if s > 0):
            seeds = [s for s in table.get((method, share), []) if "pool" in s]
            if not seeds:
                continue
            figures = [
                f"{_mean([s[f'auroc_{score}'] for s in seeds]):.3f}"
                if all(f"auroc_{score}" in s for s in seeds)
                else "—"
                for score in scores
            ]
            figures += [
                f"{100 * _mean([s[key] for s in seeds]):.1f} %"
                for key in ("unknown_confident_share", "unknown_labelled_known_share")
            ]
            lines.append(f"| {method} | {share} | {len(seeds)} | " + " | ".join(figures) + " |")
    return "\n".join(lines) + "\n"
