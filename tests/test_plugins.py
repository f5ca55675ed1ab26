"""Plugins by name: a file outside the repository reaches every process a run starts, and installed
packages register through the entry-point group; the loss-term contract is explicit."""

import csv
import fcntl
import inspect
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import test_extending
import torch
import yaml
from conftest import tiny_run
from PIL import Image

import train
from orchestration import plugins
from swwae_lightning import TERMS, LossTerm, Objective, StackedWhatWhere, settings
from swwae_lightning.objectives import TermContractError

REPO = Path(__file__).resolve().parents[1]

# A user's file: the README's dataset and loss-term examples (tests/test_extending.py), registered on import.
PLUGIN = "\n".join(
    [
        "import torch",
        "from datamodules import DATASETS, DatasetInfo, ImageSplits",
        "from swwae_lightning import TERMS, LossTerm, Setting, settings",
        *(
            textwrap.dedent(inspect.getsource(f))
            for f in (test_extending.load_blobs, test_extending.register_blobs, test_extending.register_sparsity)
        ),
        "register_blobs()",
        "register_sparsity()",
        "",
    ]
)

SMALL = tiny_run(
    "--dataset", "blobs", "--limit-train-batches", "2", "--limit-val-batches", "1", "--num-images", "4", batch_size=8
)


@pytest.fixture
def plugin_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("elsewhere") / "my_sparsity.py"  # outside the repository
    path.write_text(PLUGIN)
    return path


def run_py(
    *args: str, cwd: Path, timeout: float = 600, one_stream: bool = False, terminal: bool = False, **env: str
) -> subprocess.CompletedProcess:
    """``one_stream`` writes stderr into stdout, in the order a terminal would show the two; ``terminal``
    runs the process on a pseudo-terminal (stdout and stderr both), as a person at a shell sees it."""
    command, env = [sys.executable, *args], {**os.environ, "OMP_NUM_THREADS": "1", **env}
    if terminal:
        return _run_on_a_terminal(command, cwd, timeout, env)
    return subprocess.run(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if one_stream else subprocess.PIPE,
        text=True,
        timeout=timeout,
        env=env,
    )


def _run_on_a_terminal(command: list[str], cwd: Path, timeout: float, env: dict) -> subprocess.CompletedProcess:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    shown, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([controller], [], [], 1.0)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(controller)
    returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    return subprocess.CompletedProcess(command, returncode, shown.decode(errors="replace").replace("\r\n", "\n"), "")


def logged(run_dir: Path, key: str) -> list[float]:
    return [float(r[key]) for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get(key)]


def test_a_plugin_file_trains_through_train_py_and_resume_reimports_it_from_config_yaml(plugin_file, tmp_path):
    run_dir = tmp_path / "run"
    first = run_py(
        str(REPO / "train.py"),
        "--plugins",
        str(plugin_file),
        *SMALL,
        "--lambda-sparsity",
        "0.5",
        "--max-epochs",
        "1",
        "--log-every",
        "1",
        "--run-dir",
        str(run_dir),
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["plugins"] == [str(plugin_file)] and config["lambda_sparsity"] == 0.5
    assert logged(run_dir, "train/sparsity")
    # A new process, no --plugins: the run's config.yaml names the file, so lambda_sparsity is known again.
    resumed = run_py(
        str(REPO / "train.py"), "--run-dir", str(run_dir), "--resume", "last", "--max-epochs", "2", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 2 and results["global_step"] == 4 and results["lambda_sparsity"] == 0.5


def test_a_config_files_plugins_key_reaches_every_run_of_a_report_sweep_and_the_report_shows_its_pooling(
    plugin_file, tmp_path
):
    configs = []
    for weight in (0.5, 1.0):
        config = tmp_path / f"sparse-{weight:g}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "plugins": [str(plugin_file)],
                    "lambda_sparsity": weight,
                    "lambda_rec": 0.0,
                    "lambda_mid": 0.0,
                    "pooling": "soft",
                    "unpool": "copy",
                }
            )
        )
        configs.append(str(config))
    train_args = [*SMALL, "--max-epochs", "1", "--recon-every", "0", "--switch-every", "0", "--overview-every", "0"]
    proc = run_py(
        "-m",
        "orchestration.report",
        "--sweep",
        *configs,
        "--seeds",
        "0",
        "--runs-root",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "report"),
        "--",
        *train_args,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "report" / "results.md").read_text()
    for weight in ("0.5", "1"):  # the term needs the decoder, so its row names the pooling and the unpooling
        assert f"semi, soft pool, copy unpool, what top, λ: sparsity {weight} |" in table, table


