"""Write a built-in dataset as image files in the academic folder layout, for ``--dataset folder``.

    python -m datamodules.export_folder --dataset fashion-mnist --out data/fashion-png

gives ``train/<class>/<index>.png`` and ``test/<class>/<index>.png``: real data in the form users
have it, so the folder path can be checked against the built-in loader on the same images. The
file name is the image's index in its split, zero-padded, so the files sort in the original order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets import DATASETS


def class_folder(name: str) -> str:
    return name.replace("/", " or ").strip() or "unnamed"


def save_image(image, path: Path) -> None:
    """One (C, H, W) uint8 image as a PNG file, its folder made first."""
    array = image.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0))).save(path)


def export(dataset: str, out: Path, data_dir: Path = Path("data")) -> dict[str, int]:
    """Write every train and test image of ``dataset`` under ``out``; returns the count per split."""
    from tqdm.auto import tqdm

    info = DATASETS[dataset]
    splits = info.load(data_dir, download=False, include_extra=False)
    names = [class_folder(n) for n in info.class_names] or [str(c) for c in range(info.num_classes)]
    counts = {}
    for split, images, labels in (
        ("train", splits.train_images, splits.train_labels),
        ("test", splits.test_images, splits.test_labels),
    ):
        for name in names:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        width = len(str(len(images)))
        for i in tqdm(range(len(images)), desc=f"writing {split}/", unit="img", file=sys.stderr):
            save_image(images[i], out / split / names[int(labels[i])] / f"{i:0{width}d}.png")
        counts[split] = len(images)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", default="fashion-mnist", choices=sorted(n for n in DATASETS.names() if not DATASETS[n].from_files)
    )
    parser.add_argument("--data-dir", default="data", help="where the dataset is looked for (nothing is downloaded)")
    parser.add_argument("--out", required=True, help="the folder to write train/ and test/ into")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: --out {str(out)!r} is not empty: give a new folder", file=sys.stderr)
        return 2
    try:
        counts = export(args.dataset, out, Path(args.data_dir))
    except (ValueError, RuntimeError) as error:  # the dataset is not on disk (DatasetNotFound)
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {counts['train']:,} train and {counts['test']:,} test images of {args.dataset} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
