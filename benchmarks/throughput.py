"""Training throughput of the framework against a hand-written PyTorch loop of the same model and loss.

Every row runs in this one process on the same data, in rounds that take turns
(plain, lightning, ..., then again), and each row keeps its best round: noise from
other processes only ever adds time, so the best round is the closest to the cost
of the code, and taking turns gives every row the same chance of a quiet moment.
``python benchmarks/throughput.py --help`` lists the options; ``--json PATH`` keeps the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import gc
import itertools
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, TQDMProgressBar
from pytorch_lightning.profilers import SimpleProfiler
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages, when run as a script

from benchmarks.results import write_result  # noqa: E402
from datamodules.registry import DATASETS, get_dataset  # noqa: E402
from datamodules.semi_supervised import SemiSupervisedDataModule  # noqa: E402
from datamodules.sources import DatasetNotFound, ImageSplits  # noqa: E402
from swwae_lightning.orchestration import training, plugins  # noqa: E402
from swwae_lightning import settings as S  # noqa: E402
from swwae_lightning.log_levels import raised_level  # noqa: E402
from swwae_lightning.module import ema_teacher  # noqa: E402
from swwae_lightning.nan_guard import NonFiniteGuard  # noqa: E402
from swwae_lightning.network import StackedWhatWhere  # noqa: E402
from swwae_lightning.objectives import VIEWS, Objective, is_baseline  # noqa: E402
from swwae_lightning.pooling import POOLINGS  # noqa: E402
from swwae_lightning.orchestration.run_files import RunCSVLogger  # noqa: E402

FULL = {"steps": 30, "warmup": 5, "rounds": 3,
        "matmul_size": {"cpu": 2048, "cuda": 8192}, "val_batches": 2, "guard_calls": 1000}
# --quick: enough to exercise every row in a test, nothing to measure with.
QUICK = {"batch_size": 8, "unlabeled_batch_size": 8, "steps": 2, "warmup": 1, "rounds": 1,
         "matmul_size": {"cpu": 128, "cuda": 1024}, "val_batches": 1, "guard_calls": 10}
PREPARED_BATCHES = 8  # the plain loop cycles through these, already on the device
RANDOM_TRAIN_IMAGES = 4096  # per synthetic dataset, on top of the validation hold-out

TARGETS = {  # ratio name -> (at least?, bound)
    "lightning / plain": (True, 0.95),
    "swwae / encoder-only per image": (False, 2.5),
    "soft / hard per step": (False, 1.5),
    "loader / model": (True, 10.0),
    "callbacks on / off per epoch": (True, 0.98),
    "loader with views / fixmatch model": (True, 10.0),
    "nan guard / lightning step": (False, 0.01),
    "folder cache / in memory": (True, 0.95),
}
# One plain-loop row per objective beside SWWAE's own: the settings each changes from the default job.
OBJECTIVE_ROWS = {
    "plain + fixmatch": {"lambda_rec": 0.0, "lambda_mid": 0.0, "lambda_fixmatch": 1.0},
    "plain + fixmatch + swwae": {"lambda_fixmatch": 1.0},
    "plain + mean teacher": {"lambda_rec": 0.0, "lambda_mid": 0.0, "lambda_consistency": 1.0},
    "plain + swap": {"lambda_swap": 1.0},
    "plain, label top": {"decoder_top": "label"},
}


# ------------------------------------------------------------------------------------------ results
@dataclass
class Row:
    """One line of the table: one way of training (or of loading data), measured."""

    name: str
    pooling: str
    images_per_step: int
    seconds_per_step: float  # mean over the timed steps of the best round, warm-up excluded
    peak_mib: float
    note: str = ""
    round_ms: list[float] = field(default_factory=list)  # ms/step of every round: the spread is the noise
    callback_seconds: list[float] = field(default_factory=list)  # each time the image callbacks ran
    losses: list[float] = field(default_factory=list, repr=False)  # every step's, warm-up included
    profile: str = field(default="", repr=False)  # --profile: top ops (plain) or hooks (Lightning)

    @property
    def steps_per_second(self) -> float:
        return 1 / self.seconds_per_step

    @property
    def images_per_second(self) -> float:
        return self.images_per_step * self.steps_per_second

    @property
    def seconds_per_image(self) -> float:
        return 1 / self.images_per_second

    def as_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k not in ("losses", "profile")},
                "images_per_second": self.images_per_second, "ms_per_step": 1000 * self.seconds_per_step}


def best_of(rounds: list[Row]) -> Row:
    """The fastest round, with every round's time kept and the pictures' timings pooled."""
    best = min(rounds, key=lambda row: row.seconds_per_step)
    return dataclasses.replace(best, round_ms=[1000 * r.seconds_per_step for r in rounds],
                               callback_seconds=[s for r in rounds for s in r.callback_seconds])


@dataclass
class Ratio:
    """Two rows compared and, where the project sets one, the target the comparison must meet."""

    name: str
    value: float | None  # None: its rows were not run (soft/hard without --pooling both)
    basis: str  # which rows, and how
    target: tuple[bool, float] | None = None  # (at least?, bound); None: for information

    @property
    def verdict(self) -> str:
        if self.target is None or self.value is None:
            return ""
        at_least, bound = self.target
        return "PASS" if (self.value >= bound if at_least else self.value <= bound) else "MISS"

    def as_dict(self) -> dict:
        target = None if self.target is None else {"at_least": self.target[0], "bound": self.target[1]}
        return {**asdict(self), "target": target, "verdict": self.verdict}


# ------------------------------------------------------------------------------------------ setup
@dataclass
class Bench:
    """What every row shares: the default job's config, its data, the device and the numerics."""

    cfg: dict
    datamodule: SemiSupervisedDataModule
    data_source: str
    device: torch.device
    compile: bool
    channels_last: bool
    batches: list[dict]  # the plain loop's batches, prepared once by the real data path
    run_dir: Path
    views_datamodule: SemiSupervisedDataModule  # the same data, drawing every extra view
    view_batches: list[dict]  # the plain loop's batches with the strong and the second view
    folder_datamodule: SemiSupervisedDataModule | None = None  # --folder: the same job read from a folder's cache

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self):
        enabled = self.cfg["precision"] == "bf16-mixed"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)