def test_a_two_process_ddp_run_sees_the_plugin_on_both_ranks(plugin_file, tmp_path):
    proc = run_py(
        str(REPO / "train.py"),
        "--plugins",
        str(plugin_file),
        *SMALL,
        "--lambda-sparsity",
        "0.5",
        "--max-epochs",
        "1",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--run-dir",
        str(tmp_path / "run"),
        cwd=tmp_path,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert sorted(re.findall(r"\[rank (\d)\] finished training at global step (\d+)", output)) == [
        ("0", "2"),
        ("1", "2"),
    ]


def test_a_checkpoint_or_run_folder_from_elsewhere_never_imports_the_plugins_it_names_unless_chosen(
    plugin_file, tmp_path
):
    marker = tmp_path / "imported"
    shipped = tmp_path / "download" / "helpers.py"  # a file shipped beside a checkpoint someone published
    shipped.parent.mkdir()
    shipped.write_text(PLUGIN + f"open({str(marker)!r}, 'a').write('imported')\n")
    run_dir = tmp_path / "run"
    train_py = str(REPO / "train.py")
    trained = run_py(
        train_py,
        "--plugins",
        str(shipped),
        *SMALL,
        "--max-epochs",
        "1",
        "--test",
        "--run-dir",
        str(run_dir),
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    marker.unlink()
    best = run_dir / "checkpoints" / "best.ckpt"
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 60 * i, dtype=np.uint8)).save(images / f"{i}.png")
    readers = {
        "checkpoint": [
            [train_py, "--evaluate", str(best)],
            [train_py, "--predict", str(best), "--images", str(images)],
        ],
        "run folder": [["-m", "orchestration.report", str(run_dir), "--out", str(tmp_path / "report")]],
    }
    for source, commands in readers.items():
        for command in commands:
            refused = run_py(*command, cwd=tmp_path)
            assert refused.returncode == 2, refused.stderr[-3000:]
            (line,) = refused.stderr.strip().splitlines()
            assert line.startswith(f"error: {source} ") and line.endswith(
                f"names plugin(s) {shipped}, which would run their code: "
                f"if you trust them, allow them with --plugins {shipped}"
            ), line
            assert not marker.exists()
    assert not (best.parent / "results.json").exists() and not (tmp_path / "report").exists()
    assert not (run_dir / "predictions.csv").exists()
    # --finetune-from reads weights only: another plugin (the dataset, without the shipped file) is all it needs
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "blobs.py").write_text(PLUGIN)
    finetuned = run_py(
        train_py,
        "--plugins",
        str(tmp_path / "mine" / "blobs.py"),
        *SMALL,
        "--max-epochs",
        "1",
        "--finetune-from",
        str(best),
        "--run-dir",
        str(tmp_path / "finetuned"),
        cwd=tmp_path,
    )
    assert finetuned.returncode == 0, finetuned.stderr[-3000:]
    assert not marker.exists()
    # chosen with --plugins, each reader works
    for command in [*readers["checkpoint"], *readers["run folder"]]:
        allowed = run_py(*command, "--plugins", str(shipped), cwd=tmp_path)
        assert allowed.returncode == 0, allowed.stderr[-3000:]
        assert marker.read_text() == "imported"
        marker.unlink()


