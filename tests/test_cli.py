"""train.py end to end on a tiny dataset: run directory, resume, fine-tune, evaluate, W&B, precision."""

import csv
import json
import os
import re
import time
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_run

import train

TINY = tiny_run("--test", "--arch", "4C3-MP2-8C3-MP2", "--num-images", "4", "--lr", "0.01")


def run(tmp_path, dataset, *args, run_dir="run"):
    argv = ["--dataset", dataset, "--data-dir", str(tmp_path / "data"), *TINY, *args]
    if run_dir and "--run-dir" not in args and "--evaluate" not in args:
        argv += ["--run-dir", str(tmp_path / run_dir)]
    return train.main(argv)


def encoder_weights(module_or_state):
    state = module_or_state if isinstance(module_or_state, dict) else module_or_state.state_dict()
    return {k: v.clone() for k, v in state.items() if ".encoder." in k}


@pytest.mark.parametrize("mode, labels", [("semi", "40"), ("supervised", "all"), ("unsupervised", "all")])
def test_each_mode_writes_the_whole_run_directory(tmp_path, tiny_dataset, mode, labels):
    assert run(tmp_path, tiny_dataset, "--mode", mode, "--labels", labels, "--max-epochs", "2") == 0
    run_dir = tmp_path / "run"
    for name in (
        "config.yaml",
        "metrics.csv",
        "results.json",
        "split.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    ):
        assert (run_dir / name).is_file(), name
    results = json.loads((run_dir / "results.json").read_text())
    for key in (
        "dataset",
        "labels",
        "mode",
        "test_error",
        "test_accuracy",
        "epochs",
        "global_step",
        "train_seconds",
        "best_checkpoint",
    ):
        assert key in results
    assert results["mode"] == mode and results["epochs"] == 2
    # chance is 0.75; an unsupervised run trains no classifier
    assert results["test_error"] < 0.5 if mode != "unsupervised" else 0 <= results["test_error"] <= 1
    assert any(p.suffix == ".png" for p in (run_dir / "images").iterdir())


def test_semi_supervised_training_learns_the_tiny_task(tmp_path, tiny_dataset):
    assert run(tmp_path, tiny_dataset, "--max-epochs", "3") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_error"] < 0.3  # chance is 0.75


def test_last_ckpt_is_the_end_of_the_last_epoch_even_when_validation_stops_improving(tmp_path, tiny_dataset):
    # A learning rate this small leaves the validation error where epoch 0 put it: best.ckpt stays at epoch 0.
    assert run(tmp_path, tiny_dataset, "--max-epochs", "3", "--lr", "1e-12") == 0
    run_dir = tmp_path / "run"
    results = json.loads((run_dir / "results.json").read_text())
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert best["epoch"] == 0 and best["global_step"] == results["global_step"] // 3
    assert last["epoch"] == 2 and last["global_step"] == results["global_step"]
    # under Lightning's own state key, so resuming keeps comparing against epoch 0's score
    (key,) = [k for k in last["callbacks"] if k.startswith("ModelCheckpoint{")]
    assert last["callbacks"][key]["best_model_score"] == best["callbacks"][key]["best_model_score"]


def test_with_checkpoint_ties_later_a_level_validation_error_keeps_the_later_epoch(tmp_path, tiny_dataset):
    # The error is level from epoch 0 on (lr 1e-12): earlier keeps epoch 0 (the plateau test above), later the last.
    assert run(tmp_path, tiny_dataset, "--max-epochs", "3", "--lr", "1e-12", "--checkpoint-ties", "later") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == 2 and best["global_step"] == results["global_step"]


class InterruptAfterFirstEpoch(pl.Callback):
    """Ctrl-C at the end of the first epoch, as a user would press it."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            raise KeyboardInterrupt


@pytest.fixture
def interrupt_after_first_epoch(monkeypatch):
    from orchestration import trainer as trainer_module

    original = trainer_module.image_callbacks
    monkeypatch.setattr(
        trainer_module, "image_callbacks", lambda cfg, run_dir: original(cfg, run_dir) + [InterruptAfterFirstEpoch()]
    )


def test_ctrl_c_saves_last_and_resume_last_continues_epoch_step_and_split(
    tmp_path, tiny_dataset, interrupt_after_first_epoch, monkeypatch, capsys
):
    with pytest.raises(SystemExit):  # Lightning exits 1 after a graceful Ctrl-C shutdown
        run(tmp_path, tiny_dataset, "--max-epochs", "2")
    run_dir = tmp_path / "run"
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    split = json.loads((run_dir / "split.json").read_text())
    assert not (run_dir / "results.json").exists()
    from orchestration import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "image_callbacks", lambda cfg, run_dir: [])
    # The training time so far travels in the checkpoint; made large here so that the resumed
    # run's results can only reach it by adding it up.
    assert 0 < first["callbacks"]["RunRecord"]["train_seconds"] < 1000
    first["callbacks"]["RunRecord"]["train_seconds"] = 1000.0
    torch.save(first, run_dir / "checkpoints" / "last.ckpt")
    # A different seed on the command line must not change the restored split.
    assert train.main(["--resume", "last", "--run-dir", str(run_dir), "--seed", "5"]) == 0
    assert 1000 < json.loads((run_dir / "results.json").read_text())["train_seconds"] < 1000 + 600
    second = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 0 and second["epoch"] == 1
    assert second["global_step"] == 2 * first["global_step"]
    assert json.loads((run_dir / "split.json").read_text())["labeled_indices"] == split["labeled_indices"]
    assert second["SemiSupervisedDataModule"]["labeled_indices"] == split["labeled_indices"]
    with open(run_dir / "metrics.csv", newline="") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row.get("val/error")}
    assert epochs == {"0", "1"}  # the first run's rows are kept


def test_finetune_starts_from_equal_encoder_weights_and_freeze_keeps_them(tmp_path, tiny_dataset, monkeypatch):
    assert run(tmp_path, tiny_dataset, "--max-epochs", "1", "--mode", "unsupervised", "--labels", "all") == 0
    source = tmp_path / "run" / "checkpoints" / "last.ckpt"
    pretrained = encoder_weights(torch.load(source, weights_only=True)["state_dict"])
    from orchestration import training

    loaded = {}
    original = training.load_finetune_weights

    def spy(module, checkpoint, path):
        original(module, checkpoint, path)
        loaded.update(encoder_weights(module))

    monkeypatch.setattr(training, "load_finetune_weights", spy)
    assert (
        run(
            tmp_path,
            tiny_dataset,
            "--finetune-from",
            str(source),
            "--freeze-encoder",
            "--max-epochs",
            "1",
            run_dir="probe",
        )
        == 0
    )
    assert all(torch.equal(loaded[k], pretrained[k]) for k in pretrained)
    after = encoder_weights(
        torch.load(tmp_path / "probe" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    )
    assert all(torch.equal(after[k], pretrained[k]) for k in pretrained)  # conv weights and BN buffers


def test_finetune_weights_without_a_teacher_feed_a_mean_teacher_whose_teacher_starts_from_them(tmp_path):
    from orchestration.training import load_finetune_weights
    from swwae_lightning.module import SWWAEModule

    pretrained = SWWAEModule.from_settings("4C3-MP2", 1, 8, 4)  # SWWAE pretraining keeps no teacher
    saved = {"hyper_parameters": dict(pretrained.hparams)}
    torch.save({**saved, "state_dict": pretrained.state_dict()}, tmp_path / "pretrained.ckpt")
    student = SWWAEModule.from_settings("4C3-MP2", 1, 8, 4, lambda_consistency=1.0)
    load_finetune_weights(student, torch.load(tmp_path / "pretrained.ckpt", weights_only=True), "pretrained.ckpt")
    student.teacher.update_parameters(student.net)  # the first step's update
    theirs = pretrained.net.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in student.teacher.module.state_dict().items())
    torch.save({**saved, "state_dict": student.state_dict()}, tmp_path / "teacher.ckpt")
    plain = SWWAEModule.from_settings("4C3-MP2", 1, 8, 4)
    teacher = torch.load(tmp_path / "teacher.ckpt", weights_only=True)
    load_finetune_weights(plain, teacher, "teacher.ckpt")  # a run without a teacher leaves the file's aside
    assert all(torch.equal(v, student.net.state_dict()[k]) for k, v in plain.net.state_dict().items())


def test_a_finetuned_run_records_its_starting_weights_and_their_training_time(tmp_path, tiny_dataset, monkeypatch):
    assert run(tmp_path, tiny_dataset, "--max-epochs", "1", "--mode", "unsupervised", "--labels", "all") == 0
    source = tmp_path / "run" / "checkpoints" / "last.ckpt"
    pretraining = json.loads((tmp_path / "run" / "results.json").read_text())
    args = ("--finetune-from", str(source), "--lambda-consistency", "1", "--max-epochs", "1")
    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(str(path)) or load(path, *a, **k))
    assert run(tmp_path, tiny_dataset, *args, run_dir="tuned") == 0
    monkeypatch.setattr(torch, "load", load)
    assert reads.count(str(source)) == 1  # checks, record and weights from one read of the file
    results = json.loads((tmp_path / "tuned" / "results.json").read_text())
    assert results["finetuned_from"] == {"checkpoint": str(source), "train_seconds": pretraining["train_seconds"]}
    source.rename(tmp_path / "moved.ckpt")  # the record is in the run's own checkpoint, not read from the source again
    resume = ["--resume", "last", "--run-dir", str(tmp_path / "tuned"), "--max-epochs", "2"]
    assert train.main(resume) == 0  # a fine-tuned run resumes like any other, its record kept
    resumed = json.loads((tmp_path / "tuned" / "results.json").read_text())
    assert resumed["epochs"] == 2 and resumed["finetuned_from"] == results["finetuned_from"]


def test_checkpoints_and_results_of_one_point_of_a_run_carry_one_training_time(tmp_path, monkeypatch):
    from orchestration import run_files

    clock = iter([100.0, 104.0, 105.0, 107.5])
    monkeypatch.setattr(run_files, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    record = run_files.RunRecord(tmp_path, {})
    record.load_state_dict({"train_seconds": 1000.0})  # earlier segments of a resumed run
    record.setup(None, None, "fit")  # the clock reads 100
    record.on_train_batch_end(None, None, None, None, 0)  # 104
    record.on_train_epoch_end(None, None)  # 105
    # best.ckpt and last.ckpt written after that epoch, then fit's teardown: no clock reads
    assert record.state_dict()["train_seconds"] == record.state_dict()["train_seconds"] == 1005.0
    assert record.train_seconds() == 1005.0  # what results.json records after fit returns
    record.on_validation_end(None, None)  # 107.5
    assert record.train_seconds() == 1007.5


def test_resume_with_more_epochs_extends_a_finished_run(tmp_path, tiny_dataset):
    assert run(tmp_path, tiny_dataset, "--max-epochs", "1") == 0
    assert train.main(["--resume", "last", "--run-dir", str(tmp_path / "run"), "--max-epochs", "2"]) == 0
    extended = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert extended["global_step"] == 20
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs"] == 2


def test_resume_last_without_run_dir_continues_the_run_whose_last_ckpt_is_newest(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("b", "a"):  # b is created first and sorts last by name: neither order may decide
        assert (
            run(
                tmp_path,
                tiny_dataset,
                "--max-epochs",
                "1",
                "--recon-every",
                "0",
                "--switch-every",
                "0",
                "--overview-every",
                "0",
                run_dir=f"runs/{name}",
            )
            == 0
        )
    last = {name: tmp_path / "runs" / name / "checkpoints" / "last.ckpt" for name in ("a", "b")}

    def epochs(name):
        return json.loads((tmp_path / "runs" / name / "results.json").read_text())["epochs"]

    now = time.time()
    os.utime(last["a"], (now - 100, now - 100))
    os.utime(last["b"], (now - 50, now - 50))
    assert train.main(["--resume", "last", "--max-epochs", "2"]) == 0
    assert (epochs("a"), epochs("b")) == (1, 2)
    os.utime(last["a"], (now + 100, now + 100))  # now a's is the newest
    assert train.main(["--resume", "last", "--max-epochs", "2"]) == 0
    assert (epochs("a"), epochs("b")) == (2, 2)


def test_evaluate_reproduces_the_test_error_of_results_json(tmp_path, tiny_dataset):
    assert run(tmp_path, tiny_dataset, "--max-epochs", "1") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert train.main(["--evaluate", results["best_checkpoint"], "--data-dir", str(tmp_path / "data")]) == 0
    evaluated = json.loads((tmp_path / "run" / "checkpoints" / "results.json").read_text())
    assert evaluated["test_error"] == pytest.approx(results["test_error"], abs=1e-6)


def test_evaluate_split_val_gives_the_validation_error_the_best_checkpoint_was_chosen_on(tmp_path, tiny_dataset):
    assert run(tmp_path, tiny_dataset, "--max-epochs", "2") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        logged = [float(row["val/error"]) for row in csv.DictReader(f) if row.get("val/error")]
    assert len(logged) == 2
    argv = ["--evaluate", results["best_checkpoint"], "--evaluate-split", "val", "--data-dir", str(tmp_path / "data")]
    assert train.main(argv) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    evaluated = json.loads((checkpoints / "results-val.json").read_text())
    assert evaluated["val_error"] == pytest.approx(min(logged), abs=1e-6) and evaluated["val_size"] == 50
    assert not (checkpoints / "results.json").exists()  # the test split was not touched


def test_bf16_mixed_precision_runs_on_cpu(tmp_path, tiny_dataset):
    assert run(tmp_path, tiny_dataset, "--precision", "bf16-mixed", "--max-epochs", "2") == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test_error"] < 0.5  # chance is 0.75


def test_wandb_offline_run_holds_the_metrics(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert run(tmp_path, tiny_dataset, "--max-epochs", "1", "--logger", "wandb") == 0
    offline_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    # W&B's own service process writes the event log; once in four suite runs it had written only the
    # header when finish() returned, so give the file a few seconds to arrive.
    deadline = time.monotonic() + 15
    while True:
        events = b"".join(p.read_bytes() for p in offline_runs[0].glob("*.wandb"))  # the run's event log
        if (b"val/error" in events and b"train/loss" in events) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert b"val/error" in events and b"train/loss" in events


def test_resume_continues_the_same_wandb_run(tmp_path, tiny_dataset, interrupt_after_first_epoch, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.raises(SystemExit):
        run(tmp_path, tiny_dataset, "--max-epochs", "2", "--logger", "wandb")
    import wandb

    wandb.finish()  # the interrupted process would have exited here
    run_id = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["wandb_run_id"]
    from orchestration import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "image_callbacks", lambda cfg, run_dir: [])
    assert train.main(["--resume", "last", "--run-dir", str(tmp_path / "run")]) == 0
    offline_runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>, with "-1" added when both start within the same second
    assert len(offline_runs) == 2 and all(
        re.fullmatch(rf"offline-run-\d+_\d+-{run_id}(-\d+)?", p.name) for p in offline_runs
    )


def test_fast_dev_run_is_a_smoke_check_that_still_reports(tmp_path, tiny_dataset):
    assert run(tmp_path, tiny_dataset, "--fast-dev-run") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["global_step"] == 1 and results["best_checkpoint"] == ""


def test_training_metrics_are_written_every_log_every_steps_and_only_then(tmp_path, tiny_dataset, monkeypatch):
    """training_step skips self.log on the steps Lightning would not write (its fixed cost per step):
    the steps it does write must still carry every training metric."""
    from swwae_lightning.module import SWWAEModule

    calls = []
    original = SWWAEModule.log
    monkeypatch.setattr(
        SWWAEModule, "log", lambda self, name, *a, **k: (calls.append(name), original(self, name, *a, **k))[1]
    )
    assert (
        run(
            tmp_path,
            tiny_dataset,
            "--max-epochs",
            "1",
            "--log-every",
            "2",
            "--recon-every",
            "0",
            "--switch-every",
            "0",
            "--overview-every",
            "0",
        )
        == 0
    )
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert steps == list(range(1, results["global_step"], 2))  # Lightning's steps 2, 4, ... are written as 1, 3, ...
    assert all(r["train/nll"] and r["train/rec"] and r["train/mid"] and r["data/unlabeled_seen"] for r in rows)
    assert calls.count("train/loss") == len(steps)  # not called on the steps in between


def test_channels_last_flag_trains_and_is_recorded(tmp_path, tiny_dataset):
    assert run(tmp_path, tiny_dataset, "--channels-last", "--max-epochs", "1") == 0
    assert "channels_last: true" in (tmp_path / "run" / "config.yaml").read_text()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test_error"] < 0.75  # learns: chance is 0.75
