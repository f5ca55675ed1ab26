"""The paper's "where" experiment as a table: how much the switches carry, by pool size.

For each pool size X an MNIST auto-encoder (16)5c-(32)3c-Xp is trained, unsupervised and
with where-unpooling (configs/where-ablation.yaml with --arch 16C5-32C3-MPX), then the SAME
weights reconstruct the test split twice: unpooling with the where, and copying each
value over its window (no where). The paper's finding: the where version reconstructs
better at every pool size, and the gap grows with the pool size.

A decoder trained on where-unpooled maps (one value per window) and fed copied ones (k^2
copies) mostly measures that mismatch of scale, so --train-copy also trains, per pool size,
a network with copy-unpooling (the paper's "without the where" model, whose decoder learns
to do without the switches) and reports its error beside the others.

    python -m experiments.where_ablation --train-copy --out reports/
    python -m experiments.where_ablation --pool-sizes 2 4 --max-epochs 1 --limit-train-batches 20

Options this script does not know go to train.py (they override the config).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.reconstructions import unpooling as unpooling_mode  # noqa: E402
from datamodules.augment import destandardize, standardize  # noqa: E402
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

POOL_SIZES = (2, 4, 7)
UNPOOLINGS = ("where", "copy")
ROW_NAMES = {"input": "input", "where": "where", "copy": "copy, same net", "copy_trained": "copy, own net"}


def arch_for(pool_size: int) -> str:
    """The paper's (16)5c-(32)3c-Xp in the project's notation."""
    return f"16C5-32C3-MP{pool_size}"


@torch.no_grad()
def reconstruction_mse(net: StackedWhatWhere, images: Tensor, unpooling: str, batch_size: int = 1000) -> float:
    """Mean squared reconstruction error over ``images`` (model space, as train/rec) with this unpooling."""
    net.eval()
    total = 0.0
    with unpooling_mode(net, unpooling):
        for chunk in images.split(batch_size):
            total += F.mse_loss(net(chunk).reconstruction.float(), chunk.float(), reduction="sum").item()
    return total / images.numel()


@torch.no_grad()
def reconstructions(net: StackedWhatWhere, images: Tensor) -> dict[str, Tensor]:
    """The same weights' reconstructions of ``images`` with each unpooling."""
    net.eval()
    out = {}
    for mode in UNPOOLINGS:
        with unpooling_mode(net, mode):
            out[mode] = net(images).reconstruction
    return out


def findings(rows: list[dict], copy_key: str = "copy") -> dict[str, bool]:
    """The paper's two claims, checked on the measured rows against the ``copy_key`` column."""
    rows = sorted(rows, key=lambda r: r["pool_size"])
    gaps = [r[copy_key] - r["where"] for r in rows]
    return {
        "where_better_everywhere": all(r["where"] < r[copy_key] for r in rows),
        "gap_grows_with_pool_size": all(b > a for a, b in zip(gaps, gaps[1:])),
    }


def markdown(rows: list[dict], num_images: int, train_args: list[str], configs: list[tuple[str, dict]]) -> str:
    trained_copy = all("copy_trained" in r for r in rows)
    lines = [
        "# Where ablation: reconstruction with and without the switches",
        "",
        f"MNIST auto-encoder (16)5c-(32)3c-Xp, trained unsupervised with where-unpooling; the same weights "
        f"reconstruct the first {num_images:,} test images with where-unpooling (*where*) and with copy-unpooling "
        "(*copy, same net*)."
        + (" *copy, own net*: a second network trained with copy-unpooling (no where at all)." if trained_copy else "")
        + " MSE in the model's input space (standardized pixels, as `train/rec`; multiply by 0.3081² = 0.0949 "
        "for [0, 1] pixels).",
        "",
        "| pool size X | architecture | MSE where | MSE copy, same net | copy / where |"
        + (" MSE copy, own net | own net / where |" if trained_copy else "")
        + " run |",
        "| --- | --- | --- | --- | --- |" + (" --- | --- |" if trained_copy else "") + " --- |",
    ]
    for r in sorted(rows, key=lambda r: r["pool_size"]):
        own = f" {r['copy_trained']:.4f} | {r['copy_trained'] / r['where']:.2f} |" if trained_copy else ""
        lines.append(
            f"| {r['pool_size']} | `{r['arch']}` | {r['where']:.4f} | {r['copy']:.4f} | "
            f"{r['copy'] / r['where']:.2f} |{own} {r['run_dir']} |"
        )
    yes = {True: "yes", False: "**no**"}
    lines.append("")
    for key, name in (("copy", "copy, same net"), ("copy_trained", "copy, own net")):
        if key == "copy_trained" and not trained_copy:
            continue
        found = findings(rows, key)
        lines += [
            f"- where beats *{name}* at every pool size: {yes[found['where_better_everywhere']]}; "
            f"the gap grows with the pool size: {yes[found['gap_grows_with_pool_size']]}"
        ]
    lines += [
        "",
        "The same-net copy error mixes two things: the missing switches, and a decoder trained on one value per "
        "window receiving k² copies of it (k² times the mass it learned on)."
        + ("" if trained_copy else " Rerun with --train-copy for a network that learned to decode without the where."),
        "",
        f"Training options given to train.py besides the config: `{' '.join(train_args) or '(none)'}`.",
        "",
        *training_settings(configs),
    ]
    return "\n".join(lines)