def job_config(args: argparse.Namespace, **overrides) -> dict:
    """The declared defaults (the default job) with the benchmark's choices on top."""
    plugins.declare_all_settings()
    cfg = S.defaults()
    cfg.update(dataset=args.dataset, data_dir=args.data_dir, download=False, batch_size=args.batch_size,
               unlabeled_batch_size=args.unlabeled_batch_size, precision=args.precision, logger="csv")
    cfg.update(overrides)
    return cfg


def random_splits(dataset: str, num_train: int, seed: int = 0) -> ImageSplits:
    """Uniform uint8 images of the dataset's shape: the same cost per step as real ones."""
    info = get_dataset(dataset)
    generator = torch.Generator().manual_seed(seed)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, *info.image_shape), dtype=torch.uint8, generator=generator)
        return images, torch.randint(0, info.num_classes, (n,), generator=generator)

    return ImageSplits(*draw(num_train), *draw(256))


def load_datamodule(cfg: dict) -> tuple[SemiSupervisedDataModule, str]:
    """The real data when it is on disk or bundled (never downloaded), else random images."""
    datamodule = training.build_datamodule(cfg)
    try:
        datamodule.setup("fit")
        return datamodule, "real"
    except DatasetNotFound:
        datamodule.splits = random_splits(cfg["dataset"], cfg["val_size"] + RANDOM_TRAIN_IMAGES)
        datamodule.setup("fit")  # the splits are there: this only draws the labeled/validation split
        return datamodule, "random uint8 (not found on disk)"


def device_batches(datamodule: SemiSupervisedDataModule, device: torch.device):
    """Training batches endlessly, through the real path: the streams, the transfer, the on-device prep."""
    datamodule.trainer = None  # detach from any earlier Trainer: its loop state is not ours
    while True:
        for batch, _, _ in datamodule.train_dataloader():
            yield datamodule.on_after_batch_transfer(move_data_to_device(batch, device), 0)


