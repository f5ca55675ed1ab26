"""The README's three extension examples, written against the public API only, each trained through train.py's code.

Nothing here edits a library file: a pooling, a dataset and a loss term are each one class
(or one loader) plus its registration, and their settings become flags at once.
"""

import csv
import inspect
import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import swwae_lightning as swwae
from datamodules import DATASETS, DatasetInfo, ImageSplits
from orchestration import main, plugins
from swwae_lightning import POOLINGS, TERMS, LossTerm, Pooling, Setting, settings
from swwae_lightning.pooling import hard_positions, hard_unpool

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_registries(monkeypatch):
    """What a test registers is gone afterwards, so other tests see the built-in registries only."""
    plugins.declare_all_settings()  # the built-in settings are declared before the copy is taken
    monkeypatch.setattr(POOLINGS, "_items", dict(POOLINGS._items))
    monkeypatch.setattr(TERMS, "_items", dict(TERMS._items))
    monkeypatch.setattr(settings, "SETTINGS", dict(settings.SETTINGS))
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))


# ---- a new pooling: the what is a power mean, the where the max's switch ----------------------------------
def register_power_pooling():
    @POOLINGS.register
    class PowerPooling(Pooling):
        """What: the power mean of the window's positive part (p=1: average, large p: max); where: the max's switch."""

        name = "power"
        settings = (
            Setting(
                "power",
                3.0,
                "exponent of the power-mean what (>= 1)",
                "what-where",
                type=float,
                check=settings.at_least(1),
            ),
        )

        def pool(self, z, k):
            _, where = F.max_pool2d(z, k, k, return_indices=True)
            p = self.options["power"]
            return (F.avg_pool2d(z.clamp(min=0).pow(p), k) + 1e-6).pow(1 / p), where

        def unpool(self, what, where, k):
            return hard_unpool(what, where, k)

        def positions(self, where, k):
            return hard_positions(where, k)

    return PowerPooling


# ---- a new dataset: one loader and one registry entry ----------------------------------------------------
def load_blobs(data_dir, download, include_extra) -> ImageSplits:
    """Class c is a bright 4x4 square in quadrant c of an 8x8 image, on noise."""
    generator = torch.Generator().manual_seed(0)

    def draw(n):
        labels = torch.arange(n) % 4
        images = torch.randint(0, 60, (n, 1, 8, 8), generator=generator, dtype=torch.uint8)
        for c in range(4):
            row, col = divmod(c, 2)
            images[labels == c, :, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] += 180
        return images, labels

    return ImageSplits(*draw(400), *draw(100))


def register_blobs():
    DATASETS.register(
        DatasetInfo(
            "blobs",
            load_blobs,
            image_shape=(1, 8, 8),
            num_classes=4,
            mean=(0.3,),
            std=(0.3,),
            hflip=False,
            preset="8C3-MP2-FC32",
        )
    )


# ---- a new loss term: an L1 penalty on the top what --------------------------------------------------------
def register_sparsity():
    @TERMS.register
    class WhatSparsity(LossTerm):
        """Mean absolute value of the top what over every row: sparse codes."""

        name = "sparsity"
        weight = Setting(
            "lambda_sparsity",
            0.0,
            "weight of the top-what L1 penalty",
            "objectives",
            type=float,
            check=settings.at_least(0),
        )
        needs = frozenset({"decoder"})

        def __call__(self, step):
            return step.output.encoder_states[-1].abs().mean()

    return WhatSparsity


def one_step(tmp_path, *args) -> dict:
    """train.py's main, one training step (plus one validation and one test batch); returns results.json."""
    run_dir = tmp_path / "run"
    argv = [
        "--test",
        "--dataset",
        "blobs",
        "--labels",
        "40",
        "--val-size",
        "50",
        "--batch-size",
        "8",
        "--unlabeled-batch-size",
        "16",
        "--logger",
        "csv",
        "--max-epochs",
        "1",
        "--limit-train-batches",
        "1",
        "--limit-val-batches",
        "1",
        "--run-dir",
        str(run_dir),
        *args,
    ]
    assert main(argv) == 0
    return json.loads((run_dir / "results.json").read_text()) | {
        "metrics": list(csv.DictReader(open(run_dir / "metrics.csv")))
    }


