"""W&B as its users expect: groups, job types, pictures and the sweep metric in the run; self-hosted servers; sweeps."""

import csv
import http.server
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from wandb.proto import wandb_internal_pb2

import train
from orchestration import tracking

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
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # padding to the end of the block
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
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


def test_an_offline_run_holds_its_group_job_type_pictures_and_the_best_val_error(
    tmp_path, tiny_dataset, offline_wandb, caplog
):
    caplog.set_level(logging.INFO)
    config = tmp_path / "tiny-experiment.yaml"
    config.write_text(
        f"dataset: {tiny_dataset}\nlabels: 40\nval_size: 50\nbatch_size: 8\nunlabeled_batch_size: 16\n"
        "arch: 4C3-MP2-8C3-MP2-FC16\nmax_epochs: 2\n"
    )
    run_dir = tmp_path / "run"
    assert (
        train.main(
            [
                "--config",
                str(config),
                "--data-dir",
                str(tmp_path / "data"),
                "--logger",
                "wandb",
                "--wandb-job-type",
                "pretrain",
                "--wandb-tags",
                "a,b",
                "--wandb-log-model",
                "--run-dir",
                str(run_dir),
            ]
        )
        == 0
    )
    notices = [r.getMessage() for r in caplog.records if "--wandb-log-model" in r.getMessage()]
    assert len(notices) == 1 and "uploads no checkpoint" in notices[0] and "\n" not in notices[0]  # offline: one line
    records = finished_records(run_dir)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_group, run.job_type, list(run.tags)) == ("tiny-experiment", "pretrain", ["a", "b"])
    history_keys = {
        "/".join(i.nested_key) or i.key
        for r in records
        if r.WhichOneof("record_type") == "history"
        for i in r.history.item
    }
    assert {"val/error", "train/loss"} <= history_keys
    assert any(key.startswith("images/reconstructions") for key in history_keys)  # the pictures reach the run
    # A value set on the summary directly (not W&B's own last-logged value) is a flat key.
    written = [
        float(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for u in r.summary.update
        if u.key == "val/error"
    ]
    logged = [float(row["val/error"]) for row in csv.DictReader(open(run_dir / "metrics.csv")) if row["val/error"]]
    assert written == [pytest.approx(min(logged))]  # the best, as a sweep wants, written once at the end of fit


def test_without_a_group_the_dataset_labels_and_mode_name_it():
    assert tracking.default_group({"dataset": "mnist", "labels": 100, "mode": "semi"}) == "mnist-100-semi"
    assert (
        tracking.default_group({"dataset": "cifar10", "labels": None, "mode": "supervised"}) == "cifar10-all-supervised"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeServer:
    """A W&B server on a free loopback port: ``answer`` is "viewer" (a good key), an HTTP status to send to
    every request, or "silent" (the connection is accepted, nothing is ever sent)."""

    def __init__(self, answer):
        self.answer = answer
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        if self.answer == "silent":
            self.listener = socket.socket()
            self.listener.bind(("127.0.0.1", self.port))
            self.listener.listen(16)  # the kernel accepts into the backlog; no one reads or writes
            return self
        answer = self.answer

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"data": {"viewer": {"id": "u"}}}).encode() if answer == "viewer" else b"down"
                self.send_response(200 if answer == "viewer" else answer)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        if self.answer == "silent":
            self.listener.close()
        else:
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def online_wandb(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)


def test_wandb_base_url_decides_online_or_offline_against_a_local_server(monkeypatch, online_wandb):
    port = free_port()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    assert tracking.offline_reason() == f"the W&B server 127.0.0.1:{port} is not reachable"  # nothing listens
    assert time.monotonic() - start < 5
    for answer, reason in (
        ("viewer", None),
        (500, "answered HTTP 500"),
        (503, "answered HTTP 503"),
        (401, "answered HTTP 401 (the API key was rejected)"),
    ):
        with FakeServer(answer) as server:
            monkeypatch.setenv("WANDB_BASE_URL", server.url)
            found = tracking.offline_reason()
            assert found == (reason and f"the W&B server {server.url}/graphql {reason}"), (answer, found)
    with FakeServer("silent") as server:  # a server that takes the connection and never answers
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        start = time.monotonic()
        assert tracking.server_problem("x" * 40, timeout=1).startswith(
            f"the W&B server {server.url}/graphql did not answer within 1 s"
        )
        assert time.monotonic() - start < 3
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", str(Path("/nonexistent")))
    monkeypatch.setenv("HOME", "/nonexistent")
    assert tracking.offline_reason().startswith("no W&B credentials")


