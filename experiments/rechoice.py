"""Apply a committed selection rule to validation errors only, and write the choice beside the rule.

    OMP_NUM_THREADS=1 python -m experiments.rechoice reports/mnist-100-rechoice

The rule (``rule.yaml``, committed before this runs) names the candidates, the seeds, the tie width,
the tie-break and the budget. Each candidate seed's kept checkpoint (``weights/best.ckpt``) is
measured on its run's own validation images (``--evaluate-split val``, in a scratch copy, so nothing
is written beside the committed weights); nothing here reads a test error. The measurements go to
``validation.json`` and the ranking and the choice to ``choice.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def validation_error(weights: Path, scratch: Path) -> float:
    """The kept checkpoint's error on its run's own validation images, measured in a scratch copy."""
    from orchestration.cli import main

    copy = scratch / weights.parent.parent.name / "best.ckpt"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, copy)
    if main(["--evaluate", str(copy), "--evaluate-split", "val", "--data-dir", str(scratch / "data")]) != 0:
        raise RuntimeError(f"--evaluate-split val of {weights} failed")
    return json.loads((copy.parent / "results-val.json").read_text())["val_error"]


def minutes_per_run(run_dir: Path) -> float:
    """Training minutes, the pretraining's included (only the time is read from results.json)."""
    results = json.loads((run_dir / "results.json").read_text())
    source = results.get("finetuned_from") or {}
    return (results["train_seconds"] + (source.get("train_seconds") or 0)) / 60


def rank(rule: dict, measured: dict[str, dict]) -> list[dict]:
    """Candidates by mean validation error; the chosen one is the cheapest eligible within the tie width
    of the lowest eligible mean."""
    rows = sorted(measured.values(), key=lambda r: r["mean"])
    eligible = [r for r in rows if r["minutes"] <= rule["budget_minutes"]]
    best = eligible[0]["mean"]
    tied = [r for r in eligible if r["mean"] - best < rule["ties_below_points"]]
    chosen = min(tied, key=lambda r: r["minutes"])
    for r in rows:
        r["eligible"] = r in eligible
        r["tied_with_lowest"] = r in tied
        r["chosen"] = r is chosen
    return rows


def markdown(rule_dir: Path, rule: dict, rows: list[dict]) -> str:
    chosen = next(r for r in rows if r["chosen"])
    lines = [
        f"# The choice made by `{rule_dir.name}/rule.yaml`",
        "",
        f"Validation error of the kept checkpoint, % (seeds {', '.join(map(str, rule['seeds']))}), "
        f"ties under {rule['ties_below_points']} points go to the cheaper run, budget "
        f"{rule['budget_minutes']} minutes a run. Made by `OMP_NUM_THREADS=1 python -m experiments.rechoice "
        f"{rule_dir.relative_to(REPO_ROOT)}`; no test error was read.",
        "",
        "| candidate | validation error %, per seed | mean | minutes per run | eligible | tied with the lowest |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        name = f"**{r['name']}** (chosen)" if r["chosen"] else r["name"]
        lines.append(
            f"| {name} | {' / '.join(f'{e:.2f}' for e in r['errors'])} | {r['mean']:.2f} | {r['minutes']:.1f} "
            f"| {'yes' if r['eligible'] else 'no: over the budget'} | {'yes' if r['tied_with_lowest'] else 'no'} |"
        )
    lines += [
        "",
        f"Chosen: `{chosen['name']}`, paired with `{rule['candidates'][chosen['name']]}`, to train on the fresh "
        f"seeds {', '.join(map(str, rule['fresh_seeds']))} with `--test`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rule_dir", type=Path, help="the folder of the committed rule.yaml")
    args = parser.parse_args(argv)
    args.rule_dir = args.rule_dir.resolve()
    rule = yaml.safe_load((args.rule_dir / "rule.yaml").read_text())
    study = REPO_ROOT / rule["study"]
    measured = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in rule["candidates"]:
            runs = [study / f"{name}-seed{seed}" for seed in rule["seeds"]]
            errors = [100 * validation_error(run / "weights" / "best.ckpt", Path(scratch)) for run in runs]
            minutes = sum(minutes_per_run(run) for run in runs) / len(runs)
            measured[name] = {"name": name, "errors": errors, "mean": sum(errors) / len(errors), "minutes": minutes}
            print(f"{name}: validation error {measured[name]['mean']:.2f} %", flush=True)
    rows = rank(rule, measured)
    record = {
        "rule": str((args.rule_dir / "rule.yaml").relative_to(REPO_ROOT)),
        "torch_threads": torch.get_num_threads(),
    }
    (args.rule_dir / "validation.json").write_text(json.dumps({**record, "candidates": rows}, indent=2) + "\n")
    (args.rule_dir / "choice.md").write_text(markdown(args.rule_dir, rule, rows))
    print(markdown(args.rule_dir, rule, rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
