"""The experiment kit: configs that run unchanged, the results report, the where ablation and the equivariance study."""

import json
import re
import subprocess
import threading
from pathlib import Path

import pytest
import torch
import yaml

import train
from experiments import equivariance, validation_curves, where_ablation
from orchestration import ledger, report, sweep, training
from swwae_lightning import pooling as P
from swwae_lightning import settings as S
from swwae_lightning.network import StackedWhatWhere

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_every_experiment_of_the_issue_has_a_config():
    names = {p.stem for p in CONFIGS}
    for labels in (100, 600, 1000, 3000):
        assert {f"mnist-{labels}", f"mnist-{labels}-baseline"} <= names
    assert {
        "svhn-1000",
        "svhn-1000-baseline",
        "stl10-fold0",
        "cifar10-supervised",
        "cifar100-supervised",
        "where-ablation",
        "equivariance-soft",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_resolves_through_train_py_and_builds_its_network(path, tmp_path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert path.read_text().startswith("#") and any(
        f"python train.py --config configs/{path.name}" in line or "python -m experiments." in line for line in header
    )
    assert any("Time here" in line for line in header), "each config says how long it takes on this machine"
    folder = []
    if yaml.safe_load(path.read_text()).get("dataset") == "folder":  # a config for your own images: give it some
        from test_folder import practitioner_tree

        folder = ["--data-dir", str(practitioner_tree(tmp_path / "tree"))]
    cfg = train.resolve_config(["--config", str(path), *folder])
    module = training.build_module(cfg)
    channels, size = module.hparams.in_channels, module.hparams.image_size
    with torch.no_grad():
        out = module.net.eval()(torch.randn(2, channels, size, size))
    assert out.reconstruction.shape == (2, channels, size, size)


@pytest.mark.parametrize("path", [p for p in CONFIGS if re.search(r"-e\d+-", p.stem)], ids=lambda p: p.stem)
def test_every_objectives_config_trains_a_fast_dev_run(path, tmp_path):
    """Every config of the objectives tables runs end to end (one batch of train, validation and test)."""
    cfg = train.resolve_config(["--config", str(path)])
    if cfg["dataset"] == "fashion-mnist" and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    run_dir = tmp_path / "run"
    assert (
        train.main(
            ["--config", str(path), "--fast-dev-run", "--logger", "none", "--no-download", "--run-dir", str(run_dir)]
        )
        == 0
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert {k: results[k] for k in cfg if k.startswith("lambda_")} == {
        k: v for k, v in cfg.items() if k.startswith("lambda_")
    }


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.endswith("-baseline")], ids=lambda p: p.stem)
def test_baseline_matches_its_partner_config_but_for_the_objective(path):
    """Trained the same way: every setting equal but the objective's, so the steps, the labeled order and
    the augmentation are identical and only the unlabeled terms differ. The partner is the SWWAE config of
    the same name, else its -swwae, -meanteacher or -meanteacher-vat sibling."""
    base = train.resolve_config(["--config", str(path)])
    partner = next(
        p
        for suffix in ("", "-swwae", "-meanteacher", "-meanteacher-vat")
        if (p := path.with_name(path.name.replace("-baseline", suffix))).is_file()
    )
    other = train.resolve_config(["--config", str(partner)])
    objective = set(S.names_in(["objectives"]))
    assert all(base[k] == 0 for k in objective if k.startswith("lambda_"))
    assert any(other[k] > 0 for k in objective if k.startswith("lambda_"))
    different = {k for k in base if base[k] != other[k]}
    assert different <= objective | {"recon_every", "switch_every", "overview_every", "wandb_group"}, different


@pytest.mark.parametrize(
    "best",
    [
        "mnist-100-e40-meanteacher",
        "mnist-100-e25-meanteacher-vat",
        "mnist-100-e25-meanteacher-vat-entmin",
        "mnist-100-e20-meanteacher-vat-entmin-fixmatch",
    ],
)
def test_the_pretraining_config_feeds_the_best_configs_a_fast_dev_run_each(tmp_path, best):
    """SWWAE pretraining then the fine-tune into a best row, as docs/results.md shows them, one batch each."""
    common = ["--fast-dev-run", "--logger", "none", "--no-download"]
    configs = CONFIGS[0].parent
    pretrain = ["--config", str(configs / "mnist-100-swwae-pretrain.yaml"), "--run-dir", str(tmp_path / "pretrain")]
    assert train.main(pretrain + common) == 0
    source = tmp_path / "pretrain" / "checkpoints" / "last.ckpt"
    tune = ["--config", str(configs / f"{best}.yaml"), "--finetune-from", str(source)]
    assert train.main(tune + ["--run-dir", str(tmp_path / "tuned")] + common) == 0
    results = json.loads((tmp_path / "tuned" / "results.json").read_text())
    assert results["finetuned_from"]["checkpoint"] == str(source) and results["lambda_consistency"] == 1.0


# ----------------------------------------------------------------------------- report
def fake_run(
    directory: Path,
    seed: int,
    test_error: float,
    lambda_rec: float = 1.0,
    minutes: float = 10.0,
    mode: str | None = None,
    **config_extra,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)  # sweep --jobs N makes the run directory first, for train.log
    results = {
        "dataset": "mnist",
        "labels": 100,
        "mode": mode or ("semi" if lambda_rec else "supervised"),
        "arch": "16C5-BN-MP2-32C3-MP2-FC128-D0.3",
        "pooling": "hard",
        "unpool": "where",
        "lambda_rec": lambda_rec,
        "lambda_mid": 0.1 if lambda_rec else 0.0,
        "seed": seed,
        "test_error": test_error,
        "test_accuracy": 1 - test_error,
        "hardware": "1 process(es) on 2-core CPU",
        "epochs": 6,
        "global_step": 2574,
        "train_seconds": 60 * minutes,
        "run_dir": str(directory),
    }
    config = {
        k: results[k] for k in ("dataset", "labels", "mode", "pooling", "unpool", "lambda_rec", "lambda_mid", "seed")
    }
    config.update(arch=None, max_epochs=6, run_dir=str(directory), logger="wandb", **config_extra)
    (directory / "results.json").write_text(json.dumps(results))
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    ledger.record(directory / "results.json", results, "best.ckpt", "train --test")  # as a run with --test leaves it
    return directory


def test_report_groups_seeds_into_mean_and_sample_std(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs / "mnist-100-seed0", 0, 0.10)
    fake_run(runs / "mnist-100-seed1", 1, 0.14, minutes=20)
    fake_run(runs / "mnist-100-baseline-seed0", 0, 0.20, lambda_rec=0.0)
    (runs / "mnist-100-seed0" / "checkpoints").mkdir()  # --evaluate's results.json has no config.yaml: skipped
    (runs / "mnist-100-seed0" / "checkpoints" / "results.json").write_text(json.dumps({"test_error": 0.5}))
    rows = report.write_report([runs], tmp_path / "reports")
    swwae, baseline = rows
    assert swwae["experiment"] == "mnist-100" and swwae["seeds"] == [0, 1]
    assert swwae["error_mean"] == pytest.approx(12.0) and swwae["error_std"] == pytest.approx(2.828, abs=1e-3)
    assert swwae["minutes_mean"] == pytest.approx(15.0) and swwae["paper_error"] == 9.0
    assert baseline["baseline"] and baseline["error_std"] is None and baseline["paper_error"] is None
    table = (tmp_path / "reports" / "results.md").read_text()
    assert "| 2 | 12.00 ± 2.83 |" in table and "20.00 ± —" in table
    png = tmp_path / "reports" / "error_vs_labels.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_pairs_each_swwae_row_with_its_baseline_seed_by_seed(tmp_path):
    runs = tmp_path / "runs"
    for seed, error in enumerate((0.10, 0.12, 0.08)):
        fake_run(runs / f"swwae-seed{seed}", seed, error, augment=True, fast_dev_run=False)
    # The baseline: semi mode, lambdas 0, the same other settings; a resumed run wrote fast_dev_run 0, not false.
    fake_run(runs / "baseline-seed0", 0, 0.11, lambda_rec=0.0, mode="semi", augment=True, fast_dev_run=False)
    fake_run(runs / "baseline-seed1", 1, 0.14, lambda_rec=0.0, mode="semi", augment=True, fast_dev_run=0)
    fake_run(runs / "other-seed0", 0, 0.30, augment=False)  # no baseline without augmentation: no pair
    rows = {r["experiment"]: r for r in report.write_report([runs], tmp_path / "rep")}
    assert rows["baseline"]["seeds"] == [0, 1]  # false and 0 are one setting: one row
    mean, std, n = rows["swwae"]["vs_baseline"]
    assert n == 2 and mean == pytest.approx(-1.5) and std == pytest.approx(0.7071, abs=1e-4)  # -1 and -2 points
    assert rows["other"]["vs_baseline"] is None and rows["baseline"]["vs_baseline"] is None
    assert "| -1.50 ± 0.71 (2) [-7.85, +4.85] level |" in (tmp_path / "rep" / "results.md").read_text()


def test_report_pairs_what_where_terms_on_top_of_another_objective_with_that_objective_alone(tmp_path):
    runs = tmp_path / "runs"
    for seed, (alone, combined) in enumerate(((0.020, 0.015), (0.030, 0.040))):
        # The strong view's shape is part of FixMatch: the baseline, which has no strong view, still pairs.
        strong = dict(lambda_fixmatch=1.0, strong_cutout=0.25)
        fake_run(runs / f"fixmatch-seed{seed}", seed, alone, lambda_rec=0.0, mode="semi", **strong)
        fake_run(runs / f"fixmatch-swwae-seed{seed}", seed, combined, **strong)
        fake_run(runs / f"baseline-seed{seed}", seed, 0.05, lambda_rec=0.0, mode="semi")
    rows = {r["experiment"]: r for r in report.write_report([runs], tmp_path / "rep")}
    assert rows["fixmatch-swwae"]["terms"] == {"rec": 1.0, "mid": 0.1, "fixmatch": 1.0}
    mean, std, n = rows["fixmatch-swwae"]["vs_without_what_where"]
    assert n == 2 and mean == pytest.approx(0.25) and std == pytest.approx(1.0607, abs=1e-4)  # -0.5 and +1.0 points
    assert rows["fixmatch"]["vs_without_what_where"] is None  # nothing what-where to take away
    assert rows["fixmatch"]["vs_baseline"][0] == pytest.approx(-2.5)
    table = (tmp_path / "rep" / "results.md").read_text()
    assert (
        "| +0.25 ± 1.06 (2) [-9.28, +9.78] level |" in table and "| 1.50 / 4.00 |" in table
    )  # per-seed errors in the table
    archived = tmp_path / "rep" / "runs" / "fixmatch-swwae-seed1"
    assert json.loads((archived / "results.json").read_text())["test_error"] == 0.040
    assert yaml.safe_load((archived / "config.yaml").read_text())["lambda_fixmatch"] == 1.0
    again = {r["experiment"]: r for r in report.write_report([tmp_path / "rep" / "runs"], tmp_path / "rep")}
    assert again["fixmatch-swwae"]["vs_without_what_where"] == rows["fixmatch-swwae"]["vs_without_what_where"]
    repeated = {r["experiment"]: r for r in report.write_report([tmp_path / "rep" / "runs", runs], tmp_path / "rep")}
    assert repeated["fixmatch-swwae"]["seeds"] == [0, 1]  # a run and its archived copy count once


def test_report_pairs_a_pretrained_row_with_the_same_training_from_scratch_and_counts_the_pretraining(tmp_path):
    runs = tmp_path / "runs"
    for seed, (scratch, pretrained) in enumerate(((0.020, 0.016), (0.030, 0.024))):
        common = dict(lambda_rec=0.0, mode="semi", lambda_consistency=1.0)
        fake_run(runs / f"mt-seed{seed}", seed, scratch, **common)
        source = f"runs/pretrain-seed{seed}/checkpoints/last.ckpt"  # each seed its own pretraining
        tuned = fake_run(
            runs / f"mt-pretrained-seed{seed}", seed, pretrained, minutes=20, finetune_from=source, **common
        )
        results = json.loads((tuned / "results.json").read_text())
        results["finetuned_from"] = {"checkpoint": source, "train_seconds": 60 * (5 + seed)}
        (tuned / "results.json").write_text(json.dumps(results))
        fake_run(runs / f"baseline-seed{seed}", seed, 0.05, lambda_rec=0.0, mode="semi")
    rows = {r["experiment"]: r for r in report.write_report([runs], tmp_path / "rep")}
    assert set(rows) == {"mt", "mt-pretrained", "baseline"}  # the seeds' sources are one pretraining
    row = rows["mt-pretrained"]
    mean, _, n = row["vs_without_what_where"]
    assert n == 2 and mean == pytest.approx(-0.5)  # -0.4 and -0.6 points against training from scratch
    assert row["vs_baseline"][0] == pytest.approx(-3.0) and row["minutes_mean"] == pytest.approx(25.5)
    assert rows["mt"]["vs_without_what_where"] is None and rows["mt"]["minutes_mean"] == pytest.approx(10.0)
    assert "fine-tuned from pretrain" in (tmp_path / "rep" / "results.md").read_text()


def test_report_command_line_and_sweep_run_each_seed_once(tmp_path, monkeypatch, capsys):
    calls, run = [], subprocess.run

    def fake_train(command, **kwargs):  # stands in for `python train.py ...`
        if command[0] == "git":  # the ledger asks git for the code's commit
            return run(command, **kwargs)
        calls.append(command)
        run_dir = Path(command[command.index("--run-dir") + 1])
        seed = int(command[command.index("--seed") + 1])
        fake_run(run_dir, seed, 0.10 + 0.04 * seed)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(sweep.subprocess, "run", fake_train)
    config = str(CONFIGS[0].with_name("mnist-100.yaml"))
    argv = [
        "--sweep",
        config,
        "--seeds",
        "0",
        "1",
        "--runs-root",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "rep"),
        "--",
        "--logger",
        "csv",
    ]
    assert report.main(argv) == 0
    assert [c[c.index("--run-dir") + 1] for c in calls] == [
        str(tmp_path / "runs" / f"mnist-100-seed{s}") for s in (0, 1)
    ]
    assert all(c[-2:] == ["--logger", "csv"] for c in calls)  # options after -- go to train.py
    assert "12.00 ± 2.83" in (tmp_path / "rep" / "results.md").read_text()
    assert report.main(argv) == 0 and len(calls) == 2  # finished seeds are kept, not retrained
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "rep2")]) == 0
    assert report.main([str(tmp_path / "empty-nothing-here"), "--out", str(tmp_path / "rep3")]) == 2