def test_a_new_dataset_is_one_loader_and_one_registry_entry(tmp_path):
    register_blobs()
    results = one_step(tmp_path)
    assert results["dataset"] == "blobs" and results["arch"] == "8C3-MP2-FC32"  # the entry's preset network
    assert 0 <= results["test_error"] <= 1


def test_a_new_pooling_is_one_class_and_its_option_becomes_a_flag(tmp_path):
    register_blobs()
    cls = register_power_pooling()
    results = one_step(tmp_path, "--pooling", "power", "--power", "2")
    assert results["pooling"] == "power" and results["power"] == 2.0
    net = swwae.StackedWhatWhere("4C3-MP2", 1, 8, 2, pooling=POOLINGS["power"](power=1.0))
    z = torch.rand(1, 4, 8, 8)
    what, where = net.pooling.pool(z, 2)
    assert isinstance(net.pooling, cls) and torch.allclose(what, F.avg_pool2d(z, 2) + 1e-6, atol=1e-5)
    assert main(["--dataset", "blobs", "--pooling", "power", "--power", "0.5"]) == 2  # its own check, one line


def test_a_new_loss_term_is_one_class_its_weight_a_flag_and_it_is_logged(tmp_path):
    register_blobs()
    register_sparsity()
    results = one_step(tmp_path, "--lambda-sparsity", "0.5", "--log-every", "1")
    assert results["lambda_sparsity"] == 0.5
    logged = [float(row["train/sparsity"]) for row in results["metrics"] if row.get("train/sparsity")]
    assert logged and logged[0] > 0
    assert not swwae.is_baseline({"lambda_rec": 0, "lambda_mid": 0, "lambda_sparsity": 0.5})


def test_the_readmes_notebook_example_trains_and_tests_without_train_py(mnist_splits):
    """The README's lines, with a smaller budget: the public API alone trains and tests a model."""
    import pytorch_lightning as pl

    from datamodules import SemiSupervisedDataModule
    from swwae_lightning import Objective, StackedWhatWhere, SWWAEModule
    from swwae_lightning.objectives import FixMatch, InputReconstruction

    net = StackedWhatWhere("16C5-BN-MP2-32C3-MP2-FC128-D0.3", in_channels=1, image_size=28, num_classes=10)
    objective = Objective({InputReconstruction(): 1.0, FixMatch(fixmatch_threshold=0.95): 1.0})
    module = SWWAEModule(net, objective, lr=3e-3)
    data = SemiSupervisedDataModule(
        dataset="mnist",
        labels=100,
        views=module.objective.views,
        download=False,
        batch_size=32,
        unlabeled_batch_size=32,
    )
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=30,
        limit_val_batches=2,
        limit_test_batches=10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, datamodule=data)
    error = trainer.test(module, datamodule=data, verbose=False)[0]["test/error"]
    assert module.objective.views == ("strong",) and error < 0.6  # 30 steps: far better than chance (0.9)


def _code_lines(text: str) -> list[str]:
    """The lines that do something: no imports, no blank lines, indentation relative to the first."""
    lines = [line for line in textwrap.dedent(text).splitlines() if line.strip()]
    return [line for line in lines if not line.startswith(("import ", "from "))]


def _documented_blocks() -> list[str]:
    pages = [REPO / "README.md", REPO / "docs" / "extending.md"]
    return [block for page in pages for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]


@pytest.mark.parametrize(
    "register, marker",
    [
        (register_power_pooling, "@POOLINGS.register"),
        (register_blobs, "DATASETS.register("),
        (register_sparsity, "@TERMS.register"),
    ],
)
def test_the_documented_extension_examples_are_this_files_code_word_for_word(register, marker):
    body = inspect.getsource(register).split("\n", 1)[1]  # the function's body: the example as a user writes it
    lines = _code_lines(body)
    expected = lines[:-1] if lines[-1].startswith("return ") else lines  # the class handed back to the test
    shown = [block for block in _documented_blocks() if marker in block]
    assert shown, f"no documented example registers with {marker}"
    assert all(_code_lines(block) == expected for block in shown)
