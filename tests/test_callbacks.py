"""The picture callbacks: what they draw, when they draw it, and that drawing leaves training alone.

Everything runs on a tiny real SWWAEModule over twelve random 1x28x28 images held in memory,
except one check on the bundled MNIST; nothing downloads. Switch statistics, live windows
included, are checked exactly on hand-built feature maps.
"""

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from callbacks import OverviewLogger, ReconstructionLogger, SwitchMapLogger
from callbacks.image_logging import evaluating, figure_to_tensor
from callbacks.reconstructions import reconstruct, reconstruction_sheet
from callbacks.sheet import Sheet, cell_scale
from callbacks.switch_maps import Backdrop, ink_shares
from callbacks.switch_stats import live_windows, mean_switch_offset, pooling_layers, switch_density, switch_histogram
from datamodules import datasets
from orchestration.run_files import RunCSVLogger
from swwae_lightning import pooling as P
from swwae_lightning.module import SWWAEModule
from swwae_lightning.network import StackedWhatWhere

HARD, SOFT = P.make_pooling("hard"), P.make_pooling("soft")
SIDE = 28


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
    return SWWAEModule.from_settings(
        arch, in_channels=1, image_size=SIDE, num_classes=10, pooling=pooling, beta=10.0, schedule="constant"
    )


def tiny_trainer(tmp_path, callbacks, logger=False, **kwargs):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def cell(picture, box):
    x, y, width, height = box
    return picture[y : y + height, x : x + width]


def upscaled(image, scale):
    """(C, H, W) in [0, 1] -> uint8 (H * scale, W * scale, 3) by nearest neighbour, as the pictures show it."""
    pixels = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).expand(3, -1, -1).permute(1, 2, 0).numpy()
    return pixels.repeat(scale, axis=0).repeat(scale, axis=1)


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
    assert torch.allclose(
        switch_density(SOFT, soft_where, 3, (6, 6)), switch_density(HARD, hard_where, 3, (6, 6)), atol=1e-3
    )


def test_soft_switch_mass_is_splatted_and_preserved():
    where = torch.tensor([0.5, 1.0]).view(1, 1, 1, 1, 2)  # halfway down, right column of a 2x2 window
    assert torch.equal(switch_density(SOFT, where, 2, (2, 2)), torch.tensor([[[0.0, 0.5], [0.0, 0.5]]]))
    assert switch_histogram(SOFT, where, 2).sum() == 1


def test_mean_switch_offset_averages_images_and_channels():
    where = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]]).view(2, 2, 1, 1, 2)
    assert torch.equal(mean_switch_offset(SOFT, where, 2), torch.tensor([[[0.5, 0.5]]]))


def windows_with_known_liveness():
    """A (1, 2, 4, 6) map of twelve 2x2 windows, and which are live for hard and for soft pooling.

    Channel 0, left to right, top row: one positive max (live), all zero (dead: ReLU background),
    two equal positive maxima (a tie: dead for hard). Bottom row: all negative (dead), a
    constant positive patch (a tie), a positive max 1e-6 above the next value (within rtol: a tie).
    Channel 1: one max in each corner of its window (live), the max 0 beside negatives (dead), and
    a max just far enough from the next value (live).
    """
    z = torch.zeros(1, 2, 4, 6)
    z[0, 0, 0:2, 0:2] = torch.tensor([[0.2, 0.1], [0.9, 0.0]])
    z[0, 0, 0:2, 4:6] = torch.tensor([[0.5, 0.0], [0.0, 0.5]])
    z[0, 0, 2:4, 0:2] = torch.tensor([[-0.2, -0.1], [-0.3, -0.4]])
    z[0, 0, 2:4, 2:4] = 0.3
    z[0, 0, 2:4, 4:6] = torch.tensor([[1.0, 1.0 - 1e-6], [0.0, 0.0]])
    z[0, 1, 0:2, 0:2] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    z[0, 1, 0:2, 2:4] = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    z[0, 1, 0:2, 4:6] = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    z[0, 1, 2:4, 0:2] = torch.tensor([[0.0, 0.0], [0.0, 4.0]])
    z[0, 1, 2:4, 2:4] = torch.tensor([[0.0, -1.0], [-2.0, -3.0]])
    z[0, 1, 2:4, 4:6] = torch.tensor([[1.0, 0.99], [0.0, 0.0]])
    hard = torch.tensor([[[[1, 0, 0], [0, 0, 0]], [[1, 1, 1], [1, 0, 1]]]], dtype=torch.bool)
    soft = torch.tensor([[[[1, 0, 1], [0, 1, 1]], [[1, 1, 1], [1, 0, 1]]]], dtype=torch.bool)
    return z, hard, soft


