"""Equivariance of soft what/where pooling: shift the input, watch the what stay and the where move.

Test digits are shifted by -3..+3 pixels horizontally, then vertically. For each model:
- the top *what* should barely change: mean over images of ||what(s) - what(0)|| / ||what(0)||;
- the *where* should move with the shift: for each pooling layer, the mean over all positions
  and channels of each switch's absolute position (window origin + (dy, dx), in input pixels),
  weighted by the what magnitude; a linear fit against the shift gives its slope (1 = moves
  exactly with the input) and R^2 (1 = moves smoothly). Switch positions come from the pooling variant's ``positions``.

    python -m experiments.equivariance --out reports/                    # trains both models
    python -m experiments.equivariance --checkpoint runs/equivariance-soft runs/equivariance-hard

Options this script does not know go to train.py when it trains (e.g. --max-epochs 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.augment import standardize  # noqa: E402
from experiments.common import (  # noqa: E402
    CONFIGS,
    load_network,
    load_test_images,
    parse_study_args,
    run_and_report,
    train_or_reuse,
    training_settings,
)
from swwae_lightning.network import StackedWhatWhere  # noqa: E402
from swwae_lightning.pooling import Pooling  # noqa: E402

AXES = {"horizontal": 1, "vertical": 0}  # index into the (dy, dx) of a where


def shift_images(images: Tensor, dy: int, dx: int) -> Tensor:
    """Translate (B, C, H, W) images by whole pixels (down, right positive), filling with zeros."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w]


def absolute_positions(pooling: Pooling, where: Tensor, k: int) -> Tensor:
    """(B, C, H/k, W/k, 2) float: each switch's (row, col) in the pooled map = window origin + (dy, dx)."""
    offsets = pooling.positions(where, k)
    rows = torch.arange(offsets.shape[2], dtype=offsets.dtype, device=offsets.device) * k
    cols = torch.arange(offsets.shape[3], dtype=offsets.dtype, device=offsets.device) * k
    origin = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)  # (H/k, W/k, 2)
    return offsets + origin


def mean_where_position(pooling: Pooling, what: Tensor, where: Tensor, k: int, stride: int = 1) -> Tensor:
    """(B, 2): the what-weighted mean absolute switch position of each image, in input pixels.

    ``stride`` is the input pixels per pixel of the pooled map (the product of the pool sizes
    below it); a map pixel p covers input pixels p*stride .. p*stride + stride - 1.
    """
    positions = absolute_positions(pooling, where, k) * stride + (stride - 1) / 2
    weights = what.abs().unsqueeze(-1)
    return (weights * positions).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp_min(1e-12)


