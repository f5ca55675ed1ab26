"""Training throughput of the framework against a hand-written PyTorch loop of the same model and loss.

Every row runs in this one process on the same data, in rounds that take turns
(plain, lightning, ..., then again), and each row keeps its best round: noise from
other processes only ever adds time, so the best round is the closest to the cost
of the code, and taking turns gives every row the same chance of a quiet moment.
``python benchmarks/throughput.py --help`` lists the options; ``--json PATH`` keeps the rows.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages, when run as a script

from benchmarks.bench import AUTOCAST, PREPARED_BATCHES, Bench, at_batch, job_config, make_bench  # noqa: E402
from benchmarks.measuring import PeakMemory, matmul_gflops, training_flops  # noqa: E402
from benchmarks.results import write_result  # noqa: E402
from benchmarks.table import (  # noqa: E402
    BARE_TINY,
    LIGHTNING_TINY,
    PLAIN_TINY,
    TINY_BATCH,
    Row,
    best_of,
    compute_ratios,
    format_report,
    steps_per_epoch,
)
from benchmarks.timed import (  # noqa: E402
    time_loader,
    time_nan_guard,
    train_bare_lightning,
    train_lightning,
    train_plain,
)
from orchestration import plugins, training  # noqa: E402
from swwae_lightning import settings as S  # noqa: E402
from swwae_lightning.log_levels import raised_level  # noqa: E402
from swwae_lightning.pooling import POOLINGS  # noqa: E402

FULL = {
    "steps": 30,
    "warmup": 5,
    "rounds": 3,
    "matmul_size": {"cpu": 2048, "cuda": 8192},
    "val_batches": 2,
    "guard_calls": 1000,
}
# --quick: enough to exercise every row in a test, nothing to measure with.
QUICK = {
    "batch_size": 8,
    "unlabeled_batch_size": 8,
    "steps": 2,
    "warmup": 1,
    "rounds": 1,
    "matmul_size": {"cpu": 128, "cuda": 1024},
    "val_batches": 1,
    "guard_calls": 10,
}

# One plain-loop row per objective beside SWWAE's own: the settings each changes from the default job.
OBJECTIVE_ROWS = {
    "plain + fixmatch": {"lambda_rec": 0.0, "lambda_mid": 0.0, "lambda_fixmatch": 1.0},
    "plain + fixmatch + swwae": {"lambda_fixmatch": 1.0},
    "plain + mean teacher": {"lambda_rec": 0.0, "lambda_mid": 0.0, "lambda_consistency": 1.0},
    "plain + swap": {"lambda_swap": 1.0},
    "plain, label top": {"decoder_top": "label"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--plugins", nargs="+", default=[])
    plugins.load(first.parse_known_args(argv)[0].plugins)  # a plugin's dataset or pooling is a choice below
    plugins.declare_all_settings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--plugins",
        nargs="+",
        default=[],
        metavar="PATH_OR_MODULE",
        help="files or modules to import first: their datasets and poolings can be benchmarked",
    )
    p.add_argument(
        "--dataset",
        default=S.SETTINGS["dataset"].default,
        choices=S.SETTINGS["dataset"].allowed(),
        help="its preset network; MNIST is real (bundled), others random unless on disk (default: mnist)",
    )
    p.add_argument(
        "--data-dir",
        default=S.SETTINGS["data_dir"].default,
        help="where datasets are looked for; nothing is downloaded",
    )
    p.add_argument("--batch-size", type=int, help="labeled images per step (default: the default job's)")
    p.add_argument("--unlabeled-batch-size", type=int, help="unlabeled images per step (default: the default job's)")
    p.add_argument(
        "--pooling",
        default="both",
        choices=(*POOLINGS.names(), "both"),
        help="both: every row with hard pooling plus a plain soft row (default: both)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    p.add_argument("--steps", type=int, help=f"timed steps per row and round (default: {FULL['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps first, >= 1 (default: {FULL['warmup']})")
    p.add_argument(
        "--rounds",
        type=int,
        help=f"each row runs this often, taking turns; the best round counts (default: {FULL['rounds']})",
    )
    p.add_argument(
        "--precision",
        default=S.SETTINGS["precision"].default,
        choices=list(AUTOCAST),
        help="those the plain loop mirrors with its autocast",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the network in every row")
    p.add_argument("--channels-last", action="store_true", help="channels_last network in every row")
    p.add_argument(
        "--no-objectives",
        dest="objectives",
        action="store_false",
        help="leave out the plain-loop rows of FixMatch, mean teacher, swap and the label-topped decoder",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="one more, untimed round per row: top ops (torch.profiler) or Lightning's hook times",
    )
    p.add_argument("--quick", action="store_true", help="tiny settings: checks that every row runs, measures nothing")
    p.add_argument("--json", type=Path, help="write settings, rows, ratios and FLOPs here")
    p.add_argument(
        "--folder",
        type=Path,
        help="the same dataset as image files (datamodules.export_folder): a "
        "lightning row reads it from the folder cache, side by side with the in-memory one",
    )
    args = p.parse_args(argv)
    defaults = (
        QUICK if args.quick else {**FULL, **{k: S.SETTINGS[k].default for k in ("batch_size", "unlabeled_batch_size")}}
    )
    for key in ("batch_size", "unlabeled_batch_size", "steps", "warmup", "rounds"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if min(args.warmup, args.steps, args.rounds) < 1:
        p.error("--warmup, --steps and --rounds must be >= 1 (the first step pays one-time costs)")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    return args


def row_runs(args: argparse.Namespace, bench: Bench) -> dict:
    """Each row's measurement, ready to run: name -> run(warmup, steps, name, profile=False)."""
    sizes = QUICK if args.quick else FULL
    cfg = bench.cfg
    encoder_only = job_config(args, pooling=cfg["pooling"], lambda_rec=0.0, lambda_mid=0.0)
    runs = {
        "plain": functools.partial(train_plain, bench, cfg),
        "lightning": functools.partial(train_lightning, bench, cfg),
        "lightning + image callbacks": functools.partial(
            train_lightning, bench, cfg, image_callbacks=True, val_batches=sizes["val_batches"]
        ),
        "encoder-only": functools.partial(train_lightning, bench, encoder_only),
    }
    if args.pooling == "both":
        runs["plain soft"] = functools.partial(train_plain, bench, job_config(args, pooling="soft"))
    if args.objectives:
        for name, changes in OBJECTIVE_ROWS.items():
            runs[name] = functools.partial(train_plain, bench, job_config(args, pooling=cfg["pooling"], **changes))
    tiny = at_batch(bench, TINY_BATCH, len(bench.batches))
    runs[PLAIN_TINY] = functools.partial(train_plain, tiny, tiny.cfg)
    runs[LIGHTNING_TINY] = functools.partial(train_lightning, tiny, tiny.cfg)
    runs[BARE_TINY] = functools.partial(train_bare_lightning, tiny, tiny.cfg)
    runs["loader"] = functools.partial(time_loader, bench)
    runs["loader + views"] = functools.partial(time_loader, bench, views=True)
    if bench.folder_datamodule is not None:
        runs["lightning, folder cache"] = functools.partial(train_lightning, bench, cfg, from_folder=True)
        runs["loader, folder cache"] = functools.partial(time_loader, bench, from_folder=True)
    return runs