def write_plan(path: Path, **plan) -> Path:
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def test_plan_configs_apply_common_then_each_variants_settings_to_the_base(tmp_path):
    plan = write_plan(
        tmp_path / "plan.yaml",
        base="configs/mnist-100.yaml",
        common={"recon_every": 0},
        variants={"swwae": {}, "baseline": {"lambda_rec": 0.0, "lambda_mid": 0.0}},
    )
    base = yaml.safe_load(CONFIGS[0].with_name("mnist-100.yaml").read_text())
    configs = sweep.plan_configs(plan, tmp_path / "runs")
    assert configs == [tmp_path / "runs" / "configs" / f"{v}.yaml" for v in ("swwae", "baseline")]
    swwae, baseline = (yaml.safe_load(c.read_text()) for c in configs)
    assert swwae == {**base, "recon_every": 0}
    assert baseline == {**base, "recon_every": 0, "lambda_rec": 0.0, "lambda_mid": 0.0}
    assert (
        base["lambda_rec"] == 1.0 and baseline["labels"] == base["labels"] == 100 and baseline["arch"] == base["arch"]
    )


def test_report_plan_trains_every_variant_and_seed_in_parallel_with_logs_in_the_run_dirs(tmp_path, monkeypatch):
    calls, two_at_once, run = [], threading.Barrier(2, timeout=30), subprocess.run

    def fake_train(command, **kwargs):  # each run's output goes to its train.log with --jobs > 1
        if command[0] == "git":  # the ledger asks git for the code's commit
            return run(command, **kwargs)
        run_dir = Path(command[command.index("--run-dir") + 1])
        calls.append((command, kwargs))
        two_at_once.wait()  # --jobs 2: runs go in pairs (breaks, and the sweep raises, if they ran one by one)
        assert kwargs["stdout"].name == str(run_dir / "train.log")
        lambda_rec = yaml.safe_load(Path(command[command.index("--config") + 1]).read_text())["lambda_rec"]
        seed = int(command[command.index("--seed") + 1])
        fake_run(run_dir, seed, 0.10 + 0.04 * seed + (0.1 if lambda_rec == 0 else 0), lambda_rec=lambda_rec)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(sweep.subprocess, "run", fake_train)
    plan = write_plan(
        tmp_path / "plan.yaml",
        base="configs/mnist-100.yaml",
        common={"recon_every": 0},
        variants={"swwae": {}, "baseline": {"lambda_rec": 0.0, "lambda_mid": 0.0}},
    )
    runs = tmp_path / "runs"
    argv = [
        "--plan",
        str(plan),
        "--seeds",
        "0",
        "1",
        "--jobs",
        "2",
        "--runs-root",
        str(runs),
        "--out",
        str(tmp_path / "rep"),
        "--",
        "--logger",
        "csv",
    ]
    assert report.main(argv) == 0
    assert sorted(c[c.index("--run-dir") + 1] for c, _ in calls) == sorted(
        str(runs / f"{v}-seed{s}") for v in ("swwae", "baseline") for s in (0, 1)
    )
    for command, _ in calls:
        variant = Path(command[command.index("--run-dir") + 1]).name.rsplit("-seed", 1)[0]
        assert command[command.index("--config") + 1] == str(runs / "configs" / f"{variant}.yaml")
        assert command[-2:] == ["--logger", "csv"]
    assert all((runs / f"{v}-seed{s}" / "train.log").is_file() for v in ("swwae", "baseline") for s in (0, 1))
    rows = [line for line in (tmp_path / "rep" / "results.md").read_text().splitlines() if line.startswith("| ")][2:]
    assert [row.split(" | ")[0] for row in rows] == ["| swwae", "| baseline"]
    assert "12.00 ± 2.83" in rows[0] and "22.00 ± 2.83" in rows[1]