def make_bench(args: argparse.Namespace, cfg: dict, run_dir: Path, prepared_batches: int) -> Bench:
    """Loads the data once and prepares the plain loop's batches (augmented as at step 0)."""
    datamodule, data_source = load_datamodule(cfg)
    device = torch.device(args.device)
    batches = list(itertools.islice(device_batches(datamodule, device), prepared_batches))
    views = SemiSupervisedDataModule(views=VIEWS, **training.data_settings(cfg))
    views.splits = datamodule.splits  # loaded once
    views.setup("fit")
    view_batches = list(itertools.islice(device_batches(views, device), prepared_batches))
    folder = None
    if args.folder:  # the same images as files: the folder dataset, its cache built here (untimed)
        channels, size, _ = datamodule.info.image_shape
        folder = training.build_datamodule({**cfg, "dataset": "folder", "data_dir": str(args.folder),
                                              "image_size": size, "channels": channels})
        folder.setup("fit")
    return Bench(cfg, datamodule, data_source, device, args.compile, args.channels_last, batches, run_dir,
                 views, view_batches, folder)


def adapt_network(net: StackedWhatWhere, bench: Bench) -> StackedWhatWhere:
    """The same switches in both paths, so they stay apples to apples."""
    if bench.channels_last:
        net.to(memory_format=torch.channels_last)
    if bench.compile:
        net.compile()  # forward, in place: the state_dict keys do not change
        net.encode = torch.compile(net.encode)  # the encoder-only path calls encode, not forward
    return net


def new_network(cfg: dict, device: torch.device) -> StackedWhatWhere:
    """Seeded as training.build_module seeds, so it starts from the same weights as the module's net."""
    pl.seed_everything(cfg["seed"], verbose=False)
    info = get_dataset(cfg["dataset"])
    channels, height, _ = info.image_shape
    net = StackedWhatWhere(training.architecture(cfg), channels, height, info.num_classes,
                           **{k: cfg[k] for k in S.names_in(["what-where"])})
    return net.to(device)


def objective(cfg: dict) -> Objective:
    """The same loss code the LightningModule trains with."""
    return Objective(**{k: cfg[k] for k in S.names_in(["objectives"])})


def images_per_step(cfg: dict) -> int:
    """The dataset images a step trains on: the baseline skips the unlabeled batch (extra views not counted)."""
    return cfg["batch_size"] + (0 if is_baseline(cfg) else cfg["unlabeled_batch_size"])


