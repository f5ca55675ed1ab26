"""How well each unknown-class score finds the pool's images of classes nobody labeled.

    python train.py --predict RUN/checkpoints/best.ckpt --out RUN/pool.csv     # scores every pool image
    python -m experiments.unknown_detection RUN/pool.csv --tree DIR --out RUN/unknown_detection.json

``DIR`` is a tree written by ``datamodules.export_mismatch``: its hidden ``.pool-truth.csv`` says which
pool image is of a known class and which is not (training never reads it). For each score of the
predictions CSV (the top probability's, the energy, the reconstruction error, the one-vs-all heads')
this gives its AUROC over the pool, and the share of unknown images that came back with a known class
at p > 0.95.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from datamodules.export_mismatch import TRUTH
from orchestration.predict import CONFIDENT, SCORE_COLUMNS
from swwae_lightning.unknown_scores import auroc


def pool_truth(tree: Path) -> dict[str, bool]:
    """Pool file (relative to the tree) -> whether its class is unknown."""
    with open(tree / TRUTH, newline="", encoding="utf-8") as handle:
        return {row["path"]: row["kind"] == "unknown" for row in csv.DictReader(handle)}


def detection(predictions: Path, tree: Path) -> dict:
    """Each score's AUROC, and how many unknown images were labelled a known class with confidence."""
    truth = pool_truth(tree)
    with open(predictions, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle)]
    root = tree.resolve()
    kinds, missing = [], 0
    for row in rows:
        path = Path(row["path"]).resolve()
        key = path.relative_to(root).as_posix() if path.is_relative_to(root) else row["path"]
        if key not in truth:
            missing += 1
        kinds.append(truth.get(key))
    if missing:
        raise ValueError(f"{missing} of {len(rows)} rows of {predictions} are not pool files of {tree}")
    unknown = torch.tensor(kinds)
    result = {"pool": len(rows), "unknown": int(unknown.sum())}
    for name, column in SCORE_COLUMNS.items():
        if any(row[column] == "" for row in rows) or not 0 < int(unknown.sum()) < len(rows):
            continue  # a score the model cannot give (no trained decoder, no heads), or a pool of one kind
        scores = torch.tensor([float(row[column]) for row in rows])
        result[f"auroc_{name}"] = auroc(scores[~unknown], scores[unknown])
    confident = torch.tensor([float(row["probability"]) > CONFIDENT for row in rows])
    called_known = torch.tensor([row["label"] != "unknown" for row in rows])
    result["unknown_confident_share"] = float((confident & unknown).sum() / max(1, int(unknown.sum())))
    result["unknown_labelled_known_share"] = float((called_known & unknown).sum() / max(1, int(unknown.sum())))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="the CSV --predict wrote for the tree's unlabeled pool")
    parser.add_argument("--tree", type=Path, required=True, help="the tree export_mismatch wrote")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    try:
        result = detection(args.predictions, args.tree)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