@pytest.mark.parametrize(
    "plan, wrong",
    [
        (None, "nowhere.yaml"),
        ({"base": "configs/mnist-100.yaml"}, "plan.yaml"),
        ({"base": "configs/mnist-100.yaml", "variants": {"a/b": {}}}, "a/b"),
        ({"base": "configs/no-such-config.yaml", "variants": {"swwae": {}}}, "no-such-config.yaml"),
    ],
    ids=["missing-plan", "no-variants", "slash-in-variant", "missing-base"],
)
def test_report_plan_rejects_bad_plans_with_one_line_naming_the_wrong_value(tmp_path, monkeypatch, capsys, plan, wrong):
    monkeypatch.setattr(sweep.subprocess, "run", lambda *a, **k: pytest.fail("nothing is trained from a bad plan"))
    path = tmp_path / "nowhere.yaml" if plan is None else write_plan(tmp_path / "plan.yaml", **plan)
    assert (
        report.main(["--plan", str(path), "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and wrong in err


def test_report_jobs_must_be_at_least_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep.subprocess, "run", lambda *a, **k: pytest.fail("--jobs 0 trains nothing"))
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--sweep", str(CONFIGS[0]), "--jobs", "0", "--out", str(tmp_path / "rep")])
    assert exit_info.value.code == 2 and "--jobs 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- where ablation
def identity_network(size: int = 4, pooling: str = "hard") -> StackedWhatWhere:
    """1x1 conv encoder and decoder with weight 1: the reconstruction is exactly the unpooled max."""
    net = StackedWhatWhere("1C1-MP2", in_channels=1, image_size=size, num_classes=2, pooling=pooling)
    stage = net.stages[0]
    for conv in (stage.encoder[0][0], stage.decoder[0][0]):
        conv.weight.data.fill_(1.0)
        conv.bias.data.zero_()
    return net


def test_reconstruction_mse_with_and_without_the_where_on_a_hand_built_network():
    images = torch.zeros(3, 1, 4, 4)
    images[:, 0, 0, 1] = images[:, 0, 1, 2] = images[:, 0, 3, 0] = images[:, 0, 2, 3] = 1.0  # one pixel per window
    net = identity_network()
    assert where_ablation.reconstruction_mse(net, images, "where") == pytest.approx(0.0)
    assert where_ablation.reconstruction_mse(net, images, "copy", batch_size=2) == pytest.approx(
        0.75
    )  # 3 of 4 pixels off by 1
    assert net.unpool == "where"  # the network's own setting comes back


def test_ablation_findings_check_both_claims():
    rows = [
        {"pool_size": 2, "where": 0.1, "copy": 0.2},
        {"pool_size": 7, "where": 0.2, "copy": 0.9},
        {"pool_size": 4, "where": 0.15, "copy": 0.5},
    ]
    assert where_ablation.findings(rows) == {"where_better_everywhere": True, "gap_grows_with_pool_size": True}
    rows[0]["copy"] = 0.05
    assert not where_ablation.findings(rows)["where_better_everywhere"]
    for row, copy_trained in zip(rows, (0.3, 0.25, 0.4)):  # pool sizes 2, 7, 4: the gap shrinks from 4 to 7
        row["copy_trained"] = copy_trained
    assert where_ablation.findings(rows, "copy_trained") == {
        "where_better_everywhere": True,
        "gap_grows_with_pool_size": False,
    }


def test_ablation_and_equivariance_run_end_to_end_on_a_tiny_dataset(tmp_path, tiny_dataset):
    tiny = [
        "--dataset",
        tiny_dataset,
        "--data-dir",
        str(tmp_path / "data"),
        "--val-size",
        "50",
        "--max-epochs",
        "1",
        "--limit-train-batches",
        "2",
        "--unlabeled-batch-size",
        "32",
        "--logger",
        "none",
        "--recon-every",
        "0",
        "--switch-every",
        "0",
        "--overview-every",
        "0",
    ]
    rows = where_ablation.run_ablation(
        [2, 4],
        where_ablation.CONFIGS / "where-ablation.yaml",
        tmp_path / "runs",
        tmp_path / "reports",
        tiny,
        num_show=3,
        train_copy=True,
    )
    assert [r["pool_size"] for r in rows] == [2, 4]
    assert all(r["where"] > 0 and r["copy"] > 0 and r["copy_trained"] > 0 for r in rows)
    assert (tmp_path / "runs" / "where-ablation-mp4-copy" / "results.json").is_file()
    assert (tmp_path / "reports" / "where_ablation.png").stat().st_size > 0
    table = (tmp_path / "reports" / "where_ablation.md").read_text()
    assert "`16C5-32C3-MP4`" in table and "where beats *copy, own net* at every pool size" in table
    # How each model was trained, from its checkpoint: the copy network's unpool, the smoke limit, the arch.
    assert (
        "| setting | where-ablation-mp2 | where-ablation-mp2-copy | where-ablation-mp4 | where-ablation-mp4-copy |"
        in table
    )
    assert "| unpool | where | copy | where | copy |" in table and "| limit_train_batches | 2 | 2 | 2 | 2 |" in table
    assert "| arch | 16C5-32C3-MP2 | 16C5-32C3-MP2 | 16C5-32C3-MP4 | 16C5-32C3-MP4 |" in table
    results = equivariance.run_study(
        [("mp2", tmp_path / "runs" / "where-ablation-mp2")], tmp_path / "reports", max_shift=1, num_images=20
    )
    assert [r["axis"] for r in results[0]["responses"]] == ["horizontal", "vertical"]
    assert (tmp_path / "reports" / "equivariance.png").stat().st_size > 0
    report = (tmp_path / "reports" / "equivariance.md").read_text()
    assert "top where slope" in report and "| max_epochs | 1 |" in report and "| dataset | tiny" in report


# ----------------------------------------------------------------------------- equivariance
def test_shift_images_moves_pixels_and_fills_with_zeros():
    images = torch.arange(16.0).view(1, 1, 4, 4) + 1
    shifted = equivariance.shift_images(images, 1, -2)
    expected = torch.zeros(1, 1, 4, 4)
    expected[..., 1:, :2] = images[..., :3, 2:]
    assert torch.equal(shifted, expected)
    assert torch.equal(equivariance.shift_images(images, 0, 0), images)


def test_linear_fit_recovers_a_known_slope():
    slope, intercept, r2 = equivariance.linear_fit([-2, -1, 0, 1, 2], [0, 0.5, 1, 1.5, 2])
    assert (slope, intercept, r2) == pytest.approx((0.5, 1.0, 1.0))
    assert equivariance.linear_fit([0, 1, 2], [1, 0, 1])[2] == pytest.approx(0.0)


@pytest.mark.parametrize("pooling", ["hard", "soft"])
def test_mean_where_position_follows_a_moving_activation_with_slope_one(pooling):
    positions = []
    for shift in range(-2, 3):
        z = torch.zeros(1, 2, 8, 8)
        z[0, 0, 4, 3 + shift] = 2.0  # a feature that moves with the input; channel 1 stays silent
        variant = P.make_pooling(pooling)
        what, where = variant.pool(z, 2)
        positions.append(equivariance.mean_where_position(variant, what, where, 2)[0].tolist())
    rows, cols = zip(*positions)
    assert rows == pytest.approx([4.0] * 5, abs=1e-3)
    slope, _, r2 = equivariance.linear_fit(range(-2, 3), cols)
    assert slope == pytest.approx(1.0, abs=1e-3) and r2 == pytest.approx(1.0, abs=1e-6)
    # Above a stride-2 layer a map pixel covers two input pixels: column 5 is input pixels 10-11.
    assert equivariance.mean_where_position(variant, what, where, 2, stride=2)[0, 1] == pytest.approx(10.5, abs=1e-3)


@pytest.mark.parametrize("pooling", ["hard", "soft"])
def test_shift_response_of_a_hand_built_network_moves_its_where_with_the_input(pooling):
    images = torch.zeros(1, 1, 8, 8)
    images[0, 0, 3, 3] = 1.0
    net = identity_network(size=8, pooling=pooling)
    for axis in ("horizontal", "vertical"):
        resp = equivariance.shift_response(net, images, (0.0,), (1.0,), [-2, -1, 0, 1, 2], axis)
        assert resp["slope"][0] == pytest.approx(1.0, abs=1e-3) and resp["r2"][0] == pytest.approx(1.0, abs=1e-6)
        assert resp["displacement"][0] == pytest.approx([-2, -1, 0, 1, 2], abs=1e-3)
        assert resp["what_change"][2] == 0 and resp["summed_what_change"] == pytest.approx([0] * 5, abs=1e-6)


def logged_run(path: Path, config: dict, val_errors: dict[int, list[float]], finished: bool) -> Path:
    """A run directory as train.py --logger csv leaves it: config.yaml, metrics.csv (training rows between
    the validation ones, an epoch logged twice when a resumed run repeats it) and results.json if it ended."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"run_dir": str(path), "seed": 0, **config}))
    rows = ["epoch,step,train/loss,val/error"]
    for epoch, errors in val_errors.items():
        rows += [f"{epoch},{10 * epoch},0.5,", *(f"{epoch},{10 * epoch + 9},,{e}" for e in errors)]
    (path / "metrics.csv").write_text("\n".join(rows) + "\n")
    if finished:
        (path / "results.json").write_text("{}")
    return path


def test_validation_curves_list_each_runs_validation_error_and_the_settings_that_differ(tmp_path):
    a = logged_run(tmp_path / "a", {"lambda_consistency": 1.0, "max_epochs": 3}, {0: [0.2], 1: [0.1], 2: [0.05]}, True)
    b = logged_run(tmp_path / "b", {"lambda_consistency": 10.0, "max_epochs": 3}, {0: [0.3], 1: [0.5, 0.4]}, False)
    assert validation_curves.main([str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert summary == {
        "differing_settings": ["lambda_consistency"],
        "runs": [  # run_dir is bookkeeping
            {
                "run": "a",
                "settings": {"lambda_consistency": 1.0},
                "finished": True,
                "max_epochs": 3,
                "val_error": [0.2, 0.1, 0.05],
            },
            {
                "run": "b",
                "settings": {"lambda_consistency": 10.0},
                "finished": False,
                "max_epochs": 3,
                "val_error": [0.3, 0.4],
            },
        ],
    }
    table = (tmp_path / "out" / "validation.md").read_text()
    assert "| a | lambda_consistency 1.0 | 3 of 3 | 20.00 / 10.00 / 5.00 | 5.00 |" in table
    assert "| b | lambda_consistency 10.0 | 2 of 3, stopped | 30.00 / 40.00 | 40.00 |" in table
    assert "test" not in table


def test_validation_curves_name_a_run_without_metrics_and_write_nothing(tmp_path, capsys):
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.yaml").write_text("seed: 0\n")
    assert validation_curves.main([str(tmp_path / "bare"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bare has no metrics.csv" in err
    assert not (tmp_path / "out").exists()


def test_the_report_flags_an_experiment_whose_seeds_ended_at_different_global_steps(capsys):
    from orchestration.results import find_runs, summarize

    runs = Path(__file__).resolve().parents[1] / "reports" / "fashion-mnist-1000-objectives" / "runs"
    wide = [runs / f"fashion-mnist-1000-e25-meanteacher-vat-wide-seed{seed}" for seed in range(3)]
    (row,) = summarize(find_runs(wide))  # seed 2 was resumed once and lost a step: 10,549 against 10,550
    assert row["steps_differ"]
    assert "its seeds ended at different global steps (seed 0: 10550, seed 1: 10550, seed 2: 10549)" in (
        capsys.readouterr().err
    )
    (same,) = summarize(find_runs(wide[:2]))
    assert not same["steps_differ"]


def test_a_paired_difference_is_called_lower_or_higher_only_beyond_its_95_percent_interval():
    from orchestration.results import difference_text, interval, verdict

    low, high = interval(-1.0, 0.5, 3)  # t(0.975, 2 degrees of freedom) = 4.303
    assert low == pytest.approx(-1.0 - 4.3027 * 0.5 / 3**0.5, abs=1e-4) and high == pytest.approx(-2 - low)
    assert verdict((-1.0, 0.5, 3)) == "level" and verdict((-3.0, 0.5, 3)) == "lower"
    assert verdict((3.0, 0.5, 3)) == "higher" and verdict((0.5, None, 1)) == ""
    assert difference_text((-3.0, 0.5, 3)) == "-3.00 ± 0.50 (3) [-4.24, -1.76] lower"
    assert difference_text((0.5, None, 1)) == "+0.50 ± — (1)"  # one seed: no interval, no verdict


def test_a_row_over_its_studys_budget_is_marked_in_the_table(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path / "live" / f"slow-seed{seed}", seed, 0.1, minutes=45)
        fake_run(tmp_path / "live" / f"fast-seed{seed}", seed, 0.2, lambda_rec=0.0, mode="semi", minutes=10)
    report.write_report([tmp_path / "live"], tmp_path / "reports" / "study")
    from orchestration import doc_tables

    unbudgeted = doc_tables.results_table(tmp_path / "reports" / "study")
    assert "| 45.0 |" in unbudgeted and "over" not in unbudgeted
    (tmp_path / "reports" / "study" / "study.yaml").write_text("minutes_budget: 30\n")
    budgeted = doc_tables.results_table(tmp_path / "reports" / "study")
    assert "| 45.0 (over 30) |" in budgeted and "| 10.0 |" in budgeted
    # the validation labels count: they chose the checkpoints (the default 5,000 here)
    assert "Labels in all: 5,100 a run (100 to train, 5,000 to choose checkpoints and configurations)." in budgeted
    assert doc_tables.lowest_row(tmp_path / "reports" / "study") == (
        "`slow`, 10.00 ± 0.00 % over 2 seeds, 95 % interval of the mean [10.00, 10.00] %\n"
    )


def test_runs_on_two_folders_of_images_are_two_experiments_and_a_built_in_datasets_path_is_not(tmp_path):
    """A folder dataset is the tree data_dir names: two trees with the same settings are two rows."""
    from orchestration.results import find_runs, summarize

    for tree in ("pool-a", "pool-b"):
        for seed in (0, 1):
            fake_run(tmp_path / f"{tree}-seed{seed}", seed, 0.1, dataset="folder", data_dir=f"data/{tree}")
    assert sorted(len(row["errors"]) for row in summarize(find_runs([tmp_path]))) == [2, 2]
    for seed, where in enumerate(("data", "elsewhere")):
        fake_run(tmp_path / f"mnist-seed{seed}", seed, 0.1, data_dir=where)
    assert sorted(len(row["errors"]) for row in summarize(find_runs([tmp_path]))) == [2, 2, 2]  # mnist: one row


@pytest.mark.parametrize("plan", sorted((CONFIGS[0].parent / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_sweep_plan_expands_to_configs_train_py_accepts(plan, tmp_path):
    if "variants" not in yaml.safe_load(plan.read_text()):
        pytest.skip(f"{plan.name} is a W&B sweep, not a plan")
    for config in sweep.plan_configs(plan, tmp_path):
        cfg = train.resolve_config(["--config", str(config)])
        assert cfg["max_epochs"] >= 1, config