@pytest.mark.parametrize("answer", [500, "silent"], ids=["every-request-500", "never-answers"])
def test_a_failing_wandb_server_never_stops_a_run(answer, tmp_path, tiny_dataset, online_wandb):
    """train.py itself, pointed at the server with a key: exit 0, one line about W&B, checkpoints, metrics."""
    run_dir = tmp_path / "run"
    with FakeServer(answer) as server:
        start = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "train.py"),
                "--dataset",
                "mnist",
                "--labels",
                "20",
                "--val-size",
                "100",
                "--batch-size",
                "8",
                "--unlabeled-batch-size",
                "8",
                "--limit-train-batches",
                "2",
                "--limit-val-batches",
                "1",
                "--max-epochs",
                "1",
                "--num-images",
                "2",
                "--logger",
                "wandb",
                "--run-dir",
                str(run_dir),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "WANDB_BASE_URL": server.url, "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"},
        )
        seconds = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    ours = [line for line in output.splitlines() if line.startswith("W&B")]
    assert len(ours) == 1 and ours[0].startswith(f"W&B: offline (the W&B server {server.url}/graphql "), ours
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert len(list(csv.DictReader(open(run_dir / "metrics.csv")))) > 0
    assert seconds < 120, seconds  # the start waits SERVER_TIMEOUT at most; the rest is the short run


def test_an_online_start_that_fails_goes_offline_and_one_that_cannot_start_at_all_keeps_metrics_csv(
    tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO)
    config = {**tracking.S.defaults(), "dataset": "mnist", "labels": 100, "mode": "semi"}
    started = []

    def start(run_dir, config, resume_id, offline):
        started.append(offline)
        if not offline or fail_offline:
            raise RuntimeError("CommError: context deadline exceeded")
        return "the offline logger"

    monkeypatch.setattr(tracking, "offline_reason", lambda: None)
    monkeypatch.setattr(tracking, "_start_wandb", start)
    fail_offline = False
    assert tracking.wandb_logger(tmp_path, config, None) == "the offline logger" and started == [False, True]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("W&B")]
    assert said == [
        f"W&B: offline (W&B did not start online: RuntimeError: CommError: context deadline exceeded); "
        f"upload later with: wandb sync {tmp_path / 'wandb'}/offline-run-*"
    ]
    caplog.clear()
    fail_offline = True
    assert tracking.wandb_logger(tmp_path, config, None) is None
    assert caplog.records[-1].getMessage() == (
        "W&B: offline W&B did not start either (RuntimeError); this run keeps its metrics in metrics.csv only"
    )


def test_an_unwritable_tensorboard_folder_and_a_failing_writer_leave_metrics_csv_and_the_run(
    tmp_path, tiny_dataset, monkeypatch, caplog
):
    caplog.set_level(logging.INFO)
    argv = [
        "--dataset",
        tiny_dataset,
        "--data-dir",
        str(tmp_path / "data"),
        "--labels",
        "40",
        "--val-size",
        "50",
        "--batch-size",
        "8",
        "--unlabeled-batch-size",
        "16",
        "--arch",
        "4C3-MP2-8C3-MP2-FC16",
        "--max-epochs",
        "1",
        "--log-every",
        "1",
        "--limit-train-batches",
        "3",
        "--logger",
        "tensorboard",
    ]
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "tensorboard").write_text("a file where the writer's folder would go")
    assert train.main([*argv, "--run-dir", str(blocked)]) == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TensorBoard")]
    assert len(said) == 1 and said[0].startswith(f"TensorBoard: cannot write {blocked / 'tensorboard'}")
    assert len(list(csv.DictReader(open(blocked / "metrics.csv")))) >= 3

    caplog.clear()  # a writer that fails mid-run (a full disk): dropped with one line, the run goes on

    def full_disk(self, metrics, step=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking.TensorBoardLogger, "log_metrics", full_disk)
    assert train.main([*argv, "--run-dir", str(tmp_path / "full")]) == 0
    said = [r.getMessage() for r in caplog.records if "logging failed" in r.getMessage()]
    assert said == [
        "TrackedTensorBoardLogger: logging failed (OSError: [Errno 28] No space left on device); it is "
        "dropped, metrics.csv keeps every metric"
    ]
    assert len(list(csv.DictReader(open(tmp_path / "full" / "metrics.csv")))) >= 3


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
    assert (
        train.main(
            [
                "--dataset",
                tiny_dataset,
                "--data-dir",
                str(tmp_path / "data"),
                "--labels",
                "40",
                "--val-size",
                "50",
                "--batch-size",
                "8",
                "--unlabeled-batch-size",
                "16",
                "--arch",
                "4C3-MP2-8C3-MP2-FC16",
                "--max-epochs",
                "1",
                "--log-every",
                "5",
                "--logger",
                "tensorboard",
                "--run-dir",
                str(run_dir),
            ]
        )
        == 0
    )
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"val/error", "train/loss", "train/rec"} <= set(tags["scalars"])
    assert {"images/reconstructions", "images/overview"} <= set(tags["images"])
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    meta = events.summary_metadata["_hparams_/session_start_info"]
    assert meta.plugin_data.plugin_name == "hparams"
    session = HParamsPluginData.FromString(meta.plugin_data.content).session_start_info
    assert (
        session.hparams["lambda_rec"].number_value == 1.0
        and session.hparams["arch"].string_value == "4C3-MP2-8C3-MP2-FC16"
    )
