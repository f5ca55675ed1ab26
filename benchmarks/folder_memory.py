"""A folder pool several times larger than a memory budget trains without holding it in memory.

    python benchmarks/folder_memory.py --budget-mb 200 --json reports/benchmark-cpu/folder-memory.json

Generates a tree of random 96x96 RGB PNG files whose decoded pool is ``--pool-times`` the budget
(generated images: no natural-image dataset is reachable here), and a tiny tree of the same kind.
``train.py`` runs one epoch over each, every unlabeled image read once, in a fresh process; the
pool's share of the peak resident memory is the big run's peak minus the tiny run's (the same
interpreter, torch, Lightning and model), and must stay below the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the packages, when run as a script

from benchmarks.results import write_result  # noqa: E402

SIDE = 96
ARCH = "8C3-MP4-8C3-MP4-FC16"  # small: the model's memory is not what is measured


def make_tree(root: Path, unlabeled: int) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for i in range(20):
            path = root / "labeled" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(path, compress_level=1)
    for i in range(unlabeled):
        path = root / "unlabeled" / f"{i // 1000:03d}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(path, compress_level=1)


def peak_rss_mb(tree: Path, run_dir: Path) -> float:
    """Peak resident memory of one train.py epoch over ``tree``, in a fresh child process."""
    code = (
        "import resource, subprocess, sys; "
        f"r = subprocess.run([sys.executable, {str(REPO / 'train.py')!r}, '--dataset', 'folder', '--data-dir', "
        f"{str(tree)!r}, '--image-size', '{SIDE}', '--channels', '3', '--arch', '{ARCH}', '--labels', 'all', "
        "'--val-size', '4', '--mode', 'semi', '--lambda-rec', '0', '--lambda-mid', '0', "
        "'--lambda-consistency', '1', '--batch-size', '8', '--unlabeled-batch-size', '128', '--max-epochs', '1', "
        "'--logger', 'csv', '--recon-every', '0', '--switch-every', '0', '--overview-every', '0', "
        f"'--run-dir', {str(run_dir)!r}], stdout=subprocess.DEVNULL); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    code, kilobytes = done.stdout.split()
    if code != "0":
        raise SystemExit(f"train.py exited with status {code} on {tree}")
    return int(kilobytes) / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-mb", type=float, default=200.0)
    parser.add_argument("--pool-times", type=float, default=5.0, help="the decoded pool's size over the budget")
    parser.add_argument("--work-dir", type=Path, help="where the trees go (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    image_mb = 3 * SIDE * SIDE / 2**20
    unlabeled = int(args.budget_mb * args.pool_times / image_mb)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        work = Path(work)
        make_tree(work / "big", unlabeled)
        make_tree(work / "tiny", 256)
        tiny = peak_rss_mb(work / "tiny", work / "run-tiny")
        big = peak_rss_mb(work / "big", work / "run-big")
        steps = json.loads((work / "run-big" / "results.json").read_text())["global_step"]
    result = {
        "budget_mb": args.budget_mb,
        "pool_images": unlabeled,
        "pool_decoded_mb": round(unlabeled * image_mb, 1),
        "epoch_steps_big": steps,
        "peak_rss_tiny_pool_mb": round(tiny, 1),
        "peak_rss_big_pool_mb": round(big, 1),
        "pool_share_of_peak_mb": round(big - tiny, 1),
        "below_budget": big - tiny < args.budget_mb,
        "machine": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})",
        "note": "peak RSS of train.py (ru_maxrss of the child), one epoch: every unlabeled image read once; "
        "the tiny pool's peak is the interpreter, torch, Lightning and the model (the margin)",
    }
    print(json.dumps(result, indent=2))
    return write_result(args.json, result)


if __name__ == "__main__":
    main()
