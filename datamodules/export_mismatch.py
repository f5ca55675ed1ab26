"""Write a built-in dataset as a practitioner's tree whose unlabeled pool holds classes nobody labeled.

    python -m datamodules.export_mismatch --dataset mnist --out data/mnist-mismatch-50 --unknown-share 0.5

Real pools are not curated: they hold classes the labels never name, in proportions unlike the labeled
set's. This writes ``labeled/<class>/`` and ``val/<class>/`` (known classes only, drawn from the train
split), ``test/<class>/`` (every test image of a known class) and ``unlabeled/`` (a pool of a fixed size
whatever the mismatch, ``--unknown-share`` of it from the unknown classes; ``--skew R`` mixes its known
classes R:1 from the first to the last, geometrically). Which pool file is which class goes to
``.pool-truth.csv``: a hidden name, which the folder dataset never indexes, so training never reads it.
Every draw comes from ``--seed``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

from .datasets import DATASETS
from .export_folder import class_folder, save_image

TRUTH = ".pool-truth.csv"


def pool_mix(known: list[int], pool: int, unknown_share: float, skew: float) -> dict[str, int]:
    """How many pool images each known class gives (skewed ``skew``:1, first to last) and how many are unknown."""
    unknown = round(pool * unknown_share)
    weights = np.asarray(skew, dtype=float) ** -np.linspace(0.0, 1.0, len(known)) if len(known) > 1 else np.ones(1)
    exact = weights / weights.sum() * (pool - unknown)
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact, kind="stable")[: (pool - unknown) - counts.sum()]] += 1  # largest remainders
    return {**{str(c): int(n) for c, n in zip(known, counts)}, "unknown": unknown}


def export(
    dataset: str,
    out: Path,
    known: list[int],
    unknown_share: float,
    pool: int,
    labels_per_class: int,
    val_per_class: int,
    skew: float = 1.0,
    seed: int = 0,
    data_dir: Path = Path("data"),
) -> dict[str, int]:
    """Write the tree; returns how many images each part holds."""
    info = DATASETS[dataset]
    splits = info.load(data_dir, download=False, include_extra=False)
    names = [class_folder(n) for n in info.class_names] or [str(c) for c in range(info.num_classes)]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(splits.train_labels), generator=generator)
    by_class = {c: order[splits.train_labels[order] == c].tolist() for c in range(info.num_classes)}
    mix = pool_mix(known, pool, unknown_share, skew)
    parts: dict[str, list[tuple[int, int]]] = {"labeled": [], "val": [], "pool": []}  # (train index, class)
    for c in known:  # every draw is checked before a file is written
        take = by_class[c]
        needed = labels_per_class + val_per_class + mix[str(c)]
        if len(take) < needed:
            raise ValueError(f"class {names[c]} has {len(take)} train images; this tree needs {needed} of it")
        parts["labeled"] += [(i, c) for i in take[:labels_per_class]]
        parts["val"] += [(i, c) for i in take[labels_per_class : labels_per_class + val_per_class]]
        parts["pool"] += [(i, c) for i in take[labels_per_class + val_per_class : needed]]
    others = torch.tensor([i for c in range(info.num_classes) if c not in known for i in by_class[c]])
    others = others[torch.randperm(len(others), generator=generator)][: mix["unknown"]].tolist()
    if len(others) < mix["unknown"]:
        raise ValueError(f"the unknown classes have {len(others)} train images; the pool needs {mix['unknown']}")
    parts["pool"] += [(i, int(splits.train_labels[i])) for i in others]
    for part in ("labeled", "val"):
        for i, c in parts[part]:
            save_image(splits.train_images[i], out / part / names[c] / f"{i}.png")
    shuffled = torch.randperm(len(parts["pool"]), generator=generator).tolist()
    width, truth = len(str(len(shuffled))), []
    for position, k in enumerate(shuffled):  # the file name says nothing of the class
        i, c = parts["pool"][k]
        name = f"{position:0{width}d}.png"
        save_image(splits.train_images[i], out / "unlabeled" / name)
        truth.append((f"unlabeled/{name}", names[c], "known" if c in known else "unknown"))
    test = [i for i in range(len(splits.test_labels)) if int(splits.test_labels[i]) in known]
    for i in test:
        save_image(splits.test_images[i], out / "test" / names[int(splits.test_labels[i])] / f"{i}.png")
    counts = {"labeled": len(parts["labeled"]), "val": len(parts["val"]), "unlabeled": len(shuffled), "test": len(test)}
    with open(out / TRUTH, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "class", "kind"])
        writer.writerows(truth)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", default="mnist", choices=sorted(n for n in DATASETS.names() if not DATASETS[n].from_files)
    )
    parser.add_argument("--data-dir", default="data", help="where the dataset is looked for (nothing is downloaded)")
    parser.add_argument("--out", required=True, help="a new folder for the tree")
    parser.add_argument("--known", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5], help="the labeled classes")
    parser.add_argument("--unknown-share", type=float, default=0.5, help="of the pool, from the other classes")
    parser.add_argument("--pool", type=int, default=20_000, help="unlabeled images, whatever the mismatch")
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--skew", type=float, default=1.0, help="the pool's known classes mixed R:1, first to last")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    problems = [
        f"--out {str(out)!r} is not empty: give a new folder" if out.exists() and any(out.iterdir()) else "",
        f"--unknown-share {args.unknown_share}: give a share from 0 to 1" if not 0 <= args.unknown_share <= 1 else "",
        f"--skew {args.skew}: give 1 (balanced) or more" if args.skew < 1 else "",
        f"--known {args.known}: give 2 or more distinct classes" if len(set(args.known)) < 2 else "",
    ]
    try:
        if any(problems):
            raise ValueError(next(p for p in problems if p))
        counts = export(
            args.dataset,
            out,
            sorted(set(args.known)),
            args.unknown_share,
            args.pool,
            args.labels_per_class,
            args.val_per_class,
            args.skew,
            args.seed,
            Path(args.data_dir),
        )
    except (ValueError, RuntimeError) as error:  # a bad value, or the dataset is not on disk
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(f'{n:,} {part}' for part, n in counts.items())} images to {out} (truth: {TRUTH})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