def test_an_installed_package_registers_a_term_through_the_entry_point_group(tmp_path):
    """What pip leaves for a package that declares the entry point: the package and its dist-info."""
    site = tmp_path / "site"
    (site / "swwae_demo_term").mkdir(parents=True)
    (site / "swwae_demo_term" / "__init__.py").write_text(
        textwrap.dedent("""
        from swwae_lightning import TERMS, LossTerm, Setting

        @TERMS.register
        class Demo(LossTerm):
            name = "demo"
            weight = Setting("lambda_demo", 0.0, "weight of the demo term", "objectives", type=float)

            def __call__(self, step):
                return step.logits("labeled").pow(2).mean()
    """)
    )
    info = site / "swwae_demo_term-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: swwae-demo-term\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\ndemo = swwae_demo_term\n")
    proc = run_py(str(REPO / "train.py"), "--help", cwd=tmp_path, PYTHONPATH=str(site))
    assert proc.returncode == 0 and "--lambda-demo" in proc.stdout, proc.stderr[-2000:]
    assert "--lambda-demo" not in run_py(str(REPO / "train.py"), "--help", cwd=tmp_path).stdout  # not installed


def test_a_plugin_that_is_not_there_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec, said in (
        (str(tmp_path / "nowhere.py"), "nowhere.py' does not exist"),
        ("no_such_plugin_module", "no module named 'no_such_plugin_module'"),
    ):
        assert train.main(["--plugins", spec]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --plugins") and said in err and "\n" not in err, err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the loss-term contract
@pytest.fixture
def isolated_terms(monkeypatch):
    plugins.declare_all_settings()
    monkeypatch.setattr(TERMS, "_items", dict(TERMS._items))
    monkeypatch.setattr(settings, "SETTINGS", dict(settings.SETTINGS))


def register_peek(logits_for=()):
    @TERMS.register
    class Peek(LossTerm):
        """Reads the unlabeled logits, declared or not."""

        name = "peek"
        weight = settings.Setting("lambda_peek", 0.0, "weight of peek", "objectives", type=float)
        needs = frozenset({"unlabeled"})

        def __call__(self, step):
            return step.logits("unlabeled").pow(2).mean()

    Peek.logits_for = logits_for
    return Peek


def peek_batch():
    torch.manual_seed(0)
    return {"labeled": (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])), "unlabeled": torch.randn(6, 1, 8, 8)}


def test_a_term_that_reads_logits_it_did_not_declare_gets_one_line_naming_the_term_and_the_declaration(isolated_terms):
    register_peek()
    net = StackedWhatWhere("4C3-MP2-FC8", 1, 8, 4)
    objective = Objective.from_settings(lambda_rec=0.0, lambda_mid=0.0, lambda_peek=1.0)
    with pytest.raises(TermContractError) as caught:
        objective(net, peek_batch())
    assert str(caught.value) == (
        "loss term 'peek' reads step.logits('unlabeled') but does not declare it: add 'unlabeled' to its logits_for"
    )


def test_a_declared_read_works_and_undeclared_decoder_or_teacher_reads_are_named(isolated_terms):
    register_peek(logits_for=("unlabeled",))
    net = StackedWhatWhere("4C3-MP2-FC8", 1, 8, 4)
    parts = Objective.from_settings(lambda_rec=0.0, lambda_mid=0.0, lambda_peek=1.0)(net, peek_batch())
    assert parts.terms["peek"] > 0
    step = Objective.from_settings(lambda_rec=0.0, lambda_mid=0.0, lambda_peek=1.0).context(net, peek_batch())
    step.asking = TERMS["peek"]
    with pytest.raises(
        TermContractError,
        match=r"loss term 'peek' reads step.output \(the decoder's pass\) but does "
        r"not declare it: add 'decoder' to its needs",
    ):
        _ = step.output
    with pytest.raises(TermContractError, match="add 'teacher' to its needs"):
        step.teacher_logits("unlabeled")


def test_a_term_declaring_logits_of_a_view_it_does_not_need_is_refused_at_registration(isolated_terms):
    class Strong(LossTerm):
        name = "strongpeek"
        weight = settings.Setting("lambda_strongpeek", 0.0, "w", "objectives", type=float)
        needs = frozenset({"unlabeled"})
        logits_for = ("strong",)

    with pytest.raises(ValueError, match=r"reads the logits of the view\(s\) \['strong'\] without needing them"):
        TERMS.register(Strong)


def test_every_built_in_term_declares_what_the_module_reads():
    for term in TERMS:
        assert set(term.logits_for) <= {"labeled", "unlabeled", "strong", "second"}
        assert isinstance(term.validation_metrics, tuple)
    assert TERMS["fixmatch"].validation_metrics == ("pseudo_share", "pseudo_acc")
    assert TERMS["consistency"]().validation_counts(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)) == {}
    assert {t.name for t in TERMS if t.uses_decoder()} == {"rec", "mid", "swap"}


