"""A real 2-process CPU DDP run of train.py (gloo): in step, reduced, one run directory."""

import json
import re
import subprocess
import sys
from pathlib import Path

import train

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_run_of_train_py(tmp_path, capsys):
    args = [
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "data"),
        "--val-size",
        "500",
        "--batch-size",
        "32",
        "--unlabeled-batch-size",
        "32",
        "--limit-train-batches",
        "6",
        "--limit-val-batches",
        "2",
        "--max-epochs",
        "1",
        "--logger",
        "csv",
        "--num-images",
        "4",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--test",
    ]
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    steps = re.findall(r"\[rank (\d)\] finished training at global step (\d+)", output)
    assert sorted(steps) == [("0", "6"), ("1", "6")]  # both ranks took the same steps
    # No warning the user cannot act on: the metrics are reduced by torchmetrics (sync_dist advice), the
    # one-channel conv's gradient has the bucket's memory order (grad strides), Lightning's own pytree use.
    assert not re.search(r"sync_dist|Grad strides|deprecated|Warning", output), output[-3000:]

    runs = [path for path in (tmp_path / "runs").iterdir() if path.is_dir()]  # beside them: the ledger of test reads
    assert len(runs) == 1  # both processes wrote into one run directory
    run_dir = runs[0]
    pictures = sorted(p.name for p in (run_dir / "images").iterdir())
    assert pictures == [
        "overview_epoch000.png",
        "reconstructions_epoch000.png",
        "switches_layer1_epoch000.png",
        "switches_layer2_epoch000.png",
    ]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 6 and results["hardware"].startswith("2 process")

    # The DDP test error is reduced over both ranks' shards: it equals a one-process evaluation.
    assert (
        train.main(
            [
                "--evaluate",
                results["best_checkpoint"],
                "--data-dir",
                str(tmp_path / "data"),
                "--accelerator",
                "cpu",
                "--devices",
                "1",
            ]
        )
        == 0
    )
    evaluated = json.loads((run_dir / "checkpoints" / "results.json").read_text())
    assert abs(evaluated["test_error"] - results["test_error"]) < 1e-6
