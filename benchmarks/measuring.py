"""The instruments of the throughput benchmark: step clocks, peak memory, op and hook profiles, FLOPs."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import statistics
import threading
import time
from pathlib import Path

import torch
from pytorch_lightning.profilers import SimpleProfiler
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench import Bench, new_network, objective


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
        self.created = time.perf_counter()
        self.warmup_seconds = float("nan")  # setup and the untimed steps: where --compile compiles

    @property
    def running(self) -> bool:
        return self.ended < self.warmup + self.steps

    def step_ended(self) -> None:
        self.ended += 1
        if self.ended in (self.warmup, self.warmup + self.steps):
            self.synchronize()
            if self.ended == self.warmup:
                self.start = time.perf_counter()
                self.warmup_seconds = self.start - self.created
            else:
                self.seconds_per_step = (time.perf_counter() - self.start) / self.steps


class OpProfile:
    """torch.profiler over the ``steps`` steps after the warm-up when ``enabled``, else nothing at all."""

    def __init__(self, enabled: bool, device: torch.device, warmup: int, steps: int):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        self.profiler = torch.profiler.profile(activities=activities) if enabled else None
        self.warmup, self.steps, self.ended, self.running = warmup, steps, 0, False

    def __enter__(self) -> "OpProfile":
        return self

    def __exit__(self, *exc) -> None:
        if self.running:
            self.profiler.stop()
            self.running = False

    def step(self) -> None:
        self.ended += 1
        if self.profiler and self.ended == self.warmup:
            self.profiler.start()
            self.running = True
        elif self.running and self.ended == self.warmup + self.steps:
            self.profiler.stop()
            self.running = False

    def top(self, rows: int = 5) -> str:
        return self.profiler.key_averages().table(sort_by=self.sort_by, row_limit=rows) if self.profiler else ""

    def calls_per_step(self) -> float | None:
        """Operator calls a step makes: ``aten::`` ops not called by another ``aten::`` op (each is one
        trip through the dispatcher from Python, autograd or the optimizer: what a GPU waits for)."""
        if not self.profiler:
            return None
        calls = sum(
            1
            for event in self.profiler.events()
            if event.name.startswith("aten::")
            and not (event.cpu_parent is not None and event.cpu_parent.name.startswith("aten::"))
        )
        return calls / self.steps


def top_hooks(profiler: SimpleProfiler, steps: int, rows: int = 8) -> str:
    """Lightning's own timings of the actions it runs every step, over the last ``steps`` calls.

    Nested actions each have a line (run_training_batch holds training_step, backward, ...).
    """
    timed = {
        name: durations[-steps:] for name, durations in profiler.recorded_durations.items() if len(durations) >= steps
    }
    lines = [f"{'ms/step':>9}  action (last {steps} calls)"]
    for name, durations in sorted(timed.items(), key=lambda item: sum(item[1]), reverse=True)[:rows]:
        lines.append(f"{1000 * statistics.mean(durations):>9.2f}  {name}")
    return "\n".join(lines)


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