def test_live_windows_have_a_positive_maximum_reached_once():
    z, hard, soft = windows_with_known_liveness()
    assert torch.equal(live_windows(HARD, z, 2), hard)  # 6 of 12
    assert torch.equal(live_windows(SOFT, z, 2), soft)  # 9 of 12: a tie is no problem for a soft argmax
    assert int(live_windows(HARD, z, 2).sum()) == 6 and int(live_windows(SOFT, z, 2).sum()) == 9
    # rtol=0 asks for exact ties only: the window 1e-6 short of a tie becomes live.
    assert int(live_windows(HARD, z, 2, rtol=0).sum()) == 7


def test_statistics_over_live_windows_leave_the_dead_ones_out():
    z, hard, _ = windows_with_known_liveness()
    _, where = P.hard_pool(z, 2)
    # Live switches (dy, dx): channel 0 (1, 0); channel 1 (0, 0) (0, 1) (1, 0) (1, 1) (0, 0).
    assert torch.equal(switch_histogram(HARD, where, 2, live=hard), torch.tensor([[2.0, 1.0], [2.0, 1.0]]))
    # Over all twelve windows the dead ones pile up at their first maximum: five of six at (0, 0).
    assert torch.equal(switch_histogram(HARD, where, 2), torch.tensor([[7.0, 2.0], [2.0, 1.0]]))
    density = switch_density(HARD, where, 2, (4, 6), live=hard)
    assert density.sum() == 6 and density[0, 1, 0] == 1 and density[0, 0, 4] == 0  # (0, 0) of the tie: dead
    offsets = mean_switch_offset(HARD, where, 2, live=hard)
    assert torch.equal(offsets[0, 0], torch.tensor([0.5, 0.0]))  # channels 0 and 1 both live there
    assert torch.equal(offsets[1, 2], torch.tensor([0.0, 0.0]))  # only channel 1
    assert torch.isnan(offsets[1, 1]).all()  # no live window at that place


def test_live_windows_spread_the_histogram_and_sit_near_the_strokes_on_real_mnist(mnist_batch):
    """On real digits most windows are background, whose switch is a tie-break at (0, 0): counted, they
    hide the histogram in one cell; live windows alone spread over the window, along the strokes."""
    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-MP2-8C3-MP2", 1, SIDE, 10)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(50):
        loss = F.mse_loss(net(mnist_batch).reconstruction, mnist_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with evaluating(net):
        layer = pooling_layers(net, mnist_batch)[0]

    everything = switch_histogram(layer.pooling, layer.where, 2)
    assert everything.argmax() == 0 and everything.max() / everything.sum() > 0.6
    assert layer.histogram.max() / layer.histogram.sum() < 0.6
    assert layer.histogram.sum() == layer.live.sum() and 0.05 < layer.live_share < 0.6

    info = datasets.DATASETS["mnist"]
    backdrop = Backdrop.of((mnist_batch * info.std[0] + info.mean[0]).clamp(0, 1))
    ink = ink_shares(layer, backdrop)
    assert ink["near"] > 2 * ink["near_area"]  # live switches crowd within a pixel of the strokes
    every_switch = switch_density(layer.pooling, layer.where, 2, (SIDE, SIDE))
    near = F.max_pool2d(backdrop.ink[:, None].float(), 3, 1, 1)[:, 0]
    assert (every_switch * near).sum() / every_switch.sum() < ink["near"] - 0.2  # all switches do not


# --- the pictures ------------------------------------------------------------------------------


def test_figure_to_tensor_gives_the_figure_pixels():
    figure = Figure(figsize=(1, 0.5), dpi=40, facecolor=(1.0, 0.0, 0.0))
    picture = figure_to_tensor(figure)
    assert picture.shape == (3, 20, 40) and picture.dtype == torch.float32
    assert torch.equal(picture, torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 20, 40))


