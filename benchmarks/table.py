"""The benchmark's results: a row per way of training, the ratios between rows and their targets, the printout."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import asdict, dataclass, field

import torch

from datamodules.semi_supervised import SemiSupervisedDataModule

TINY_BATCH = 2  # labeled and unlabeled images a step in the two rows that measure the host's work
PLAIN_TINY, LIGHTNING_TINY, BARE_TINY = (
    f"plain, batch {TINY_BATCH} + {TINY_BATCH}",
    f"lightning, batch {TINY_BATCH} + {TINY_BATCH}",
    f"bare lightning, batch {TINY_BATCH} + {TINY_BATCH}",
)
TARGETS = {  # figure name -> (at least?, bound)
    "lightning / plain": (True, 0.95),
    f"framework overhead, ms per step at batch {TINY_BATCH} + {TINY_BATCH}": (False, 0.5),
    f"dispatch floor, ms per step at batch {TINY_BATCH} + {TINY_BATCH}": (False, 5.0),
    f"lightning / plain at batch {TINY_BATCH} + {TINY_BATCH}": (True, 0.95),
    "swwae / encoder-only per image": (False, 2.5),
    "soft / hard per step": (False, 1.5),
    "loader / model": (True, 10.0),
    "callbacks on / off per epoch": (True, 0.98),
    "loader with views / fixmatch model": (True, 10.0),
    "nan guard / lightning step": (False, 0.01),
    "folder cache / in memory": (True, 0.95),
}


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
    ops_per_step: float | None = None  # operator calls per step, from an extra profiled round (some rows)
    warmup_seconds: list[float] = field(default_factory=list)  # each round's setup and untimed steps

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
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("losses", "profile")},
            "images_per_second": self.images_per_second,
            "ms_per_step": 1000 * self.seconds_per_step,
        }


def best_of(rounds: list[Row]) -> Row:
    """The fastest round, with every round's time kept and the pictures' timings pooled."""
    best = min(rounds, key=lambda row: row.seconds_per_step)
    return dataclasses.replace(
        best,
        round_ms=[1000 * r.seconds_per_step for r in rounds],
        callback_seconds=[s for r in rounds for s in r.callback_seconds],
        warmup_seconds=[s for r in rounds for s in r.warmup_seconds],
    )


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


def steps_per_epoch(datamodule: SemiSupervisedDataModule) -> int:
    datamodule.trainer = None
    return min(len(stream) for stream in datamodule.train_streams().values())


def host_work(rows: dict[str, Row], ratio) -> list:
    """The figures of the tiny-batch rows: what Lightning adds to a step, split into Lightning's own loop
    (the bare row) and this project's per-step work (data path, schedule, NaN guard, logging, callbacks);
    what the plain step costs; how many operator calls each makes (the host's work a GPU would wait for)."""
    plain, lightning, bare = rows[PLAIN_TINY], rows[LIGHTNING_TINY], rows[BARE_TINY]
    at = f"at batch {TINY_BATCH} + {TINY_BATCH}"
    return [
        ratio(
            f"framework overhead, ms per step {at}",
            1000 * (lightning.seconds_per_step - plain.seconds_per_step),
            f"ms/step of the {LIGHTNING_TINY!r} row minus the {PLAIN_TINY!r} row",
        ),
        ratio(
            f"lightning's own loop, ms per step {at}",
            1000 * (bare.seconds_per_step - plain.seconds_per_step),
            f"ms/step of the {BARE_TINY!r} row (the plain step in a bare LightningModule) minus the plain row",
        ),
        ratio(
            f"this project's per-step work, ms per step {at}",
            1000 * (lightning.seconds_per_step - bare.seconds_per_step),
            f"ms/step of the {LIGHTNING_TINY!r} row minus the bare row",
        ),
        ratio(f"dispatch floor, ms per step {at}", 1000 * plain.seconds_per_step, f"ms/step of the {PLAIN_TINY!r} row"),
        ratio(
            f"lightning / plain {at}",
            plain.seconds_per_step / lightning.seconds_per_step,
            "steps/s of the two tiny-batch rows",
        ),
        ratio(f"operator calls per step, plain {at}", plain.ops_per_step, "aten ops not called by another aten op"),
        ratio(f"operator calls per step, lightning {at}", lightning.ops_per_step, "the same, through Lightning"),
        ratio(f"operator calls per step, bare lightning {at}", bare.ops_per_step, "the same, in the bare module"),
    ]


def compute_ratios(rows: dict[str, Row], epoch_steps: int, guard_seconds: float) -> list[Ratio]:
    plain, lightning, encoder = rows["plain"], rows["lightning"], rows["encoder-only"]
    soft = rows.get("plain soft")
    pictures = rows["lightning + image callbacks"]
    epoch_seconds = epoch_steps * lightning.seconds_per_step
    picture_seconds = statistics.median(pictures.callback_seconds)

    def ratio(name: str, value: float | None, basis: str) -> Ratio:
        return Ratio(name, value, basis, TARGETS.get(name))

    return host_work(rows, ratio) + [
        ratio(
            "lightning / plain",
            lightning.images_per_second / plain.images_per_second,
            "images/s of the lightning row over the plain row",
        ),
        ratio(
            "swwae / encoder-only per image",
            lightning.seconds_per_image / encoder.seconds_per_image,
            "seconds per trained image, both through Lightning",
        ),
        ratio(
            "soft / hard per step",
            soft.seconds_per_step / plain.seconds_per_step if soft else None,
            "ms/step of plain soft over plain (model cost only)" if soft else "needs --pooling both",
        ),
        ratio(
            "loader / model",
            rows["loader"].steps_per_second / lightning.steps_per_second,
            "loader batches/s over lightning steps/s",
        ),
        ratio(
            "callbacks on / off per epoch",
            epoch_seconds / (epoch_seconds + picture_seconds),
            f"an epoch of {epoch_steps} steps at the lightning row's rate ({epoch_seconds:.1f} s) "
            f"plus the pictures' {1000 * picture_seconds:.1f} ms (validation left out: stricter)",
        ),
        ratio(
            "callbacks row / lightning per step",
            pictures.steps_per_second / lightning.steps_per_second,
            "the image callbacks have no per-step hook: ~1 up to noise",
        ),
        ratio(
            "loader with views / fixmatch model",
            rows["loader + views"].steps_per_second / rows["plain + fixmatch"].steps_per_second
            if "plain + fixmatch" in rows
            else None,
            "loader batches/s with both extra views over plain FixMatch steps/s",
        ),
        ratio(
            "nan guard / lightning step",
            guard_seconds / lightning.seconds_per_step,
            f"the guard's record of one step's loss parts ({1e6 * guard_seconds:.1f} us) over the lightning row's step",
        ),
        ratio(
            "folder cache / in memory",
            rows["lightning, folder cache"].images_per_second / lightning.images_per_second
            if "lightning, folder cache" in rows
            else None,
            "images/s of the lightning row read from --folder's cache over the in-memory lightning row"
            if "lightning, folder cache" in rows
            else "needs --folder",
        ),
    ]


def format_report(result: dict) -> str:
    settings = result["settings"]
    lines = [
        f"{result['device']}; torch {torch.__version__}, {torch.get_num_threads()} threads; precision "
        f"{settings['precision']}, compile {settings['compile']}, channels_last {settings['channels_last']}; "
        f"data: {result['data']}; best of {settings['rounds']} rounds of {settings['steps']} steps",
        f"{'row':<28} {'pooling':<7} {'images/s':>10} {'ms/step':>9} {'rounds ms/step':>22} {'peak MiB':>9}  note",
    ]
    for row in result["rows"]:
        rounds = " ".join(f"{ms:.1f}" for ms in row["round_ms"])
        note = row["note"] or (
            f"pictures: {1000 * statistics.median(row['callback_seconds']):.1f} ms per validation "
            f"epoch (median of {len(row['callback_seconds'])})"
            if row["callback_seconds"]
            else ""
        )
        lines.append(
            f"{row['name']:<28} {row['pooling']:<7} {row['images_per_second']:>10.1f} "
            f"{row['ms_per_step']:>9.2f} {rounds:>22} {row['peak_mib']:>9.1f}  {note}"
        )
    lines.append(f"peak memory: {result['memory']}")
    if settings["compile"]:
        first = [f"{row['name']} {row['warmup_seconds'][0]:.1f} s" for row in result["rows"] if row["warmup_seconds"]]
        lines.append(
            f"compile time: the first round's setup and {settings['warmup']} untimed steps, compiling included: "
            + ", ".join(first)
        )
    lines.append("")
    for r in result["ratios"]:
        value = "n/a" if r["value"] is None else f"{r['value']:.3f}"
        target = f"{'>=' if r['target']['at_least'] else '<='} {r['target']['bound']:g}" if r["target"] else "(info)"
        lines.append(f"{r['name']:<52} {value:>8}  {target:<8} {r['verdict']:<4}  {r['basis']}")
    f = result["flops"]
    lines += [
        "",
        f"training step: {f['gflop_per_step']:.2f} GFLOP (conv + matmul, forward + backward, FlopCounterMode); "
        f"{f['matmul_dtype']} matmul {f['matmul_size']}^2: {f['matmul_gflops']:.1f} GFLOP/s",
    ]
    for name in ("plain", "lightning"):
        achieved = f[f"{name}_gflops"]
        lines.append(
            f"  {name:<10} {achieved:8.1f} GFLOP/s = {100 * achieved / f['matmul_gflops']:5.1f}% of the matmul rate"
        )
    return "\n".join(lines)
