"""The throughput benchmark runs every row, and its plain loop trains exactly as the Lightning path does."""

import dataclasses
import json

import pytest
import torch

from benchmarks import throughput
from benchmarks.table import BARE_TINY, LIGHTNING_TINY, PLAIN_TINY, TARGETS, Row, compute_ratios, format_report
from datamodules import datasets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def bundled_mnist(monkeypatch, mnist_splits):
    """The benchmark's MNIST from the session's copy: loaded once for the whole test run."""
    info = datasets.DATASETS["mnist"]
    monkeypatch.setitem(datasets.DATASETS._items, "mnist", dataclasses.replace(info, load=lambda *a, **k: mnist_splits))


@pytest.fixture
def mnist_folder(tmp_path, mnist_splits):
    """The first 5,300 training and 100 test images of MNIST as PNG files (the default job holds out 5,000)."""
    from PIL import Image

    for split, images, labels, n in (
        ("train", mnist_splits.train_images, mnist_splits.train_labels, 5300),
        ("test", mnist_splits.test_images, mnist_splits.test_labels, 100),
    ):
        for i in range(n):
            path = tmp_path / "mnist-png" / split / str(int(labels[i])) / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i, 0].numpy()).save(path)
    return tmp_path / "mnist-png"


def test_quick_run_reports_every_row_and_ratio(bundled_mnist, mnist_folder, tmp_path, capsys):
    out = tmp_path / "rows.json"
    result = throughput.main(["--quick", "--device", "cpu", "--json", str(out), "--folder", str(mnist_folder)])
    printed = capsys.readouterr()
    assert "it/s" not in printed.out + printed.err and "lightning / plain" in printed.out  # tables, no progress bars

    assert [row["name"] for row in result["rows"]] == [
        "plain",
        "lightning",
        "lightning + image callbacks",
        "encoder-only",
        "plain soft",
        "plain + fixmatch",
        "plain + fixmatch + swwae",
        "plain + mean teacher",
        "plain + swap",
        "plain, label top",
        PLAIN_TINY,
        LIGHTNING_TINY,
        BARE_TINY,
        "loader",
        "loader + views",
        "lightning, folder cache",
        "loader, folder cache",
    ]
    assert all(row["images_per_second"] > 0 and row["ms_per_step"] > 0 for row in result["rows"])
    ratios = {r["name"]: r for r in result["ratios"]}
    assert set(TARGETS) <= set(ratios)
    for name in TARGETS:  # a difference of two rows may be below 0 in a quick run's noise; the rest are not
        assert ratios[name]["verdict"] in ("PASS", "MISS")
        assert ratios[name]["value"] > 0 or name.startswith("framework overhead")
    for path in ("plain", "lightning", "bare lightning"):  # every step dispatches a hundred operators or more
        assert ratios[f"operator calls per step, {path} at batch 2 + 2"]["value"] > 100
    assert result["flops"]["gflop_per_step"] > 0 and result["flops"]["matmul_gflops"] > 0
    assert json.loads(out.read_text())["ratios"] == result["ratios"]


def test_plain_loop_and_lightning_reach_the_same_loss(bundled_mnist, tmp_path):
    # Same seed, same initial weights, same batches (no augmentation: the Lightning path would
    # draw its own per step), constant LR (the module's default schedule is a LambdaLR).
    args = throughput.parse_args(["--quick", "--device", "cpu"])
    cfg = throughput.job_config(args, augment=False, schedule="constant")
    warmup, steps = 1, 5
    bench = throughput.make_bench(args, cfg, tmp_path, prepared_batches=warmup + steps)

    plain = throughput.train_plain(bench, cfg, warmup, steps, "plain")
    lightning = throughput.train_lightning(bench, cfg, warmup, steps, "lightning")

    assert len(plain.losses) == len(lightning.losses) == warmup + steps
    torch.testing.assert_close(torch.tensor(lightning.losses), torch.tensor(plain.losses), rtol=1e-5, atol=1e-6)
    # The check can tell training runs apart: six steps move the loss far beyond the tolerance.
    assert abs(plain.losses[-1] - plain.losses[0]) > 1e-2