def linear_fit(x, y) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R^2 of y against x (R^2 is nan when y is constant)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(((y - (slope * x + intercept)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return float(slope), float(intercept), (1 - residual / total) if total > 0 else float("nan")


def relative_change(x: Tensor, reference: Tensor) -> float:
    """Mean over rows of ||x - reference|| / ||reference|| ((B, D) tensors)."""
    return float(((x - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-12)).mean())


@torch.no_grad()
def shift_response(
    net: StackedWhatWhere,
    images01: Tensor,
    mean: tuple,
    std: tuple,
    shifts: list[int],
    axis: str,
    batch_size: int = 500,
) -> dict:
    """For each shift along ``axis``: relative change of the top what, and each pooling layer's mean where position."""
    net.eval()
    index = AXES[axis]
    pool_sizes = net.pool_sizes()
    strides = np.cumprod([1] + pool_sizes[:-1]).tolist()

    def encode(shift: int) -> tuple[Tensor, Tensor]:
        """Top what (B, C, h, w) and each image's mean where position per pooling layer (B, layers)."""
        dy, dx = (shift, 0) if axis == "vertical" else (0, shift)
        tops, positions = [], []
        for chunk in images01.split(batch_size):
            out = net(standardize(shift_images(chunk, dy, dx), mean, std))
            tops.append(out.whats[-1])
            positions.append(
                torch.stack(
                    [
                        mean_where_position(net.pooling, what, where, k, stride)[:, index]
                        for what, where, k, stride in zip(out.whats, out.wheres, pool_sizes, strides)
                    ],
                    dim=1,
                )
            )
        return torch.cat(tops), torch.cat(positions)

    base_top, _ = encode(0)
    what_change, summed_change, by_shift = [], [], []
    for shift in shifts:
        top, positions = encode(shift)
        what_change.append(relative_change(top.flatten(1), base_top.flatten(1)))
        summed_change.append(relative_change(top.sum(dim=(2, 3)), base_top.sum(dim=(2, 3))))
        by_shift.append(positions.mean(dim=0).tolist())
    by_layer = np.array(by_shift).T  # (layers, shifts)
    fits = [linear_fit(shifts, layer) for layer in by_layer]
    zero = shifts.index(0) if 0 in shifts else None
    return {
        "axis": axis,
        "shifts": list(shifts),
        "what_change": what_change,
        "summed_what_change": summed_change,
        "displacement": [(layer - (layer[zero] if zero is not None else layer.mean())).tolist() for layer in by_layer],
        "slope": [f[0] for f in fits],
        "r2": [f[2] for f in fits],
    }


def model_label(net: StackedWhatWhere, name: str) -> str:
    return f"{name} ({net.pooling.describe()})"


def _change_at(response: dict, distance: int, key: str = "what_change") -> float:
    """Mean top-what change over the shifts of +-distance pixels."""
    values = [c for s, c in zip(response["shifts"], response[key]) if abs(s) == distance]
    return float(np.mean(values)) if values else float("nan")


def markdown(results: list[dict], num_images: int) -> str:
    """The tables, the models' sources and their training settings."""
    largest = max(abs(s) for s in results[0]["responses"][0]["shifts"])
    lines = [
        "# Equivariance: shifting the input moves the where, not the what",
        "",
        f"{num_images:,} MNIST test digits shifted by whole pixels. *what change*: mean over images of "
        "‖what(s) − what(0)‖ / ‖what(0)‖ for the top pooling layer (0 = invariant); *summed*: the same for the "
        "top what "
        "summed over positions (one number per channel: what is there, wherever it is). *where*: the what-weighted "
        "mean absolute switch position of each pooling layer in input pixels, fitted linearly against the shift: "
        "slope 1 = it moves exactly with the input, R² 1 = it moves smoothly.",
        "",
        f"| model | shift | what change at ±1 px | at ±{largest} px | summed what change at ±{largest} px "
        "| top where slope | top R² | layer-1 where slope | layer-1 R² |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for resp in r["responses"]:
            lines.append(
                f"| {r['label']} | {resp['axis']} | {_change_at(resp, 1):.3f} | {_change_at(resp, largest):.3f} | "
                f"{_change_at(resp, largest, 'summed_what_change'):.3f} | "
                f"{resp['slope'][-1]:.3f} | "
                f"{resp['r2'][-1]:.3f} | {resp['slope'][0]:.3f} | {resp['r2'][0]:.3f} |"
            )
    lines += [
        "",
        "Per shift (top pooling layer):",
        "",
        "| model | shift axis | shift (px) | what change | summed what change | where displacement (px) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for resp in r["responses"]:
            for s, c, cs, d in zip(
                resp["shifts"], resp["what_change"], resp["summed_what_change"], resp["displacement"][-1]
            ):
                lines.append(f"| {r['label']} | {resp['axis']} | {s:+d} | {c:.3f} | {cs:.3f} | {d:+.3f} |")
    sources = ", ".join(f"{r['label']}: {r['source']}" for r in results)
    return "\n".join(
        lines + ["", f"Models: {sources}.", "", *training_settings([(r["label"], r["config"]) for r in results])]
    )


def plot(results: list[dict], path: Path) -> None:
    """Rows: top-what change, where displacement; columns: horizontal, vertical shifts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(AXES), squeeze=False)
    colors = [f"C{i}" for i in range(10)]
    for col, axis in enumerate(AXES):
        for color, r in zip(colors, results):
            resp = next(x for x in r["responses"] if x["axis"] == axis)
            axes[0, col].plot(resp["shifts"], resp["what_change"], "o-", color=color, label=f"{r['label']}: top what")
            axes[0, col].plot(
                resp["shifts"],
                resp["summed_what_change"],
                "s:",
                color=color,
                label=f"{r['label']}: top what summed over positions",
            )
            for layer, displacement in enumerate(resp["displacement"]):
                top = layer == len(resp["displacement"]) - 1
                axes[1, col].plot(
                    resp["shifts"],
                    displacement,
                    "o-" if top else "s:",
                    color=color,
                    alpha=1 if top else 0.6,
                    label=f"{r['label']}, layer {layer + 1}: slope {resp['slope'][layer]:.2f}, "
                    f"R² {resp['r2'][layer]:.2f}",
                )
        shifts = results[0]["responses"][0]["shifts"]
        axes[1, col].plot(shifts, shifts, "--", color="gray", label="moves with the input (slope 1)")
        axes[0, col].set(title=f"{axis} shift: top what", xlabel="shift (px)", ylabel="‖Δwhat‖ / ‖what‖")
        axes[1, col].set(
            title=f"{axis} shift: mean where position", xlabel="shift (px)", ylabel="displacement (input px)"
        )
        for ax in axes[:, col]:
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def run_study(
    models: list[tuple[str, str]], out_dir: str | Path, max_shift: int = 3, num_images: int = 1000
) -> list[dict]:
    """``models``: (name, run directory or checkpoint). Writes equivariance.md and .png."""
    shifts = list(range(-max_shift, max_shift + 1))
    results, count = [], 0
    for name, source in models:
        net, cfg = load_network(source)
        images01, mean, std = load_test_images(cfg, num_images)
        count = len(images01)
        responses = [shift_response(net, images01, mean, std, shifts, axis) for axis in AXES]
        results.append({"label": model_label(net, name), "source": str(source), "config": cfg, "responses": responses})
        for resp in responses:
            print(
                f"{name} {resp['axis']}: what change at +{max_shift} {resp['what_change'][-1]:.3f}, "
                f"top where slope {resp['slope'][-1]:.3f} (R² {resp['r2'][-1]:.3f})",
                flush=True,
            )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "equivariance.md").write_text(markdown(results, count))
    plot(results, out_dir / "equivariance.png")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        allow_abbrev=False,
        epilog="Other options (e.g. --max-epochs 1 --limit-train-batches 50) go to train.py.",
    )
    parser.add_argument(
        "--checkpoint", nargs="+", metavar="RUN_DIR", help="evaluate these runs (or .ckpt files) instead of training"
    )
    parser.add_argument(
        "--config",
        default=str(CONFIGS / "equivariance-soft.yaml"),
        help="config of the soft model; the hard one adds --pooling hard",
    )
    parser.add_argument("--runs-root", default="runs", help="trained runs go to RUNS_ROOT/equivariance-{soft,hard}")
    parser.add_argument("--out", default="reports", help="where equivariance.md and .png go")
    parser.add_argument("--max-shift", type=int, default=3, help="shifts -N..N pixels (default 3)")
    parser.add_argument("--num-test", type=int, default=1000, help="test images measured (default 1000)")
    args, train_args = parse_study_args(parser, argv)

    def study():
        if args.checkpoint:
            if train_args:
                parser.error(f"unrecognized arguments: {' '.join(train_args)} (nothing is trained with --checkpoint)")
            models = [(Path(p).name if Path(p).is_dir() else Path(p).parent.parent.name, p) for p in args.checkpoint]
        else:
            models = []
            for pooling in ("soft", "hard"):
                run_dir = Path(args.runs_root) / f"equivariance-{pooling}"
                train_or_reuse(["--config", args.config, "--pooling", pooling, *train_args], run_dir)
                models.append((run_dir.name, run_dir))
        run_study(models, args.out, args.max_shift, args.num_test)

    return run_and_report(study, args.out, "equivariance")


if __name__ == "__main__":
    sys.exit(main())
