"""The picture callbacks: what they draw, when they draw it, and that drawing leaves training alone.

Everything runs on a tiny real SWWAEModule over twelve random 1x28x28 images held in memory;
nothing downloads. Switch statistics are checked exactly on hand-built feature maps.
"""

import csv
import math
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from callbacks import ReconstructionLogger, SwitchMapLogger
from callbacks.image_logging import evaluating
from callbacks.switch_maps import mean_switch_offset, switch_density, switch_histogram

from swwae_lightning import pooling as P
from swwae_lightning.module import SWWAEModule

HARD, SOFT = P.make_pooling("hard"), P.make_pooling("soft")
from swwae_lightning.run_files import RunCSVLogger

SIDE = 28
PAD = 2  # make_grid's default padding


class TinyImages(pl.LightningDataModule):
    """Twelve random images, normalized as (x - 0.5) / 0.5, with the two methods the callbacks read."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.images = (torch.rand(12, 1, SIDE, SIDE, generator=generator) - 0.5) / 0.5
        self.labels = torch.arange(12) % 10

    def train_dataloader(self):
        rows = [{"labeled": (x, y)} for x, y in zip(self.images, self.labels)]
        return DataLoader(rows, batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.images, self.labels), batch_size=6)

    def preview_images(self, num_images):
        return self.images[:num_images].clone()

    def to_display(self, images):
        return (images * 0.5 + 0.5).clamp(0, 1)


def tiny_module(pooling="hard", arch="4C3-MP2-8C3-MP2"):
    torch.manual_seed(0)
    return SWWAEModule(arch, in_channels=1, image_size=SIDE, num_classes=10, pooling=pooling, beta=10.0,
                       schedule="constant")


def tiny_trainer(tmp_path, callbacks, logger=False, **kwargs):
    return pl.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=callbacks, default_root_dir=tmp_path,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def grid_size(rows, columns):
    """(height, width) of a make_grid picture of rows x columns 28x28 cells."""
    return rows * (SIDE + PAD) + PAD, columns * (SIDE + PAD) + PAD


def grid_cell(picture, row, column):
    top, left = PAD + row * (SIDE + PAD), PAD + column * (SIDE + PAD)
    return picture[top:top + SIDE, left:left + SIDE]


# --- the switch statistics, exactly ------------------------------------------------------------


def known_maxima():
    """A (1, 2, 4, 4) map with one known maximum per 2x2 window, and the 0/1 map of those maxima."""
    z = torch.zeros(1, 2, 4, 4)
    maxima = torch.zeros(1, 2, 4, 4)
    positions = {0: [(0, 0), (1, 3), (2, 0), (3, 3)], 1: [(0, 1), (0, 3), (3, 0), (3, 3)]}
    for channel, cells in positions.items():
        for y, x in cells:
            z[0, channel, y, x] = 1.0
            maxima[0, channel, y, x] = 1.0
    return z, maxima


def test_hard_switch_density_sits_exactly_on_the_maxima():
    z, maxima = known_maxima()
    _, where = P.hard_pool(z, 2)
    assert torch.equal(switch_density(HARD, where, 2, (4, 4)), maxima.sum(dim=1))
    # Upsampled to twice the size, every pre-pool pixel becomes a 2x2 block of its count.
    upsampled = maxima.sum(dim=1).repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert torch.equal(switch_density(HARD, where, 2, (8, 8)), upsampled)


def test_switch_histogram_counts_positions_and_sums_to_the_number_of_windows():
    z, _ = known_maxima()
    _, where = P.hard_pool(z, 2)
    # Offsets: channel 0 (0,0) (1,1) (0,0) (1,1); channel 1 (0,1) (0,1) (1,0) (1,1).
    assert torch.equal(switch_histogram(HARD, where, 2), torch.tensor([[2.0, 2.0], [1.0, 3.0]]))
    b, c, h, w = where.shape
    assert switch_histogram(HARD, where, 2).sum() == b * c * h * w


def test_soft_switches_with_a_large_beta_match_hard_ones():
    z = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    _, hard_where = P.hard_pool(z, 3)
    _, soft_where = P.soft_pool(z, 3, beta=1e4)
    assert torch.allclose(switch_histogram(SOFT, soft_where, 3), switch_histogram(HARD, hard_where, 3), atol=1e-3)
    assert torch.allclose(switch_density(SOFT, soft_where, 3, (6, 6)), switch_density(HARD, hard_where, 3, (6, 6)), atol=1e-3)


def test_soft_switch_mass_is_splatted_and_preserved():
    where = torch.tensor([0.5, 1.0]).view(1, 1, 1, 1, 2)  # halfway down, right column of a 2x2 window
    assert torch.equal(switch_density(SOFT, where, 2, (2, 2)), torch.tensor([[[0.0, 0.5], [0.0, 0.5]]]))
    assert switch_histogram(SOFT, where, 2).sum() == 1


def test_mean_switch_offset_averages_images_and_channels():
    where = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]]).view(2, 2, 1, 1, 2)
    assert torch.equal(mean_switch_offset(SOFT, where, 2), torch.tensor([[[0.5, 0.5]]]))


# --- the pictures ------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["hard", "soft"])
def test_pictures_have_the_grid_shape_and_show_the_where_matters(tmp_path, pooling):
    images_dir = tmp_path / "images"
    callbacks = [ReconstructionLogger(num_images=3, out_dir=images_dir), SwitchMapLogger(num_images=3, out_dir=images_dir)]
    trainer = tiny_trainer(tmp_path, callbacks)
    trainer.validate(tiny_module(pooling), datamodule=TinyImages(), verbose=False)

    reconstructions = np.asarray(Image.open(images_dir / "reconstructions_epoch000.png"))
    assert reconstructions.shape[:2] == grid_size(rows=4, columns=3)
    for column in range(3):  # row 1: with the where, row 2: copy unpooling
        assert not np.array_equal(grid_cell(reconstructions, 1, column), grid_cell(reconstructions, 2, column))
    assert trainer.callback_metrics["images/rec_mse_where"] != trainer.callback_metrics["images/rec_mse_copy"]

    extra_cells = 2 if pooling == "soft" else 1  # histogram (+ mean offset map for soft)
    for layer in (1, 2):
        switches = Image.open(images_dir / f"switches_layer{layer}_epoch000.png")
        assert np.asarray(switches).shape[:2] == grid_size(rows=math.ceil((3 + extra_cells) / 3), columns=3)
    assert sorted(p.name for p in images_dir.iterdir()) == [
        "reconstructions_epoch000.png", "switches_layer1_epoch000.png", "switches_layer2_epoch000.png"]


class PutInTrainMode(pl.Callback):
    """Runs just before the picture callbacks, so they see a module in train mode."""

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.train()


class RecordModeAndWeights(pl.Callback):
    """Runs just after the picture callbacks: what they left behind."""

    def on_validation_epoch_end(self, trainer, pl_module):
        self.training = [m.training for m in pl_module.modules()]
        self.state = {name: t.clone() for name, t in pl_module.state_dict().items()}


def test_drawing_leaves_train_mode_and_weights_as_they_were(tmp_path):
    module = tiny_module(arch="4C3-MP2-8C3-MP2-BN")  # batch norm: a train-mode forward would move its statistics
    before = {name: t.clone() for name, t in module.state_dict().items()}
    record = RecordModeAndWeights()
    callbacks = [PutInTrainMode(), ReconstructionLogger(num_images=3, out_dir=tmp_path),
                 SwitchMapLogger(num_images=3, out_dir=tmp_path), record]
    tiny_trainer(tmp_path, callbacks, limit_val_batches=1).validate(module, datamodule=TinyImages(), verbose=False)

    assert (tmp_path / "reconstructions_epoch000.png").exists()
    assert all(record.training)
    assert before.keys() == record.state.keys()
    assert all(torch.equal(before[name], record.state[name]) for name in before)


def test_evaluating_restores_each_submodule_mode_even_on_error():
    module = tiny_module()
    module.train()
    module.net.head.eval()  # a deliberately frozen part must stay frozen
    modes = [m.training for m in module.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with evaluating(module):
            assert not module.training and not torch.is_grad_enabled()
            raise RuntimeError("boom")
    assert [m.training for m in module.modules()] == modes


def test_copy_unpooling_is_undone_when_its_forward_fails(tmp_path, monkeypatch):
    module = tiny_module()
    forward = module.net.forward

    def forward_failing_on_copy(x):
        if module.net.unpool == "copy":
            raise RuntimeError("copy forward failed")
        return forward(x)

    monkeypatch.setattr(module.net, "forward", forward_failing_on_copy)
    trainer = tiny_trainer(tmp_path, [ReconstructionLogger(num_images=2, out_dir=tmp_path)], limit_val_batches=1)
    with pytest.raises(RuntimeError, match="copy forward failed"):
        trainer.validate(module, datamodule=TinyImages(), verbose=False)
    assert module.net.unpool == "where"


# --- when they draw ----------------------------------------------------------------------------


def test_pictures_only_every_n_epochs_never_in_the_sanity_check(tmp_path, monkeypatch):
    drawn = []
    draw = ReconstructionLogger.draw

    def recording_draw(self, trainer, pl_module, images):
        drawn.append((trainer.sanity_checking, trainer.current_epoch, images.device, images.dtype))
        return draw(self, trainer, pl_module, images)

    monkeypatch.setattr(ReconstructionLogger, "draw", recording_draw)
    images_dir = tmp_path / "images"
    callbacks = [ReconstructionLogger(every_n_epochs=1, num_images=2, out_dir=images_dir),
                 SwitchMapLogger(every_n_epochs=2, num_images=2, out_dir=images_dir)]
    trainer = tiny_trainer(tmp_path, callbacks, logger=RunCSVLogger(tmp_path), max_epochs=2,
                           limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1)
    trainer.fit(tiny_module(), datamodule=TinyImages())

    assert drawn == [(False, 0, torch.device("cpu"), torch.float32), (False, 1, torch.device("cpu"), torch.float32)]
    assert sorted(p.name for p in images_dir.iterdir()) == [
        "reconstructions_epoch000.png", "reconstructions_epoch001.png",
        "switches_layer1_epoch001.png", "switches_layer2_epoch001.png"]
    with open(tmp_path / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("images/rec_mse_where")]
    assert [row["epoch"] for row in logged] == ["0", "1"]


def test_nothing_is_drawn_off_global_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(pl.Trainer, "is_global_zero", property(lambda self: False))
    callbacks = [ReconstructionLogger(num_images=2, out_dir=tmp_path / "images"),
                 SwitchMapLogger(num_images=2, out_dir=tmp_path / "images")]
    trainer = tiny_trainer(tmp_path, callbacks, limit_val_batches=1)
    trainer.validate(tiny_module(), datamodule=TinyImages(), verbose=False)
    assert not (tmp_path / "images").exists()
    assert "images/rec_mse_where" not in trainer.callback_metrics


def test_preview_images_follow_the_module_dtype(tmp_path):
    """The previews come as float32; a float64 module must get float64 (a GPU module, its device)."""
    module = tiny_module().double()
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, current_epoch=0, global_step=0,
                              datamodule=TinyImages(), loggers=[])
    SwitchMapLogger(num_images=2, out_dir=tmp_path).on_validation_epoch_end(trainer, module)
    assert (tmp_path / "switches_layer2_epoch000.png").exists()


# --- where the pictures go ---------------------------------------------------------------------


def test_pictures_reach_wandb_offline_and_tensorboard(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    loggers = [WandbLogger(offline=True, save_dir=str(tmp_path), project="swwae-test"),
               TensorBoardLogger(save_dir=str(tmp_path), name="tensorboard", version="")]
    callbacks = [ReconstructionLogger(num_images=2, out_dir=tmp_path / "images"),
                 SwitchMapLogger(num_images=2, out_dir=tmp_path / "images")]
    try:
        tiny_trainer(tmp_path, callbacks, logger=loggers, limit_val_batches=1).validate(
            tiny_module(), datamodule=TinyImages(), verbose=False)
    finally:
        wandb.finish()

    media = [p.name for p in tmp_path.glob("wandb/offline-run-*/files/media/images/**/*.png")]
    for name in ("reconstructions", "switches_layer1", "switches_layer2"):
        assert any(m.startswith(name) for m in media), (name, media)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert set(events.Tags()["images"]) == {"images/reconstructions", "images/switches_layer1", "images/switches_layer2"}