def test_sheet_pastes_images_pixel_exact_and_pastes_cached_text_the_same():
    image = np.random.default_rng(0).random((5, 4, 3))
    sheet = Sheet()
    sheet.text(10, 10, "a label", size=10)
    sheet.image(10, 40, image, scale=3, name="cell")
    picture = (sheet.render().permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert sheet.boxes["cell"] == (10, 40, 12, 15)
    expected = (image * 255 + 0.5).astype(np.uint8).repeat(3, axis=0).repeat(3, axis=1)
    assert np.array_equal(cell(picture, sheet.boxes["cell"]), expected)
    assert (picture[10:25, 10:60] < 128).any()  # the text is there
    assert torch.equal(sheet.render(), sheet.render())  # the second time from the text cache, the same pixels


@pytest.mark.parametrize("pooling", ["hard", "soft"])
def test_pictures_are_large_labelled_and_show_the_where_matters(tmp_path, pooling):
    images_dir = tmp_path / "images"
    callbacks = [
        ReconstructionLogger(every_n_epochs=1, num_images=3, out_dir=images_dir),
        SwitchMapLogger(every_n_epochs=1, num_images=3, out_dir=images_dir),
        OverviewLogger(every_n_epochs=1, num_images=3, out_dir=images_dir),
    ]
    module, data = tiny_module(pooling), TinyImages()
    trainer = tiny_trainer(tmp_path, callbacks)
    trainer.validate(module, datamodule=data, verbose=False)
    assert sorted(p.name for p in images_dir.iterdir()) == [
        "overview_epoch000.png",
        "reconstructions_epoch000.png",
        "switches_layer1_epoch000.png",
        "switches_layer2_epoch000.png",
    ]

    # Reconstructions: each cell at least 3x the input, nearest neighbour; four rows of three.
    reconstructions = np.asarray(Image.open(images_dir / "reconstructions_epoch000.png").convert("RGB"))
    scale = cell_scale(SIDE)
    assert scale >= 3
    assert reconstructions.shape[0] > 4 * SIDE * scale and reconstructions.shape[1] > 3 * SIDE * scale
    with evaluating(module):
        boxes = reconstruction_sheet(reconstruct(module.net, data.images[:3], data.to_display), 0).boxes
    for column in range(3):
        shown = cell(reconstructions, boxes[f"rec/0/{column}"])
        assert np.array_equal(shown, upscaled(data.to_display(data.images[column]), scale))
        assert not np.array_equal(
            cell(reconstructions, boxes[f"rec/1/{column}"]), cell(reconstructions, boxes[f"rec/2/{column}"])
        )  # with the where vs copy
    assert trainer.callback_metrics["images/rec_mse_where"] != trainer.callback_metrics["images/rec_mse_copy"]

    # The live share the pictures show, against windows counted here from the network's own maps.
    h, net = data.images[:3], module.net
    for layer, stage in enumerate(net.stages, start=1):
        with torch.no_grad():
            z = stage.encoder(h)
        expected = live_windows(net.pooling, z, 2).float().mean()
        assert 0 < expected < 1
        assert torch.isclose(trainer.callback_metrics[f"images/live_share_layer{layer}"], expected)
        h = net.pooling.pool(z, 2)[0]
        switches = np.asarray(Image.open(images_dir / f"switches_layer{layer}_epoch000.png"))
        assert switches.shape[0] > SIDE * scale * 4 and switches.shape[1] > 3 * SIDE * scale  # density row + 3 images

    overview = np.asarray(Image.open(images_dir / "overview_epoch000.png"))
    assert overview.shape[0] > (4 + 2) * SIDE * scale  # four reconstruction rows and one per pooling layer


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
    callbacks = [
        PutInTrainMode(),
        ReconstructionLogger(every_n_epochs=1, num_images=3, out_dir=tmp_path),
        SwitchMapLogger(every_n_epochs=1, num_images=3, out_dir=tmp_path),
        record,
    ]
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
    trainer = tiny_trainer(
        tmp_path, [ReconstructionLogger(every_n_epochs=1, num_images=2, out_dir=tmp_path)], limit_val_batches=1
    )
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
    callbacks = [
        ReconstructionLogger(every_n_epochs=1, num_images=2, out_dir=images_dir),
        SwitchMapLogger(every_n_epochs=2, num_images=2, out_dir=images_dir),
    ]
    trainer = tiny_trainer(
        tmp_path,
        callbacks,
        logger=RunCSVLogger(tmp_path),
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,
    )
    trainer.fit(tiny_module(), datamodule=TinyImages())

    assert drawn == [(False, 0, torch.device("cpu"), torch.float32), (False, 1, torch.device("cpu"), torch.float32)]
    assert sorted(p.name for p in images_dir.iterdir()) == [
        "reconstructions_epoch000.png",
        "reconstructions_epoch001.png",
        "switches_layer1_epoch001.png",
        "switches_layer2_epoch001.png",
    ]
    with open(tmp_path / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("images/rec_mse_where")]
    assert [row["epoch"] for row in logged] == ["0", "1"]


def test_nothing_is_drawn_off_global_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(pl.Trainer, "is_global_zero", property(lambda self: False))
    callbacks = [
        ReconstructionLogger(every_n_epochs=1, num_images=2, out_dir=tmp_path / "images"),
        SwitchMapLogger(every_n_epochs=1, num_images=2, out_dir=tmp_path / "images"),
    ]
    trainer = tiny_trainer(tmp_path, callbacks, limit_val_batches=1)
    trainer.validate(tiny_module(), datamodule=TinyImages(), verbose=False)
    assert not (tmp_path / "images").exists()
    assert "images/rec_mse_where" not in trainer.callback_metrics


def test_preview_images_follow_the_module_dtype(tmp_path):
    """The previews come as float32; a float64 module must get float64 (a GPU module, its device)."""
    module = tiny_module().double()
    trainer = SimpleNamespace(
        is_global_zero=True, sanity_checking=False, current_epoch=0, global_step=0, datamodule=TinyImages(), loggers=[]
    )
    for callback in (SwitchMapLogger, OverviewLogger):
        callback(every_n_epochs=1, num_images=2, out_dir=tmp_path).on_validation_epoch_end(trainer, module)
    assert (tmp_path / "switches_layer2_epoch000.png").exists() and (tmp_path / "overview_epoch000.png").exists()


# --- where the pictures go ---------------------------------------------------------------------


def test_pictures_reach_wandb_offline_and_tensorboard(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    loggers = [
        WandbLogger(offline=True, save_dir=str(tmp_path), project="swwae-test"),
        TensorBoardLogger(save_dir=str(tmp_path), name="tensorboard", version=""),
    ]
    callbacks = [
        logger(every_n_epochs=1, num_images=2, out_dir=tmp_path / "images")
        for logger in (ReconstructionLogger, SwitchMapLogger, OverviewLogger)
    ]
    try:
        tiny_trainer(tmp_path, callbacks, logger=loggers, limit_val_batches=1).validate(
            tiny_module(), datamodule=TinyImages(), verbose=False
        )
    finally:
        wandb.finish()

    media = [p.name for p in tmp_path.glob("wandb/offline-run-*/files/media/images/**/*.png")]
    for name in ("reconstructions", "switches_layer1", "switches_layer2", "overview"):
        assert any(m.startswith(name) for m in media), (name, media)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert set(events.Tags()["images"]) == {
        "images/reconstructions",
        "images/switches_layer1",
        "images/switches_layer2",
        "images/overview",
    }


def test_every_picture_draws_a_label_topped_decoder_too(tmp_path):
    """With decoder_top="label" the decoder starts from the classifier's softmax (no labels at validation)."""
    torch.manual_seed(0)
    module = SWWAEModule.from_settings(
        "4C3-MP2-8C3-MP2-FC16", in_channels=1, image_size=SIDE, num_classes=10, decoder_top="label", schedule="constant"
    )
    trainer = SimpleNamespace(
        is_global_zero=True, sanity_checking=False, current_epoch=0, global_step=0, datamodule=TinyImages(), loggers=[]
    )
    for callback in (ReconstructionLogger, SwitchMapLogger, OverviewLogger):
        callback(every_n_epochs=1, num_images=2, out_dir=tmp_path).on_validation_epoch_end(trainer, module)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "reconstructions_epoch000.png",
        "switches_layer1_epoch000.png",
        "overview_epoch000.png",
    }
