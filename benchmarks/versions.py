"""The throughput benchmark of this version against an earlier one, measured side by side.

    python benchmarks/versions.py ddf6c0a --rounds 3 --json reports/benchmark-cpu/versions.json

Each round runs ``benchmarks/throughput.py --pooling hard`` (the default job's setting, one round
of its rows) once from the earlier revision's tree, checked out in a temporary git worktree, and
once from this working tree, taking turns so that a busy machine slows both alike. The best round
of each row counts. ``old / new`` per row is the earlier version's ms per step over this one's:
1 or more means this version is not slower. Rows that only one version has are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the packages, when run as a script

from benchmarks.results import write_result  # noqa: E402


def benchmark_rows(tree: Path, out: Path, extra: list[str]) -> dict[str, float]:
    """One round of ``tree``'s throughput benchmark: row name -> ms per step."""
    command = [
        sys.executable,
        "benchmarks/throughput.py",
        "--pooling",
        "hard",
        "--rounds",
        "1",
        "--json",
        str(out),
        *extra,
    ]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"throughput.py in {tree} exited with status {done.returncode}: {done.stderr.strip()[-500:]}"
        )
    return {row["name"]: row["ms_per_step"] for row in json.loads(out.read_text())["rows"]}


def compare(old: str, rounds: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="swwae-versions-") as scratch:
        old_tree = Path(scratch) / "old"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old_tree), old], cwd=REPO, check=True, capture_output=True
        )
        try:
            trees = {"old": old_tree, "new": REPO}
            measured = {name: [] for name in trees}
            for round_index in range(rounds):
                for name, tree in trees.items():
                    rows = benchmark_rows(tree, Path(scratch) / f"{name}-{round_index}.json", extra)
                    measured[name].append(rows)
                    print(f"round {round_index + 1}: {name} lightning {rows['lightning']:.1f} ms/step", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO, capture_output=True)
    shared = [name for name in measured["new"][0] if name in measured["old"][0]]
    best = {version: {row: min(r[row] for r in runs) for row in shared} for version, runs in measured.items()}
    commit = subprocess.run(["git", "rev-parse", old], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {
        "old": old,
        "old_commit": commit,
        "rounds": rounds,
        "benchmark_options": ["--pooling", "hard", *extra],
        "device": f"CPU ({os.cpu_count()} cores)",
        "rounds_ms_per_step": measured,
        "best_ms_per_step": best,
        "old_over_new": {row: best["old"][row] / best["new"][row] for row in shared},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Options after a lone -- go to both trees' throughput.py, e.g. -- --steps 10",
    )
    parser.add_argument("old", help="the earlier revision (a commit, tag or branch of this repository)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="benchmark rounds of each version, taking turns (default: 3)"
    )
    parser.add_argument("--json", type=Path, help="write every round, the best ms per step and the ratios here")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: give 1 or more")
    known = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{args.old}^{{commit}}"], cwd=REPO, capture_output=True
    )
    if known.returncode != 0:
        parser.error(f"{args.old!r} is not a commit of this repository (try git log --oneline)")
    result = compare(args.old, args.rounds, extra)
    print(f"best of {args.rounds} rounds, ms/step (old {args.old} / this version = old over new):")
    for row, ratio in result["old_over_new"].items():
        print(
            f"  {row:<28} {result['best_ms_per_step']['old'][row]:9.1f} {result['best_ms_per_step']['new'][row]:9.1f}"
            f"  {ratio:.3f}"
        )
    return write_result(args.json, result)


if __name__ == "__main__":
    main()
