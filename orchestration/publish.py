"""A run's checkpoint cut down to what a reader of its result needs: a small file to commit or share.

A Lightning checkpoint also holds the optimizer's moments, the scheduler, the loops' and callbacks'
state: together more than twice the weights, and only resuming needs them. The published file keeps
the weights, the settings the network is built from, the run's resolved config and its data split,
so ``--evaluate``, ``--finetune-from`` and ``--predict`` read it as they read the full checkpoint.

    python -m orchestration.publish runs/NAME/checkpoints/best.ckpt weights.ckpt
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from .checkpoints import CheckpointError, load_checkpoint, temporary_path, without_teacher

KEPT = ("state_dict", "hyper_parameters", "swwae_config", "SemiSupervisedDataModule", "epoch", "global_step")


def published(checkpoint: dict) -> dict:
    """The parts of ``checkpoint`` that evaluating, fine-tuning and predicting read.

    The EMA teacher stays only where it is the network that is tested (``eval_teacher``): otherwise
    it doubles the file for nothing a reader runs, and fine-tuning starts a missing teacher from the
    loaded student.
    """
    kept = {key: checkpoint[key] for key in KEPT if key in checkpoint}
    if not checkpoint.get("hyper_parameters", {}).get("eval_teacher"):
        kept["state_dict"] = without_teacher(kept["state_dict"])
    return kept


def publish(source: str | Path, destination: str | Path) -> Path:
    """Write ``source``'s published parts to ``destination`` (whole or not at all); returns its path."""
    destination = Path(destination)
    if destination.resolve() == Path(source).resolve():
        raise CheckpointError(f"the published file {str(destination)!r} would replace its source: name another")
    kept = published(load_checkpoint(source))
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(destination)
    try:
        torch.save(kept, tmp)
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a checkpoint a run wrote (best.ckpt, last.ckpt)")
    parser.add_argument("destination", help="where the published file goes")
    args = parser.parse_args(argv)
    try:
        path = publish(args.source, args.destination)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; from {args.source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
