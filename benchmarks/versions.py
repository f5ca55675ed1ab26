"""The default job's training time on this version against an earlier one, measured side by side.

    python benchmarks/versions.py ddf6c0a --rounds 3 --steps 100 --json reports/benchmark-cpu/versions.json

Each round runs ``train.py`` (the default job, cut to ``--steps`` training steps and two validation
batches) once from the earlier revision's tree, checked out in a temporary git worktree, and once
from this working tree, taking turns so that a busy machine slows both alike. The best round of
each counts. ``new / old`` is the earlier version's training seconds over this one's: 1 or more
means this version is not slower. Same seed, same steps: the test errors say whether the two
versions also train the same numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_seconds(tree: Path, run_dir: Path, steps: int) -> dict:
    """One short default-job run from ``tree``: its training seconds and test error (results.json)."""
    command = [sys.executable, "train.py", "--limit-train-batches", str(steps), "--max-epochs", "1",
               "--limit-val-batches", "2", "--logger", "csv", "--run-dir", str(run_dir)]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"train.py in {tree} exited with status {done.returncode}: {done.stderr.strip()[-500:]}")
    results = json.loads((run_dir / "results.json").read_text())
    return {"train_seconds": results["train_seconds"], "test_error": results["test_error"],
            "global_step": results["global_step"]}


def compare(old: str, rounds: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="swwae-versions-") as scratch:
        old_tree = Path(scratch) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), old], cwd=REPO, check=True,
                       capture_output=True)
        try:
            trees = {"old": old_tree, "new": REPO}
            measured = {name: [] for name in trees}
            for round_index in range(rounds):
                for name, tree in trees.items():
                    run = train_seconds(tree, Path(scratch) / f"{name}-{round_index}", steps)
                    measured[name].append(run)
                    print(f"round {round_index + 1}: {name} {run['train_seconds']:.1f} s, "
                          f"test error {100 * run['test_error']:.2f} %", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO, capture_output=True)
    best = {name: min(run["train_seconds"] for run in runs) for name, runs in measured.items()}
    commit = subprocess.run(["git", "rev-parse", old], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"old": old, "old_commit": commit, "rounds": rounds, "steps": steps, "runs": measured,
            "best_seconds": best, "new_over_old_speed": best["old"] / best["new"],
            "same_test_error": len({run["test_error"] for runs in measured.values() for run in runs}) == 1}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the earlier revision (a commit, tag or branch of this repository)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each version, taking turns (default: 3)")
    parser.add_argument("--steps", type=int, default=100, help="training steps per run (default: 100)")
    parser.add_argument("--json", type=Path, help="write the runs, the best seconds and the ratio here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error(f"--rounds {args.rounds} --steps {args.steps}: both must be 1 or more")
    known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.old}^{{commit}}"], cwd=REPO,
                           capture_output=True)
    if known.returncode != 0:
        parser.error(f"{args.old!r} is not a commit of this repository (try git log --oneline)")
    result = compare(args.old, args.rounds, args.steps)
    print(f"best of {args.rounds} rounds of {args.steps} steps: old {result['best_seconds']['old']:.1f} s, "
          f"new {result['best_seconds']['new']:.1f} s; new / old speed {result['new_over_old_speed']:.3f}; "
          f"same test error: {'yes' if result['same_test_error'] else 'no'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
