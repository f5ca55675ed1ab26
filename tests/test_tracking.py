"""W&B as its users expect: groups, job types, pictures and the sweep metric in the run; self-hosted servers; sweeps."""

import csv
import logging
import socket
import struct
import time
from pathlib import Path

import pytest
import yaml
from wandb.proto import wandb_internal_pb2

import train
from swwae_lightning import tracking

REPO = Path(__file__).resolve().parents[1]


def wandb_records(run_dir: Path) -> list:
    """Every record of an offline W&B run, decoded with W&B's own protobuf types.

    The .wandb file is a LevelDB-style log: a 7-byte file header (':W&B', magic, version), then
    32 KiB blocks of chunks, each with a 7-byte header (checksum, length, type: full, first,
    middle or last piece of a record).
    """
    path = next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    data, records, pending, pos, block = path.read_bytes(), [], b"", 7, 32768
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # padding to the end of the block
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def finished_records(run_dir: Path, timeout: float = 15.0) -> list:
    """W&B's service writes the log in the background: wait until it holds the run's exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@pytest.fixture
def offline_wandb(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_an_offline_run_holds_its_group_job_type_pictures_and_the_best_val_error(tmp_path, tiny_dataset, offline_wandb,
                                                                                  caplog):
    caplog.set_level(logging.INFO)
    config = tmp_path / "tiny-experiment.yaml"
    config.write_text(f"dataset: {tiny_dataset}\nlabels: 40\nval_size: 50\nbatch_size: 8\nunlabeled_batch_size: 16\n"
                      "arch: 4C3-MP2-8C3-MP2-FC16\nmax_epochs: 2\n")
    run_dir = tmp_path / "run"
    assert train.main(["--config", str(config), "--data-dir", str(tmp_path / "data"), "--logger", "wandb",
                       "--wandb-job-type", "pretrain", "--wandb-tags", "a,b", "--wandb-log-model",
                       "--run-dir", str(run_dir)]) == 0
    notices = [r.getMessage() for r in caplog.records if "--wandb-log-model" in r.getMessage()]
    assert len(notices) == 1 and "uploads no checkpoint" in notices[0] and "\n" not in notices[0]  # offline: one line
    records = finished_records(run_dir)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_group, run.job_type, list(run.tags)) == ("tiny-experiment", "pretrain", ["a", "b"])
    history_keys = {"/".join(i.nested_key) or i.key for r in records if r.WhichOneof("record_type") == "history"
                    for i in r.history.item}
    assert {"val/error", "train/loss"} <= history_keys
    assert any(key.startswith("images/reconstructions") for key in history_keys)  # the pictures reach the run
    # A value set on the summary directly (not W&B's own last-logged value) is a flat key.
    written = [float(u.value_json) for r in records if r.WhichOneof("record_type") == "summary"
               for u in r.summary.update if u.key == "val/error"]
    logged = [float(row["val/error"]) for row in csv.DictReader(open(run_dir / "metrics.csv")) if row["val/error"]]
    assert written == [pytest.approx(min(logged))]  # the best, as a sweep wants, written once at the end of fit


def test_without_a_group_the_dataset_labels_and_mode_name_it():
    assert tracking.default_group({"dataset": "mnist", "labels": 100, "mode": "semi"}) == "mnist-100-semi"
    assert tracking.default_group({"dataset": "cifar10", "labels": None, "mode": "supervised"}) == "cifar10-all-supervised"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wandb_base_url_decides_online_or_offline_against_a_local_port(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    port = free_port()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    assert tracking.offline_reason() == f"the W&B server 127.0.0.1:{port} is not reachable"  # nothing listens
    assert time.monotonic() - start < 5
    with socket.socket() as listener:  # a self-hosted server on that port
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert tracking.offline_reason() is None
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", str(Path("/nonexistent")))
    monkeypatch.setenv("HOME", "/nonexistent")
    assert tracking.offline_reason().startswith("no W&B credentials")


def test_the_sweep_agents_command_line_resolves_to_the_sweeps_values():
    """What `wandb agent` runs: train.py --name=value per parameter, snake_case names as in the sweep file."""
    sweep = yaml.safe_load((REPO / "configs" / "sweeps" / "wandb-mnist-100-fixmatch.yaml").read_text())
    assert sweep["metric"] == {"name": "val/error", "goal": "minimize"} and sweep["program"] == "train.py"
    chosen = {}
    for name, spec in sweep["parameters"].items():
        chosen[name] = spec["value"] if "value" in spec else spec["values"][-1] if "values" in spec else spec["max"]
    argv = [f"--{name}={value}" for name, value in chosen.items()]
    cfg = train.resolve_config(argv)
    for name, value in chosen.items():
        if name != "config":
            assert cfg[name] == value, name
    assert cfg["lambda_fixmatch"] == 2.0 and cfg["max_epochs"] == 10  # the sweep's value over its config's


def test_tensorboard_through_train_py_holds_scalars_pictures_and_hyperparameters(tmp_path, tiny_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    assert train.main(["--dataset", tiny_dataset, "--data-dir", str(tmp_path / "data"), "--labels", "40", "--val-size",
                       "50", "--batch-size", "8", "--unlabeled-batch-size", "16", "--arch", "4C3-MP2-8C3-MP2-FC16",
                       "--max-epochs", "1", "--log-every", "5", "--logger", "tensorboard", "--run-dir", str(run_dir)]) == 0
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"val/error", "train/loss", "train/rec"} <= set(tags["scalars"])
    assert {"images/reconstructions", "images/overview"} <= set(tags["images"])
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    meta = events.summary_metadata["_hparams_/session_start_info"]
    assert meta.plugin_data.plugin_name == "hparams"
    session = HParamsPluginData.FromString(meta.plugin_data.content).session_start_info
    assert session.hparams["lambda_rec"].number_value == 1.0 and session.hparams["arch"].string_value == "4C3-MP2-8C3-MP2-FC16"