def measure(args: argparse.Namespace, runs: dict) -> dict[str, Row]:
    """Rounds that take turns, each row's best round, then one profiled round per row: every row with
    --profile, else the tiny-batch rows only (their operator calls per step are always reported)."""
    rounds = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rounds[name].append(run(args.warmup, args.steps, name))
    rows = {name: best_of(measured) for name, measured in rounds.items()}
    for name in runs if args.profile else (PLAIN_TINY, LIGHTNING_TINY, BARE_TINY):
        profiled = runs[name](args.warmup, args.steps, name, profile=True)
        rows[name].ops_per_step = profiled.ops_per_step
        if args.profile:
            rows[name].profile = profiled.profile
    return rows


def hardware_use(args: argparse.Namespace, bench: Bench, rows: dict[str, Row]) -> dict:
    """FLOP/s of the training step against the machine's own large-matmul rate."""
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    size = (QUICK if args.quick else FULL)["matmul_size"][bench.device.type]
    flops = training_flops(bench, bench.cfg)
    return {
        "gflop_per_step": flops / 1e9,
        "matmul_size": size,
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "matmul_gflops": matmul_gflops(bench.device, dtype, size, bench.synchronize),
        **{f"{name}_gflops": flops * rows[name].steps_per_second / 1e9 for name in ("plain", "lightning")},
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = job_config(args, pooling="hard" if args.pooling == "both" else args.pooling)
    # Lightning's info lines (GPU available, ...) once per Trainer would bury the table.
    with (
        raised_level("pytorch_lightning", logging.WARNING),
        tempfile.TemporaryDirectory(prefix="swwae-bench-") as run_dir,
    ):
        bench = make_bench(args, cfg, Path(run_dir), min(PREPARED_BATCHES, args.warmup + args.steps))
        rows = measure(args, row_runs(args, bench))
        sizes = QUICK if args.quick else FULL
        result = {
            "settings": {
                **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "arch": training.architecture(cfg),
            },
            "device": (
                torch.cuda.get_device_name(bench.device)
                if bench.device.type == "cuda"
                else f"CPU ({os.cpu_count()} cores)"
            ),
            "data": bench.data_source,
            "memory": PeakMemory.describe(bench.device),
            "rows": [row.as_dict() for row in rows.values()],
            "ratios": [
                r.as_dict()
                for r in compute_ratios(
                    rows, steps_per_epoch(bench.datamodule), time_nan_guard(bench, sizes["guard_calls"])
                )
            ],
            "flops": hardware_use(args, bench, rows),
            "profiles": {name: row.profile for name, row in rows.items() if row.profile},
        }
    print(format_report(result))
    for name, text in result["profiles"].items():
        print(f"\nprofile of {name} (an extra round, not timed):\n{text}")
    return write_result(args.json, result)


if __name__ == "__main__":
    main()