# ----------------------------------------------------------------------------- a bug is not bad input
def test_a_term_that_raises_inside_training_gives_its_traceback_exit_1_and_the_run_resumes(
    isolated_terms, tiny_dataset, tmp_path, capsys
):
    calls = {"n": 0, "fail_at": 3}  # the first step of the second epoch: the first epoch's last.ckpt exists

    @TERMS.register
    class Fragile(LossTerm):
        name = "fragile"
        weight = settings.Setting("lambda_fragile", 0.0, "weight of fragile", "objectives", type=float)

        def __call__(self, step):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"]:
                raise ValueError("a bug in the user's term")
            return step.logits("labeled").pow(2).mean() * 0

    run_dir = tmp_path / "run"
    argv = [
        "--dataset",
        tiny_dataset,
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
        "--logger",
        "csv",
        "--max-epochs",
        "2",
        "--limit-train-batches",
        "2",
        "--limit-val-batches",
        "1",
        "--lambda-fragile",
        "1",
        "--run-dir",
        str(run_dir),
    ]
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise ValueError("a bug in the user\'s term")' in err
    last_line = err.strip().splitlines()[-1]
    assert last_line == (
        f"error: training stopped by ValueError: a bug in the user's term; the last good checkpoint is "
        f"untouched; resume with: python train.py --run-dir {run_dir} --resume last"
    )
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2  # the first epoch's, not overwritten by the failed step
    calls["fail_at"] = None
    assert train.main(["--run-dir", str(run_dir), "--resume", "last"]) == 0  # the lock was released
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 4


def test_in_a_terminal_the_error_line_of_a_bug_comes_after_the_progress_bar(plugin_file, tmp_path):
    """A terminal shows stdout (the bar) and stderr (the error) as one stream: the resume hint must end it."""
    fragile = tmp_path / "fragile.py"
    fragile.write_text(
        plugin_file.read_text()
        + textwrap.dedent("""
        @TERMS.register
        class Fragile(LossTerm):
            name = "fragile"
            weight = Setting("lambda_fragile", 0.0, "weight of fragile", "objectives", type=float)

            def __call__(self, step):
                raise ValueError("a bug in the user's term")
        """)
    )
    argv = [*SMALL, "--lambda-fragile", "1", "--max-epochs", "1", "--run-dir", str(tmp_path / "run")]
    proc = run_py(str(REPO / "train.py"), "--plugins", str(fragile), *argv, cwd=tmp_path, timeout=300, terminal=True)
    assert proc.returncode == 1, proc.stdout[-3000:]
    lines = [line for line in re.split(r"[\r\n]", proc.stdout) if line.strip()]
    assert "Epoch 0" in proc.stdout and lines[-1].startswith("error: training stopped by ValueError"), lines[-3:]


def test_a_log_file_gets_one_line_per_epoch_and_a_terminal_gets_the_bar(plugin_file, tmp_path):
    argv = [str(REPO / "train.py"), "--plugins", str(plugin_file), *SMALL, "--max-epochs", "2"]
    logged_run = run_py(*argv, "--run-dir", str(tmp_path / "logged"), cwd=tmp_path)
    assert logged_run.returncode == 0, logged_run.stderr[-3000:]
    assert "\r" not in logged_run.stdout and "Epoch 0" not in logged_run.stdout
    epochs = [line for line in logged_run.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[:2] for line in epochs] == [["epoch 1/2", "step 2"], ["epoch 2/2", "step 4"]], epochs
    assert all(
        re.search(r"  train/loss [\d.e+-]+  .*  val/error \d+\.\d\d%  .*  \d+\.\d s$", line) for line in epochs
    ), epochs
    shown = run_py(*argv, "--run-dir", str(tmp_path / "shown"), cwd=tmp_path, terminal=True)
    assert shown.returncode == 0, shown.stdout[-3000:]
    assert "Epoch 1" in shown.stdout and "\r" in shown.stdout  # the bar, redrawn in place
    assert not [line for line in shown.stdout.splitlines() if line.startswith("epoch ")]
