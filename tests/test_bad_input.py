"""Bad input: one line naming the bad value, a non-zero exit, no traceback, nothing overwritten."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_run

import train

REPO = Path(__file__).resolve().parents[1]
SMALL = tiny_run("--arch", "4C3-MP2-8C3-MP2", "--max-epochs", "1", labels=None)


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_dataset):
    """Each case runs in an empty folder; afterwards nothing new may be there but the inputs."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def other_arch_checkpoint(path: Path) -> Path:
    from swwae_lightning.module import SWWAEModule

    module = SWWAEModule.from_settings("4C3-MP2", 1, 8, 4)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


CASES = {
    "unknown dataset": (["--dataset", "imagenet"], "--dataset 'imagenet' is not one of"),
    "unknown pooling": (["--pooling", "average"], "--pooling 'average' is not one of ['hard', 'soft']"),
    "bad precision": (["--precision", "8-bit"], "--precision '8-bit' is not one of"),
    "labels not a number": (["--labels", "many"], "--labels 'many' is not a whole number or 'all'"),
    "labels not divisible": (["--labels", "42"], "labels=42 must be a positive multiple of the 4 classes"),
    "more labels than a class holds": (["--labels", "4000"], "labels=4000 asks for 1000 examples of class 0"),
    "too many gpus": (["--gpus", "4"], "--gpus 4 asks for 4 GPUs but"),
    "negative lambda": (["--lambda-rec", "-1"], "--lambda-rec -1.0 must be >= 0"),
    "zero batch size": (["--batch-size", "0"], "--batch-size 0 must be >= 1"),
    "no validation images": (["--val-size", "0"], "--val-size 0 must be >= 1"),
    "zero epochs": (["--max-epochs", "0"], "--max-epochs 0 must be >= 1"),
    "full batches larger than the pool": (
        ["--full-batches", "--unlabeled-batch-size", "4000"],
        "--full-batches: batches of 4000 need at least 4000 examples (1 rank(s)); there are",
    ),
    "soft pooling without temperature": (["--pooling", "soft", "--beta", "0"], "--beta 0.0 must be > 0"),
    "bad architecture token": (["--arch", "32C5-XP2"], "bad token 'XP2'"),
    "pool does not tile the image": (["--arch", "8C3-MP3"], "stage 1 pooling MP3 gets a 8x8 map"),
    "fold on a dataset without folds": (["--fold", "3"], "fold=3 applies only to datasets with predefined folds"),
    "missing data, no way to get it": (["--dataset", "cifar10", "--no-download", "--data-dir", "nowhere"], "nowhere"),
    "resume a missing file": (["--resume", "gone.ckpt"], "checkpoint 'gone.ckpt' does not exist"),
    "resume an empty file": (["--resume", "{empty}"], "is empty (0 bytes)"),
    "resume a corrupt file": (["--resume", "{corrupt}"], "is unreadable"),
    "evaluate a corrupt file": (["--evaluate", "{corrupt}"], "is unreadable"),
    "evaluated split without a checkpoint": (
        ["--evaluate-split", "val"],
        "--evaluate-split val is read by --evaluate only; give --evaluate too, or leave --evaluate-split out",
    ),
    "images to classify without a checkpoint": (
        ["--images", "photos"],
        "--images photos is read by --predict only; give --predict too, or leave --images out",
    ),
    "prediction file without a checkpoint": (["--out", "p.csv"], "--out p.csv is read by --predict only"),
    "evaluate an unknown split": (
        ["--evaluate-split", "train"],
        "--evaluate-split 'train' is not one of ['test', 'val']",
    ),
    "fine-tune from another architecture": (
        ["--arch", "4C3-MP2-8C3-MP2", "--finetune-from", "{other}"],
        "is from another architecture (shape mismatch",
    ),
    "unwritable run dir": (["--run-dir", "{file}/run"], "cannot write run directory"),
    "unknown config key": (["--config", "{typo_config}"], "unknown key 'lamda_rec'; did you mean 'lambda_rec'?"),
    "config value of the wrong type": (["--config", "{bad_value_config}"], "'lots' is not a whole number"),
    "config that is not a mapping": (["--config", "{list_config}"], "must hold a mapping"),
    "non-finite weight": (["--lambda-mid", "nan"], "--lambda-mid nan must be a finite number"),
    "infinite learning rate": (["--lr", "inf"], "--lr inf must be a finite number"),
    "non-finite value in a config file": (["--config", "{nan_config}"], "lr: nan must be a finite number"),
    "NaN reconstruction weight": (["--lambda-rec", "nan"], "--lambda-rec nan must be a finite number"),
    "NaN reconstruction weight in a config file": (
        ["--config", "{nan_rec_config}"],
        "lambda-rec: nan must be a finite number",
    ),
    "infinite learning rate in a config file": (["--config", "{inf_config}"], "lr: inf must be a finite number"),
    "FixMatch threshold outside (0, 1)": (
        ["--fixmatch-threshold", "1.5"],
        "--fixmatch-threshold 1.5 must be in (0, 1)",
    ),
    "EMA decay of 1": (["--ema-decay", "1"], "--ema-decay 1.0 must be in [0, 1)"),
    "consistency warm-up past the end": (["--consistency-warmup", "1.5"], "--consistency-warmup 1.5 must be in [0, 1]"),
    "VAT radius of 0": (["--vat-epsilon", "0"], "--vat-epsilon 0.0 must be > 0"),
    "rotation past a half turn": (["--max-rotation", "200"], "--max-rotation 200.0 must be in [0, 180]"),
    "zoom down to nothing": (["--max-scale", "1"], "--max-scale 1.0 must be in [0, 1)"),
    "negative elastic distortion": (["--elastic", "-1"], "--elastic -1.0 must be >= 0"),
    "augmentation shaped but turned off": (
        ["--no-augment", "--max-rotation", "10"],
        "--max-rotation 10.0 is read by --augment only; give --augment too, or leave --max-rotation out",
    ),
    "cutout larger than the image": (["--strong-cutout", "1.5"], "--strong-cutout 1.5 must be in [0, 1]"),
    "negative entropy-minimization weight": (["--lambda-entmin", "-1"], "--lambda-entmin -1.0 must be >= 0"),
    "teacher evaluation without a teacher": (["--eval-teacher"], "--eval-teacher evaluates the EMA teacher"),
    "negative objective weight": (["--lambda-fixmatch", "-0.5"], "--lambda-fixmatch -0.5 must be >= 0"),
    "unknown objective setting": (["--lambda-fixmach", "1"], "unrecognized arguments: --lambda-fixmach 1"),
    "unknown decoder top": (["--decoder-top", "class"], "--decoder-top 'class' is not one of ['what', 'label']"),
    "resume and fine-tune together": (["--resume", "{other}", "--finetune-from", "{other}"], "give only one"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_fails_in_one_line_naming_the_value(name, workdir, capsys):
    args, expected = CASES[name]
    files = {
        "empty": write(workdir / "empty.ckpt", b""),
        "corrupt": write(workdir / "corrupt.ckpt", b"PK\x03\x04 not really a zip"),
        "other": other_arch_checkpoint(workdir / "other.ckpt"),
        "file": write(workdir / "a-file", b"x"),
        "typo_config": write(workdir / "typo.yaml", b"lamda_rec: 0.5\n"),
        "bad_value_config": write(workdir / "bad.yaml", b"labels: lots\n"),
        "list_config": write(workdir / "list.yaml", b"- labels\n"),
        "nan_config": write(workdir / "nan.yaml", b"lr: .nan\n"),
        "nan_rec_config": write(workdir / "nan-rec.yaml", b"lambda-rec: nan\n"),  # text, which float() reads as NaN
        "inf_config": write(workdir / "inf.yaml", b"lr: .inf\n"),
    }
    before = sorted(p.name for p in workdir.iterdir())
    argv = ["--dataset", "tiny", "--labels", "40", *SMALL] + [a.format(**files) for a in args]
    code = train.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and expected in err, err
    assert "\n" not in err and "Traceback" not in err
    assert sorted(p.name for p in workdir.iterdir()) == before  # no run directory, nothing written


def test_a_new_run_never_overwrites_an_earlier_one(workdir, capsys):
    run_dir = workdir / "earlier"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "results.json").write_text('{"test_error": 0.01}')
    before = sorted(run_dir.rglob("*"))
    assert train.main(["--dataset", "tiny", "--labels", "40", *SMALL, "--run-dir", str(run_dir)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir / "results.json").read_text() == '{"test_error": 0.01}'
    assert sorted(run_dir.rglob("*")) == before  # not even a lock file


def test_a_slurm_requeue_may_reuse_its_run_directory(workdir, monkeypatch):
    run_dir = workdir / "slurm"
    (run_dir / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert train.main(["--dataset", "tiny", "--labels", "40", *SMALL, "--run-dir", str(run_dir)]) == 0


def test_the_real_process_exits_non_zero_without_a_traceback(tmp_path):
    for args in (["--pooling", "average"], ["--arch", "32C5-XP2", "--data-dir", str(tmp_path)]):
        proc = subprocess.run(
            [sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