# ------------------------------------------------------------------------------------------ measuring
class PeakMemory:
    """The most memory a row adds above what was in use when it started.

    CUDA: ``max_memory_allocated``. CPU: resident set size sampled every 5 ms from
    /proc/self/statm, after glibc has handed freed memory back (tracemalloc does not see
    torch's allocator; ru_maxrss only moves when a row beats every earlier one);
    ru_maxrss growth where /proc is missing.
    """

    STATM = Path("/proc/self/statm")

    def __init__(self, device: torch.device):
        self.device, self.peak_mib = device, 0.0

    @classmethod
    def describe(cls, device: torch.device) -> str:
        if device.type == "cuda":
            return "CUDA max_memory_allocated above the row's start"
        if cls.STATM.exists():
            return "peak resident set size above the row's start (after malloc_trim), sampled every 5 ms"
        return "ru_maxrss growth during the row"

    def _rss_mib(self) -> float:
        if self.STATM.exists():
            return int(self.STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def _sample(self, start: float, stop: threading.Event) -> None:
        while not stop.wait(0.005):
            self.peak_mib = max(self.peak_mib, self._rss_mib() - start)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            gc.collect()
            with contextlib.suppress(OSError, AttributeError):  # not glibc: earlier rows' heap may be reused
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, args=(self._rss_mib(), self._stop), daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._start
        else:
            self._stop.set()
            self._sampler.join()


class StepClock:
    """Wall time of the steps after the warm-up.

    The device is synchronized only at the two ends of the window, so CUDA steps
    stay asynchronous in between, as in a real run.
    """

    def __init__(self, warmup: int, steps: int, synchronize):
        self.warmup, self.steps, self.synchronize = warmup, steps, synchronize
        self.ended, self.start, self.seconds_per_step = 0, 0.0, float("nan")

    @property
    def running(self) -> bool:
        return self.ended < self.warmup + self.steps

    def step_ended(self) -> None:
        self.ended += 1
        if self.ended in (self.warmup, self.warmup + self.steps):
            self.synchronize()
            if self.ended == self.warmup:
                self.start = time.perf_counter()
            else:
                self.seconds_per_step = (time.perf_counter() - self.start) / self.steps


class OpProfile:
    """torch.profiler over the steps after the warm-up when ``enabled``, else nothing at all."""

    def __init__(self, enabled: bool, device: torch.device, warmup: int):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        self.profiler = torch.profiler.profile(activities=activities) if enabled else None
        self.warmup, self.ended = warmup, 0

    def __enter__(self) -> "OpProfile":
        return self

    def __exit__(self, *exc) -> None:
        if self.profiler and self.ended >= self.warmup:
            self.profiler.stop()

    def step(self) -> None:
        self.ended += 1
        if self.profiler and self.ended == self.warmup:
            self.profiler.start()

    def top(self, rows: int = 5) -> str:
        return self.profiler.key_averages().table(sort_by=self.sort_by, row_limit=rows) if self.profiler else ""


def top_hooks(profiler: SimpleProfiler, steps: int, rows: int = 8) -> str:
    """Lightning's own timings of the actions it runs every step, over the last ``steps`` calls.

    Nested actions each have a line (run_training_batch holds training_step, backward, ...).
    """
    timed = {name: durations[-steps:] for name, durations in profiler.recorded_durations.items() if len(durations) >= steps}
    lines = [f"{'ms/step':>9}  action (last {steps} calls)"]
    for name, durations in sorted(timed.items(), key=lambda item: sum(item[1]), reverse=True)[:rows]:
        lines.append(f"{1000 * statistics.mean(durations):>9.2f}  {name}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ rows
def train_plain(bench: Bench, cfg: dict, warmup: int, steps: int, name: str, profile: bool = False) -> Row:
    """The reference: zero_grad, the objective's forward and loss, backward, Adam step; nothing else."""
    net = adapt_network(new_network(cfg, bench.device), bench).train()
    loss_of = objective(cfg)
    teacher = ema_teacher(net, cfg["ema_decay"]) if loss_of.needs_teacher else None
    batches = bench.view_batches if loss_of.views else bench.batches
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    torch.manual_seed(cfg["seed"])  # dropout draws the same masks as in train_lightning
    losses, clock = [], StepClock(warmup, steps, bench.synchronize)
    with PeakMemory(bench.device) as memory, OpProfile(profile, bench.device, warmup) as ops:
        while clock.running:
            batch = batches[clock.ended % len(batches)]
            optimizer.zero_grad()
            if teacher is not None:
                teacher.update_parameters(net)
            with bench.autocast():
                loss = loss_of(net, batch, teacher).total
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            clock.step_ended()
            ops.step()
    return Row(name, cfg["pooling"], images_per_step(cfg), clock.seconds_per_step, memory.peak_mib,
               losses=[float(v) for v in losses], profile=ops.top())


class StepWindow(Callback):
    """Times Lightning's training steps end to end: fetch, transfer, step, logging, every hook.

    It also keeps each step's loss (as tensors: no sync per step) and reseeds at the
    start of training, so dropout draws the same masks as the plain loop.
    """

    def __init__(self, clock: StepClock, seed: int):
        self.clock, self.seed = clock, seed
        self.losses: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        torch.manual_seed(self.seed)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append((outputs["loss"] if isinstance(outputs, dict) else outputs).detach())
        self.clock.step_ended()


class EpochEndClock:
    """Times what Lightning runs between two marker callbacks at the end of a validation epoch.

    ``opening`` goes right before the image callbacks and ``closing`` right after:
    Lightning calls callbacks in list order, so each sample is exactly their hook.
    """

    def __init__(self, synchronize):
        self.seconds: list[float] = []
        clock = self

        class Marker(Callback):
            def __init__(self, opens: bool):
                self.opens = opens

            @property
            def state_key(self) -> str:
                return f"EpochEndClock[{'opening' if self.opens else 'closing'}]"

            def on_validation_epoch_end(self, trainer, pl_module) -> None:
                synchronize()
                if self.opens:
                    clock._start = time.perf_counter()
                else:
                    clock.seconds.append(time.perf_counter() - clock._start)

        self.opening, self.closing = Marker(True), Marker(False)


def train_lightning(bench: Bench, cfg: dict, warmup: int, steps: int, name: str, image_callbacks: bool = False,
                    val_batches: int = 1, profile: bool = False, from_folder: bool = False) -> Row:
    """The default job's path: SWWAEModule, the real datamodule, CSV logging, LR monitor, progress bar.

    With ``image_callbacks`` it validates (``val_batches`` batches) once, right after the
    timed steps, and times the pictures drawn at the end of that validation.
    """
    pl.seed_everything(cfg["seed"], verbose=False)
    module = training.build_module(cfg)
    adapt_network(module.net, bench)
    clock = StepClock(warmup, steps, bench.synchronize)
    window = StepWindow(clock, cfg["seed"])
    callbacks = [TQDMProgressBar(refresh_rate=cfg["progress_every"]), LearningRateMonitor(logging_interval="step"), window]
    validation = {"limit_val_batches": 0}
    pictures = EpochEndClock(bench.synchronize)
    if image_callbacks:
        callbacks += [pictures.opening, *training.image_callbacks(cfg, bench.run_dir / name), pictures.closing]
        validation = {"limit_val_batches": val_batches, "val_check_interval": warmup + steps,
                      "check_val_every_n_epoch": None}
    hooks = SimpleProfiler(dirpath=bench.run_dir / name, filename="profile") if profile else None
    trainer = pl.Trainer(
        accelerator="gpu" if bench.device.type == "cuda" else "cpu", devices=1, precision=cfg["precision"],
        max_steps=warmup + steps, logger=RunCSVLogger(bench.run_dir / name), callbacks=callbacks,
        log_every_n_steps=cfg["log_every"], enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False, default_root_dir=str(bench.run_dir / name),
        profiler=hooks, **validation,
    )
    # The progress bar is drawn (it is part of the default job's cost) but into /dev/null: the
    # benchmark prints its tables, not a bar per row.
    with PeakMemory(bench.device) as memory, open(os.devnull, "w") as sink, \
            contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        trainer.fit(module, datamodule=bench.folder_datamodule if from_folder else bench.datamodule)
    note = "trains on the labeled batch only; the data path still prepares the unlabeled one" if is_baseline(cfg) else ""
    return Row(name, cfg["pooling"], images_per_step(cfg), clock.seconds_per_step, memory.peak_mib, note,
               callback_seconds=pictures.seconds, losses=[float(v) for v in window.losses],
               profile=top_hooks(hooks, steps) if hooks else "")


def time_loader(bench: Bench, warmup: int, steps: int, name: str, profile: bool = False, views: bool = False,
                from_folder: bool = False) -> Row:
    """The data path alone: streams, CombinedLoader, transfer, normalization and augmentation (and the views)."""
    datamodule = bench.views_datamodule if views else bench.folder_datamodule if from_folder else bench.datamodule
    batches, clock = device_batches(datamodule, bench.device), StepClock(warmup, steps, bench.synchronize)
    with PeakMemory(bench.device) as memory, OpProfile(profile, bench.device, warmup) as ops:
        while clock.running:
            next(batches)
            clock.step_ended()
            ops.step()
    size = bench.cfg["batch_size"] + bench.cfg["unlabeled_batch_size"]
    note = "no model: batches/s = steps/s" + ("; draws the strong and the second view" if views else "")
    return Row(name, "-", size, clock.seconds_per_step, memory.peak_mib, note, profile=ops.top())


def time_nan_guard(bench: Bench, calls: int) -> float:
    """Seconds the NaN guard adds to a step that is not logged: its ``record`` of that step's loss parts.

    The parts are a real step's (one forward of the default job), on the bench's device; the
    device is synchronized only around all the calls, as the guard never syncs on such a step.
    """
    net = new_network(bench.cfg, bench.device).train()
    with torch.no_grad():
        parts = objective(bench.cfg)(net, bench.batches[0]).parts()
    guard = NonFiniteGuard()
    guard.record(parts, 0, 0, 0)  # the first call sets up its buffers on the device
    bench.synchronize()
    start = time.perf_counter()
    for step in range(1, calls + 1):
        guard.record(parts, step, 0, step)
    bench.synchronize()
    return (time.perf_counter() - start) / calls


# ------------------------------------------------------------------------------------------ hardware
def training_flops(bench: Bench, cfg: dict) -> int:
    """Matmul and convolution FLOPs of one forward + backward of the full model on one batch."""
    net = new_network(cfg, bench.device).train()
    with FlopCounterMode(display=False) as counter:
        objective(cfg)(net, bench.batches[0]).total.backward()
    return counter.get_total_flops()


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int, synchronize, min_seconds: float = 0.5) -> float:
    """What one large square matmul achieves: a rough ceiling for a convnet step."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # first call: allocation, library init
    synchronize()
    repeats, start = 0, time.perf_counter()
    while repeats < 2 or time.perf_counter() - start < min_seconds:
        a @ b
        synchronize()
        repeats += 1
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


# ------------------------------------------------------------------------------------------ report
def steps_per_epoch(datamodule: SemiSupervisedDataModule) -> int:
    datamodule.trainer = None
    return min(len(stream) for stream in datamodule.train_streams().values())


def compute_ratios(rows: dict[str, Row], epoch_steps: int, guard_seconds: float) -> list[Ratio]:
    plain, lightning, encoder = rows["plain"], rows["lightning"], rows["encoder-only"]
    soft = rows.get("plain soft")
    pictures = rows["lightning + image callbacks"]
    epoch_seconds = epoch_steps * lightning.seconds_per_step
    picture_seconds = statistics.median(pictures.callback_seconds)

    def ratio(name: str, value: float | None, basis: str) -> Ratio:
        return Ratio(name, value, basis, TARGETS.get(name))

    return [
        ratio("lightning / plain", lightning.images_per_second / plain.images_per_second,
              "images/s of the lightning row over the plain row"),
        ratio("swwae / encoder-only per image", lightning.seconds_per_image / encoder.seconds_per_image,
              "seconds per trained image, both through Lightning"),
        ratio("soft / hard per step", soft.seconds_per_step / plain.seconds_per_step if soft else None,
              "ms/step of plain soft over plain (model cost only)" if soft else "needs --pooling both"),
        ratio("loader / model", rows["loader"].steps_per_second / lightning.steps_per_second,
              "loader batches/s over lightning steps/s"),
        ratio("callbacks on / off per epoch", epoch_seconds / (epoch_seconds + picture_seconds),
              f"an epoch of {epoch_steps} steps at the lightning row's rate ({epoch_seconds:.1f} s) "
              f"plus the pictures' {1000 * picture_seconds:.1f} ms (validation left out: stricter)"),
        ratio("callbacks row / lightning per step", pictures.steps_per_second / lightning.steps_per_second,
              "the image callbacks have no per-step hook: ~1 up to noise"),
        ratio("loader with views / fixmatch model", rows["loader + views"].steps_per_second
              / rows["plain + fixmatch"].steps_per_second if "plain + fixmatch" in rows else None,
              "loader batches/s with both extra views over plain FixMatch steps/s"),
        ratio("nan guard / lightning step", guard_seconds / lightning.seconds_per_step,
              f"the guard's record of one step's loss parts ({1e6 * guard_seconds:.1f} us) over the lightning row's step"),
        ratio("folder cache / in memory", rows["lightning, folder cache"].images_per_second / lightning.images_per_second
              if "lightning, folder cache" in rows else None,
              "images/s of the lightning row read from --folder's cache over the in-memory lightning row"
              if "lightning, folder cache" in rows else "needs --folder"),
    ]


def format_report(result: dict) -> str:
    settings = result["settings"]
    lines = [f"{result['device']}; torch {torch.__version__}, {torch.get_num_threads()} threads; precision "
             f"{settings['precision']}, compile {settings['compile']}, channels_last {settings['channels_last']}; "
             f"data: {result['data']}; best of {settings['rounds']} rounds of {settings['steps']} steps",
             f"{'row':<28} {'pooling':<7} {'images/s':>10} {'ms/step':>9} {'rounds ms/step':>22} {'peak MiB':>9}  note"]
    for row in result["rows"]:
        rounds = " ".join(f"{ms:.1f}" for ms in row["round_ms"])
        note = row["note"] or (f"pictures: {1000 * statistics.median(row['callback_seconds']):.1f} ms per validation "
                               f"epoch (median of {len(row['callback_seconds'])})" if row["callback_seconds"] else "")
        lines.append(f"{row['name']:<28} {row['pooling']:<7} {row['images_per_second']:>10.1f} "
                     f"{row['ms_per_step']:>9.2f} {rounds:>22} {row['peak_mib']:>9.1f}  {note}")
    lines += [f"peak memory: {result['memory']}", ""]
    for r in result["ratios"]:
        value = "n/a" if r["value"] is None else f"{r['value']:.3f}"
        target = f"{'>=' if r['target']['at_least'] else '<='} {r['target']['bound']:g}" if r["target"] else "(info)"
        lines.append(f"{r['name']:<36} {value:>7}  {target:<8} {r['verdict']:<4}  {r['basis']}")
    f = result["flops"]
    lines += ["", f"training step: {f['gflop_per_step']:.2f} GFLOP (conv + matmul, forward + backward, FlopCounterMode); "
                  f"{f['matmul_dtype']} matmul {f['matmul_size']}^2: {f['matmul_gflops']:.1f} GFLOP/s"]
    for name in ("plain", "lightning"):
        achieved = f[f"{name}_gflops"]
        lines.append(f"  {name:<10} {achieved:8.1f} GFLOP/s = {100 * achieved / f['matmul_gflops']:5.1f}% of the matmul rate")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--plugins", nargs="+", default=[])
    plugins.load(first.parse_known_args(argv)[0].plugins)  # a plugin's dataset or pooling is a choice below
    plugins.declare_all_settings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plugins", nargs="+", default=[], metavar="PATH_OR_MODULE",
                   help="files or modules to import first: their datasets and poolings can be benchmarked")
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS),
                   help="its preset network; MNIST is real (bundled), others random unless on disk (default: mnist)")
    p.add_argument("--data-dir", default="data", help="where datasets are looked for; nothing is downloaded")
    p.add_argument("--batch-size", type=int, help="labeled images per step (default: the default job's)")
    p.add_argument("--unlabeled-batch-size", type=int, help="unlabeled images per step (default: the default job's)")
    p.add_argument("--pooling", default="both", choices=(*POOLINGS.names(), "both"),
                   help="both: every row with hard pooling plus a plain soft row (default: both)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    p.add_argument("--steps", type=int, help=f"timed steps per row and round (default: {FULL['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps first, >= 1 (default: {FULL['warmup']})")
    p.add_argument("--rounds", type=int, help=f"each row runs this often, taking turns; the best round counts (default: {FULL['rounds']})")
    p.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"))
    p.add_argument("--compile", action="store_true", help="torch.compile the network in every row")
    p.add_argument("--channels-last", action="store_true", help="channels_last network in every row")
    p.add_argument("--no-objectives", dest="objectives", action="store_false",
                   help="leave out the plain-loop rows of FixMatch, mean teacher, swap and the label-topped decoder")
    p.add_argument("--profile", action="store_true",
                   help="one more, untimed round per row: top ops (torch.profiler) or Lightning's hook times")
    p.add_argument("--quick", action="store_true", help="tiny settings: checks that every row runs, measures nothing")
    p.add_argument("--json", type=Path, help="write settings, rows, ratios and FLOPs here")
    p.add_argument("--folder", type=Path, help="the same dataset as image files (datamodules.export_folder): a "
                   "lightning row reads it from the folder cache, side by side with the in-memory one")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else {**FULL, **{k: S.SETTINGS[k].default for k in ("batch_size", "unlabeled_batch_size")}}
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
        "lightning + image callbacks": functools.partial(train_lightning, bench, cfg, image_callbacks=True,
                                                         val_batches=sizes["val_batches"]),
        "encoder-only": functools.partial(train_lightning, bench, encoder_only),
    }
    if args.pooling == "both":
        runs["plain soft"] = functools.partial(train_plain, bench, job_config(args, pooling="soft"))
    if args.objectives:
        for name, changes in OBJECTIVE_ROWS.items():
            runs[name] = functools.partial(train_plain, bench, job_config(args, pooling=cfg["pooling"], **changes))
    runs["loader"] = functools.partial(time_loader, bench)
    runs["loader + views"] = functools.partial(time_loader, bench, views=True)
    if bench.folder_datamodule is not None:
        runs["lightning, folder cache"] = functools.partial(train_lightning, bench, cfg, from_folder=True)
        runs["loader, folder cache"] = functools.partial(time_loader, bench, from_folder=True)
    return runs


def measure(args: argparse.Namespace, runs: dict) -> dict[str, Row]:
    """Rounds that take turns, each row's best round, then (--profile) one profiled round per row."""
    rounds = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rounds[name].append(run(args.warmup, args.steps, name))
    rows = {name: best_of(measured) for name, measured in rounds.items()}
    if args.profile:
        for name, run in runs.items():
            rows[name].profile = run(args.warmup, args.steps, name, profile=True).profile
    return rows


def hardware_use(args: argparse.Namespace, bench: Bench, rows: dict[str, Row]) -> dict:
    """FLOP/s of the training step against the machine's own large-matmul rate."""
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    size = (QUICK if args.quick else FULL)["matmul_size"][bench.device.type]
    flops = training_flops(bench, bench.cfg)
    return {"gflop_per_step": flops / 1e9, "matmul_size": size, "matmul_dtype": str(dtype).removeprefix("torch."),
            "matmul_gflops": matmul_gflops(bench.device, dtype, size, bench.synchronize),
            **{f"{name}_gflops": flops * rows[name].steps_per_second / 1e9 for name in ("plain", "lightning")}}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = job_config(args, pooling="hard" if args.pooling == "both" else args.pooling)
    # Lightning's info lines (GPU available, ...) once per Trainer would bury the table.
    with raised_level("pytorch_lightning", logging.WARNING), tempfile.TemporaryDirectory(prefix="swwae-bench-") as run_dir:
        bench = make_bench(args, cfg, Path(run_dir), min(PREPARED_BATCHES, args.warmup + args.steps))
        rows = measure(args, row_runs(args, bench))
        sizes = QUICK if args.quick else FULL
        result = {
            "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                         "arch": training.architecture(cfg)},
            "device": (torch.cuda.get_device_name(bench.device) if bench.device.type == "cuda"
                       else f"CPU ({os.cpu_count()} cores)"),
            "data": bench.data_source,
            "memory": PeakMemory.describe(bench.device),
            "rows": [row.as_dict() for row in rows.values()],
            "ratios": [r.as_dict() for r in compute_ratios(rows, steps_per_epoch(bench.datamodule),
                                                           time_nan_guard(bench, sizes["guard_calls"]))],
            "flops": hardware_use(args, bench, rows),
            "profiles": {name: row.profile for name, row in rows.items() if row.profile},
        }
    print(format_report(result))
    for name, text in result["profiles"].items():
        print(f"\nprofile of {name} (an extra round, not timed):\n{text}")
    return write_result(args.json, result)


if __name__ == "__main__":
    main()
