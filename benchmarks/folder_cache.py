"""Indexing and caching a folder dataset: the first start (decode every file) and a later one (reuse).

    python benchmarks/folder_cache.py --tree data/fashion-png --json reports/benchmark-cpu/folder-cache.json

The tree is exported first when it is missing (Fashion-MNIST as 70,000 PNG files, the academic
layout). Each start is a fresh process, as a user's would be: timed whole, and from after its
imports to a ready dataset (index, cache, statistics).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the packages, when run as a script

from benchmarks.results import write_result  # noqa: E402

START = """
import sys, time
sys.path.insert(0, {repo!r})
from datamodules.folder_dataset import describe
began = time.perf_counter()
describe({{"data_dir": {tree!r}, "image_size": None, "channels": None, "labels": 1000, "mode": "semi"}})
print(time.perf_counter() - began)
"""


def timed_start(tree: Path) -> tuple[float, float]:
    """(seconds of the whole process, seconds of indexing and caching after the imports)."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", START.format(repo=str(REPO), tree=str(tree))],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return time.perf_counter() - began, float(done.stdout.split()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path("data/fashion-png"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not (args.tree / "train").is_dir():
        subprocess.run(
            [sys.executable, "-m", "datamodules.export_folder", "--dataset", "fashion-mnist", "--out", str(args.tree)],
            check=True,
            cwd=REPO,
        )
    shutil.rmtree(args.tree / ".swwae-cache", ignore_errors=True)
    files = sum(1 for p in args.tree.rglob("*.png"))
    first = timed_start(args.tree)
    reused = [timed_start(args.tree) for _ in range(3)]
    result = {
        "files": files,
        "first_index_and_cache_s": round(first[1], 2),
        "first_process_s": round(first[0], 2),
        "reused_index_and_cache_s": round(min(r[1] for r in reused), 2),
        "reused_process_s": round(min(r[0] for r in reused), 2),
        "targets": {"first_index_and_cache_s": 60, "reused_index_and_cache_s": 5},
        "machine": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})",
        "note": "each start is a fresh Python process; *_process_s adds the interpreter start and its imports; "
        "the cache is deleted before the first, the reused figure is the best of 3",
    }
    print(json.dumps(result, indent=2))
    return write_result(args.json, result)


if __name__ == "__main__":
    main()