def plot_grid(samples: list[dict], path: Path) -> None:
    """For each pool size: rows input / where / copy (same net) [/ copy (own net)], one column per image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from torchvision.utils import make_grid

    num_rows = sum(n in samples[0] for n in ROW_NAMES)
    fig = Figure(
        figsize=(1.1 * samples[0]["input"].shape[0] + 1.5, (1.15 * num_rows + 0.4) * len(samples)), layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(samples), 1, squeeze=False)[:, 0]
    for ax, s in zip(axes, samples):
        names = [n for n in ("input", "where", "copy", "copy_trained") if n in s]
        grid = make_grid(torch.cat([s[n] for n in names]), nrow=len(s["input"]), pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(
            f"pool {s['pool_size']}x{s['pool_size']}: MSE "
            + ", ".join(f"{ROW_NAMES[n]} {s['mse'][n]:.4f}" for n in names[1:])
        )
        ax.set_yticks(
            [(i + 0.5) * grid.shape[1] / len(names) for i in range(len(names))],
            [ROW_NAMES[n].replace(", ", "\n") for n in names],
        )
        ax.set_xticks([])
    fig.savefig(path, dpi=110)


def run_ablation(
    pool_sizes: list[int],
    config: str | Path,
    runs_root: str | Path,
    out_dir: str | Path,
    train_args: list[str] | None = None,
    num_test: int | None = None,
    num_show: int = 8,
    train_copy: bool = False,
) -> list[dict]:
    """Train one auto-encoder per pool size (or reuse it), measure both unpoolings, write the table and grid.

    With ``train_copy`` a second auto-encoder per pool size is trained with copy-unpooling.
    """
    train_args = list(train_args or [])
    rows, samples, configs = [], [], []
    for pool_size in pool_sizes:
        run_dir = Path(runs_root) / f"where-ablation-mp{pool_size}"
        argv = ["--config", str(config), "--arch", arch_for(pool_size), *train_args]
        net, cfg = load_network(train_or_reuse(argv + ["--unpool", "where"], run_dir))
        configs.append((run_dir.name, cfg))
        images01, mean, std = load_test_images(cfg, num_test)
        images = standardize(images01, mean, std)
        row = {
            "pool_size": pool_size,
            "arch": net.arch,
            "run_dir": str(run_dir),
            **{mode: reconstruction_mse(net, images, mode) for mode in UNPOOLINGS},
        }
        shown = images[:num_show]
        recon = reconstructions(net, shown)
        if train_copy:
            copy_net, copy_cfg = load_network(train_or_reuse(argv + ["--unpool", "copy"], Path(f"{run_dir}-copy")))
            configs.append((f"{run_dir.name}-copy", copy_cfg))
            row["copy_trained"] = reconstruction_mse(copy_net, images, "copy")
            recon["copy_trained"] = reconstructions(copy_net, shown)["copy"]
        rows.append(row)
        samples.append(
            {
                "pool_size": pool_size,
                "mse": row,
                **{k: destandardize(v, mean, std) for k, v in (("input", shown), *recon.items())},
            }
        )
        print(f"pool {pool_size}: MSE " + ", ".join(f"{ROW_NAMES[k]} {row[k]:.4f}" for k in recon), flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "where_ablation.md").write_text(markdown(rows, len(images), train_args, configs))
    plot_grid(samples, out_dir / "where_ablation.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        allow_abbrev=False,
        epilog="Other options (e.g. --max-epochs 1 --limit-train-batches 20) go to train.py.",
    )
    parser.add_argument("--pool-sizes", nargs="+", type=int, default=list(POOL_SIZES), help="default: 2 4 7")
    parser.add_argument("--config", default=str(CONFIGS / "where-ablation.yaml"), help="base config of every run")
    parser.add_argument("--runs-root", default="runs", help="run directories go to RUNS_ROOT/where-ablation-mpX")
    parser.add_argument("--out", default="reports", help="where where_ablation.md and .png go")
    parser.add_argument("--num-test", type=int, default=None, help="test images measured (default: all 10,000)")
    parser.add_argument("--num-show", type=int, default=8, help="images in the picture")
    parser.add_argument(
        "--train-copy",
        action="store_true",
        help="also train a copy-unpooling network per pool size (the paper's model without the where)",
    )
    args, train_args = parse_study_args(parser, argv)
    return run_and_report(
        lambda: run_ablation(
            args.pool_sizes,
            args.config,
            args.runs_root,
            args.out,
            train_args,
            args.num_test,
            args.num_show,
            args.train_copy,
        ),
        args.out,
        "where_ablation",
    )


if __name__ == "__main__":
    sys.exit(main())