def test_ratios_are_computed_from_the_rows_they_name():
    """Made-up rows with round numbers: each ratio must come out exactly, so a wrong formula fails here."""

    def row(name, ms, images=256, callback_seconds=(), ops=None):
        return Row(name, "hard", images, ms / 1000, 0.0, callback_seconds=list(callback_seconds), ops_per_step=ops)

    rows = {
        "plain": row("plain", 200),
        "lightning": row("lightning", 250),
        "lightning + image callbacks": row("pictures", 250, callback_seconds=[0.5, 1.0, 2.0]),
        "encoder-only": row("encoder-only", 50, images=128),
        "plain soft": row("soft", 300),
        "loader": row("loader", 5),
        "loader + views": row("loader + views", 20),
        "plain + fixmatch": row("fixmatch", 400),
        PLAIN_TINY: row(PLAIN_TINY, 9, images=4, ops=250),
        LIGHTNING_TINY: row(LIGHTNING_TINY, 11, images=4, ops=350),
        BARE_TINY: row(BARE_TINY, 9.5, images=4, ops=260),
    }
    ratios = {r.name: r.value for r in compute_ratios(rows, epoch_steps=100, guard_seconds=0.0005)}
    assert ratios["lightning / plain"] == pytest.approx(0.8)
    assert ratios["swwae / encoder-only per image"] == pytest.approx((0.25 / 256) / (0.05 / 128))
    assert ratios["soft / hard per step"] == pytest.approx(1.5)
    assert ratios["loader / model"] == pytest.approx(50.0)
    assert ratios["callbacks on / off per epoch"] == pytest.approx(25.0 / 26.0)  # median picture time 1 s
    assert ratios["loader with views / fixmatch model"] == pytest.approx(20.0)
    assert ratios["nan guard / lightning step"] == pytest.approx(0.002)
    assert ratios["framework overhead, ms per step at batch 2 + 2"] == pytest.approx(2.0)
    assert ratios["dispatch floor, ms per step at batch 2 + 2"] == pytest.approx(9.0)
    assert ratios["lightning's own loop, ms per step at batch 2 + 2"] == pytest.approx(0.5)
    assert ratios["this project's per-step work, ms per step at batch 2 + 2"] == pytest.approx(1.5)
    assert ratios["lightning / plain at batch 2 + 2"] == pytest.approx(9 / 11)
    assert ratios["operator calls per step, plain at batch 2 + 2"] == 250
    assert ratios["operator calls per step, lightning at batch 2 + 2"] == 350
    assert ratios["operator calls per step, bare lightning at batch 2 + 2"] == 260
    verdicts = {r.name: r.verdict for r in compute_ratios(rows, epoch_steps=100, guard_seconds=0.005)}
    assert verdicts["lightning / plain"] == "MISS" and verdicts["soft / hard per step"] == "PASS"
    assert verdicts["nan guard / lightning step"] == "MISS"  # 5 ms of a 250 ms step: 2 %
    assert verdicts["framework overhead, ms per step at batch 2 + 2"] == "MISS"  # 2 ms > 0.5
    assert verdicts["dispatch floor, ms per step at batch 2 + 2"] == "MISS"  # 9 ms > 5
    rows[PLAIN_TINY], rows[LIGHTNING_TINY] = row(PLAIN_TINY, 4, images=4), row(LIGHTNING_TINY, 4.2, images=4)
    verdicts = {r.name: r.verdict for r in compute_ratios(rows, epoch_steps=100, guard_seconds=0.005)}
    assert {name: verdicts[name] for name in verdicts if "batch 2 + 2" in name} == {
        "framework overhead, ms per step at batch 2 + 2": "PASS",
        "lightning's own loop, ms per step at batch 2 + 2": "",
        "this project's per-step work, ms per step at batch 2 + 2": "",
        "dispatch floor, ms per step at batch 2 + 2": "PASS",
        "lightning / plain at batch 2 + 2": "PASS",
        "operator calls per step, plain at batch 2 + 2": "",
        "operator calls per step, lightning at batch 2 + 2": "",
        "operator calls per step, bare lightning at batch 2 + 2": "",
    }


def test_versions_runs_both_trees_benchmarks_in_turn_and_divides_old_by_new(tmp_path):
    from benchmarks import versions

    result = versions.main(
        ["HEAD", "--rounds", "2", "--json", str(tmp_path / "versions.json"), "--", "--quick", "--no-objectives"]
    )
    assert json.loads((tmp_path / "versions.json").read_text()) == result
    rounds = result["rounds_ms_per_step"]
    assert [len(rounds[name]) for name in ("old", "new")] == [2, 2]
    best_old = min(r["lightning"] for r in rounds["old"])
    best_new = min(r["lightning"] for r in rounds["new"])
    assert result["old_over_new"]["lightning"] == pytest.approx(best_old / best_new)
    assert {"plain", "lightning", "loader"} <= set(result["old_over_new"])
    assert result["benchmark_options"] == ["--pooling", "hard", "--quick", "--no-objectives"]


def test_versions_refuses_a_revision_that_is_not_a_commit_in_one_line(capsys):
    from benchmarks import versions

    with pytest.raises(SystemExit) as exit_info:
        versions.main(["no-such-revision"])
    assert exit_info.value.code == 2
    assert "'no-such-revision' is not a commit of this repository" in capsys.readouterr().err


def test_the_compile_time_is_printed_from_each_rows_first_round_when_compiling():
    row = Row("plain", "hard", 256, 0.2, 100.0, round_ms=[200.0, 210.0], warmup_seconds=[41.5, 3.25]).as_dict()
    result = {
        "settings": {"precision": "32-true", "compile": True, "channels_last": False, "rounds": 2, "steps": 30},
        "device": "CPU (2 cores)",
        "data": "real",
        "memory": "peak RSS",
        "rows": [row],
        "ratios": [],
        "flops": {"gflop_per_step": 1.0, "matmul_size": 64, "matmul_dtype": "float32", "matmul_gflops": 10.0}
        | {"plain_gflops": 5.0, "lightning_gflops": 4.0},
    }
    result["settings"]["warmup"] = 5
    assert "compile time: the first round's setup and 5 untimed steps, compiling included: plain 41.5 s" in (
        format_report(result)
    )
    result["settings"]["compile"] = False
    assert "compile time" not in format_report(result)
