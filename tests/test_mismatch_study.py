"""The class-mismatch study: its tables, the default its validation errors choose, and the pool detection."""

import json

import pytest
import yaml
from conftest import tiny_run

import train
from orchestration import doc_tables, mismatch


def archived(report_dir, name: str, seed: int, val: float, test: float, detection: dict | None = None) -> None:
    run = report_dir / "runs" / f"{name}-seed{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "dataset": "folder", "labels": "all"}))
    (run / "results.json").write_text(json.dumps({"val_error": val / 100, "test_error": test / 100}))
    if detection:
        (run / mismatch.DETECTION).write_text(json.dumps(detection))


def test_the_default_is_the_lowest_validation_mean_among_methods_never_above_the_baseline(tmp_path):
    # val errors (%): chosen is lowest on average but above the baseline at 50 %; openset never is
    val = {"baseline": (10, 10), "chosen": (2, 12), "openset": (8, 9)}
    for method, (clean, half) in val.items():
        for seed in (0, 1):
            archived(tmp_path, f"mismatch-0-{method}", seed, clean + seed, 1.0 + seed)
            archived(tmp_path, f"mismatch-50-{method}", seed, half + seed, 2.0 + seed)
    table = mismatch.cells(tmp_path)
    chosen, means = mismatch.chosen_default(table)
    assert chosen == "openset" and means == {"baseline": 10.5, "chosen": 7.5, "openset": 9.0}
    text = doc_tables.computed_table("mismatch", ["."], tmp_path)
    assert "| openset (default) | 1.50 ± 0.71 (2) | 2.50 ± 0.71 (2) | 9.00 |" in text
    assert text.splitlines()[2].startswith("| baseline |")  # the baseline leads
    # with the baseline lowest everywhere, the baseline is the default: no method is chosen for being new
    archived(tmp_path, "mismatch-100-baseline", 0, 1, 1)
    archived(tmp_path, "mismatch-100-openset", 0, 5, 1)
    archived(tmp_path, "mismatch-100-chosen", 0, 5, 1)
    assert mismatch.chosen_default(mismatch.cells(tmp_path))[0] == "baseline"
    # a seed that not every method has run at a mismatch does not count there: the choice is paired
    archived(tmp_path, "mismatch-100-openset", 1, 0, 1)
    means = mismatch.chosen_default(mismatch.cells(tmp_path))[1]
    assert means["openset"] == pytest.approx((8.5 + 9.5 + 5) / 3)  # at 100 %: seed 0 only, not (5 + 0) / 2


def test_the_detection_table_averages_each_scores_auroc_over_seeds_and_skips_the_clean_pool(tmp_path):
    figures = {"pool": 10, "unknown": 5, "auroc_probability": 0.5, "auroc_energy": 0.6}
    figures |= {"unknown_confident_share": 0.9, "unknown_labelled_known_share": 0.8}
    archived(tmp_path, "mismatch-0-baseline", 0, 1, 1, {**figures, "unknown": 0})
    archived(tmp_path, "mismatch-50-baseline", 0, 1, 1, figures)
    archived(tmp_path, "mismatch-50-baseline", 1, 1, 1, {**figures, "auroc_probability": 0.7})
    archived(tmp_path, "mismatch-50-openset", 0, 1, 1, {**figures, "auroc_one_vs_all": 0.99})
    rows = doc_tables.computed_table("detection", ["."], tmp_path).splitlines()
    assert rows[2] == "| baseline | 50 | 2 | 0.600 | 0.600 | — | — | 90.0 % | 80.0 % |"
    assert rows[3] == "| openset | 50 | 1 | 0.500 | 0.600 | — | 0.990 | 90.0 % | 80.0 % |"
    assert len(rows) == 4  # no row for the clean pool


def test_the_study_predicts_each_runs_own_pool_and_scores_it_against_the_hidden_truth(tmp_path, tiny_dataset):
    from datamodules import export_mismatch
    from experiments import class_mismatch

    tree = tmp_path / "tree"
    args = ["--dataset", tiny_dataset, "--out", str(tree), "--known", "0", "1", "--unknown-share", "0.5"]
    assert export_mismatch.main([*args, "--pool", "60", "--labels-per-class", "5", "--val-per-class", "10"]) == 0
    runs = tmp_path / "runs"
    for method, flags in (("baseline", []), ("openset", ["--lambda-ova", "1", "--lambda-entmin", "1"])):
        run = ["--dataset", "folder", "--data-dir", str(tree), "--labels", "all", "--max-epochs", "1", "--test"]
        run += ["--lambda-rec", "0", "--lambda-mid", "0", "--run-dir", str(runs / f"mismatch-50-{method}-seed0")]
        assert train.main(tiny_run(*run, *flags, labels=None, pictures=False)) == 0
    out = tmp_path / "report"
    assert class_mismatch.main([str(runs), "--out", str(out)]) == 0
    plain = json.loads((out / "runs" / "mismatch-50-baseline-seed0" / mismatch.DETECTION).read_text())
    heads = json.loads((out / "runs" / "mismatch-50-openset-seed0" / mismatch.DETECTION).read_text())
    assert plain["pool"] == heads["pool"] == 60 and plain["unknown"] == heads["unknown"] == 30
    assert "auroc_one_vs_all" in heads and "auroc_one_vs_all" not in plain
    assert 0 <= heads["auroc_one_vs_all"] <= 1
    assert (out / "error_vs_mismatch.png").stat().st_size > 0
    assert "| openset |" in doc_tables.computed_table("detection", ["report"], tmp_path)


def test_the_uncurated_pool_config_trains_the_objective_the_studys_validation_errors_chose():
    from pathlib import Path

    from swwae_lightning import settings as S

    repo = Path(__file__).resolve().parents[1]
    report = repo / "reports" / "mnist-class-mismatch"
    chosen, _ = mismatch.chosen_default(mismatch.cells(report))
    run = min((report / "runs").glob(f"mismatch-*-{chosen}-seed*"))
    studied = yaml.safe_load((run / "config.yaml").read_text())
    default = yaml.safe_load((repo / "configs" / "uncurated-pool.yaml").read_text())
    assert default["dataset"] == "folder" and default["labels"] == "all"
    for name in [*S.names_in(["objectives", "optimization"]), "max_epochs"]:
        assert default.get(name, S.SETTINGS[name].default) == studied.get(name, S.SETTINGS[name].default), name
