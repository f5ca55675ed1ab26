"""The semi-supervised protocol: which examples are labeled, and how batches interleave."""

import pytest
import torch

from datamodules.batches import InMemoryBatches, ResumableLoader
from datamodules.sampling import CyclingSampler, EpochSampler
from datamodules.semi_supervised import SemiSupervisedDataModule


def make_dm(dataset, **kwargs) -> SemiSupervisedDataModule:
    args = dict(labels=40, val_size=50, batch_size=16, unlabeled_batch_size=32, seed=0, download=False)
    args.update(kwargs)
    dm = SemiSupervisedDataModule(dataset=dataset, **args)
    dm.setup("fit")
    return dm


def test_labeled_subset_is_balanced_and_seeded(tiny_dataset):
    dm = make_dm(tiny_dataset)
    counts = torch.bincount(dm.splits.train_labels[dm.labeled_indices], minlength=4)
    assert counts.tolist() == [10, 10, 10, 10]
    assert torch.equal(make_dm(tiny_dataset).labeled_indices, dm.labeled_indices)
    assert not torch.equal(make_dm(tiny_dataset, seed=1).labeled_indices, dm.labeled_indices)


def test_validation_labeled_and_unlabeled_sets_are_disjoint_and_cover_the_training_split(tiny_dataset):
    dm = make_dm(tiny_dataset)
    val, labeled, unlabeled = (set(t.tolist()) for t in (dm.val_indices, dm.labeled_indices, dm.unlabeled_pool()))
    assert not (val & labeled) and not (val & unlabeled) and not (labeled & unlabeled)
    assert len(val | labeled | unlabeled) == len(dm.splits.train_labels) == 400
    assert len(val) == 50


def test_split_survives_a_state_dict_round_trip_into_a_module_with_another_seed(tiny_dataset):
    dm = make_dm(tiny_dataset)
    other = make_dm(tiny_dataset, seed=7)
    other.load_state_dict(dm.state_dict())
    assert torch.equal(other.labeled_indices, dm.labeled_indices)
    assert torch.equal(other.val_indices, dm.val_indices)


@pytest.mark.parametrize(
    "labels, message",
    [
        (42, r"labels=42 must be a positive multiple of the 4 classes"),
        (400, r"labels=400 asks for 100 examples of class 0, but the training split \(after validation\) holds only"),
    ],
)
def test_impossible_label_counts_name_the_numbers(tiny_dataset, labels, message):
    with pytest.raises(ValueError, match=message):
        make_dm(tiny_dataset, labels=labels)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dataset="imagenet"), r"dataset='imagenet' is not one of \['cifar10'"),
        (dict(mode="weak"), r"mode='weak' is not one of"),
        (dict(batch_size=0), r"batch_size=0 must be >= 1"),
        (
            dict(augment=False, input_noise=0.1),
            r"input_noise=0.1 is read by augment only; give augment too, or leave input_noise out",
        ),
        (
            dict(augment=False, max_shift=3),
            r"max_shift=3 is read by augment only; give augment too, or leave max_shift out",
        ),
        (
            dict(augment=False, max_rotation=10),
            r"max_rotation=10.0 is read by augment only; give augment too, or leave max_rotation out",
        ),
        (
            dict(augment=False, max_scale=0.1),
            r"max_scale=0.1 is read by augment only; give augment too, or leave max_scale out",
        ),
        (
            dict(augment=False, elastic=1.0),
            r"elastic=1.0 is read by augment only; give augment too, or leave elastic out",
        ),
        (dict(fold=3), r"fold=3 applies only to datasets with predefined folds, not 'tiny'"),
        (dict(val_size=400), r"val_size=400 must be in \[0, 400\)"),
        (dict(labels=None), r"mode='semi' needs labels=N"),
    ],
)
def test_bad_settings_raise_the_promised_message(tiny_dataset, kwargs, message):
    kwargs.setdefault("dataset", tiny_dataset)
    with pytest.raises(ValueError, match=message):
        make_dm(kwargs.pop("dataset"), **kwargs)


def test_training_batches_interleave_labeled_and_unlabeled(tiny_dataset):
    dm = make_dm(tiny_dataset)
    streams = dm.train_streams()
    assert set(streams) == {"labeled", "unlabeled"} and len(streams["labeled"]) == len(streams["unlabeled"])
    (x, y), u = next(iter(streams["labeled"])), next(iter(streams["unlabeled"]))
    batch = dm.on_after_batch_transfer({"labeled": (x, y), "unlabeled": u}, 0)
    assert batch["labeled"][0].shape == (16, 1, 8, 8) and batch["labeled"][0].dtype == torch.float32
    assert batch["labeled"][1].shape == (16,) and batch["unlabeled"].shape[1:] == (1, 8, 8)


def test_one_epoch_shows_every_unlabeled_example_exactly_once():
    plan = EpochSampler(310, 32, seed=0)
    seen = torch.cat(plan.batches())
    assert sorted(seen.tolist()) == list(range(310))
    plan.set_epoch(1)
    assert not torch.equal(torch.cat(plan.batches()), seen)  # reshuffled each epoch


@pytest.mark.parametrize("world_size", [1, 2])
def test_labeled_set_cycles_with_a_new_order_each_cycle_on_every_rank(world_size):
    for rank in range(world_size):
        plan = CyclingSampler(40, 16, num_batches=10, seed=0, rank=rank, world_size=world_size)
        stream = torch.cat(plan.batches())
        per_rank = 40 // world_size
        cycles = stream[: 3 * per_rank].view(3, per_rank)
        for cycle in cycles:  # each cycle is a full pass over this rank's share
            assert len(set(cycle.tolist())) == per_rank
        assert not torch.equal(cycles[0], cycles[1]) and not torch.equal(cycles[1], cycles[2])
        assert plan.cycles_per_epoch == 10 * 16 * world_size / 40


def test_two_ranks_get_disjoint_shards_and_the_same_number_of_steps():
    plans = [EpochSampler(301, 32, seed=0, rank=r, world_size=2) for r in range(2)]
    shards = [torch.cat(p.batches()) for p in plans]
    assert len(plans[0].batches()) == len(plans[1].batches()) == len(plans[0])
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert sorted(torch.cat(shards).tolist()) == list(range(301))
    labeled = [CyclingSampler(40, 8, num_batches=len(plans[0]), seed=0, rank=r, world_size=2) for r in range(2)]
    first_cycle = [set(torch.cat(p.batches())[:20].tolist()) for p in labeled]
    assert not first_cycle[0] & first_cycle[1]


def test_modes_choose_the_streams(tiny_dataset):
    assert set(make_dm(tiny_dataset, mode="supervised", labels=None).train_streams()) == {"labeled"}
    supervised_all = make_dm(tiny_dataset, mode="supervised", labels=None)
    assert len(supervised_all.labeled_indices) == 350  # every label outside validation
    assert set(make_dm(tiny_dataset, mode="unsupervised", labels=None).train_streams()) == {"unlabeled"}


def test_loader_resumes_mid_epoch_without_replaying_or_skipping():
    data = InMemoryBatches(torch.arange(100).view(100, 1, 1, 1))
    full = [b.flatten().tolist() for b in ResumableLoader(data, EpochSampler(100, 10, seed=3))]
    loader = ResumableLoader(data, EpochSampler(100, 10, seed=3))
    it = iter(loader)
    first = [next(it).flatten().tolist() for _ in range(4)]
    for _ in first:
        loader.mark_consumed()
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches_consumed": 4}
    resumed = ResumableLoader(data, EpochSampler(100, 10, seed=3))
    resumed.load_state_dict(state)
    rest = [b.flatten().tolist() for b in resumed]
    assert first + rest == full
    assert len([b for b in resumed]) == 10  # the next pass starts from the beginning


def test_state_does_not_count_batches_the_consumer_prefetched_but_has_not_used():
    data = InMemoryBatches(torch.arange(100).view(100, 1, 1, 1))
    loader = ResumableLoader(data, EpochSampler(100, 10, seed=3))
    it = iter(loader)
    for _ in range(5):  # fetched five, used four: the fifth is the one a training loop holds ahead
        next(it)
    for _ in range(4):
        loader.mark_consumed()
    assert loader.state_dict()["batches_consumed"] == 4


def _square_offsets(images: torch.Tensor) -> set[tuple[int, int]]:
    """Where the top-left corner of the bright square went, relative to (3, 3), image by image."""
    return {tuple((img[0] > img.min()).nonzero()[0].sub(3).tolist()) for img in images}


def test_augmentation_is_batched_seeded_and_shifts_whole_images(tiny_dataset):
    dm = make_dm(tiny_dataset)
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 3:5, 3:5] = 255
    a = dm.on_after_batch_transfer({"unlabeled": x}, 0)["unlabeled"]
    b = dm.on_after_batch_transfer({"unlabeled": x}, 0)["unlabeled"]
    assert torch.equal(a, b)  # same step, same seed: same shifts (resume-exact)
    bright = (a > a.min()).flatten(1).sum(1)
    assert torch.all(bright == 4)  # the 2x2 square moves as a whole (max shift 1 px on 8 px)
    assert len(_square_offsets(a)) > 1


@pytest.mark.parametrize("max_shift, expected", [(None, 1), (0, 0), (3, 3)])
def test_max_shift_bounds_the_random_shift(tiny_dataset, max_shift, expected):
    dm = make_dm(tiny_dataset, max_shift=max_shift)
    x = torch.zeros(256, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 3:5, 3:5] = 255
    offsets = _square_offsets(dm.on_after_batch_transfer({"unlabeled": x}, 0)["unlabeled"])
    reach = range(-expected, expected + 1)
    assert offsets == {(dy, dx) for dy in reach for dx in reach}  # every shift in range is drawn, none beyond


def test_input_noise_perturbs_training_views_only_and_is_seeded(tiny_dataset):
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    y = torch.zeros(64, dtype=torch.long)
    plain = make_dm(tiny_dataset).on_after_batch_transfer({"unlabeled": x}, 0)["unlabeled"]
    noisy_dm = make_dm(tiny_dataset, input_noise=0.5)
    noisy = noisy_dm.on_after_batch_transfer({"unlabeled": x}, 0)["unlabeled"]
    assert torch.equal(noisy, noisy_dm.on_after_batch_transfer({"unlabeled": x}, 0)["unlabeled"])
    difference = noisy - plain  # the same shifts as without noise, then the noise on top
    assert abs(difference.std().item() - 0.5) < 0.02 and abs(difference.mean().item()) < 0.02
    evaluated, _ = noisy_dm.on_after_batch_transfer((x, y), 0)
    assert torch.equal(evaluated, make_dm(tiny_dataset).on_after_batch_transfer((x, y), 0)[0])


def _bar_pose(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's bright mass and the angle of its long axis in degrees (counterclockwise as seen, from
    second moments): a zoom by s multiplies the mass by s^2, a rotation moves the axis."""
    b, _, h, w = views.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    mass = views[:, 0].double()
    total = mass.sum((1, 2))
    cy, cx = ((mass * c).sum((1, 2)) / total for c in (ys, xs))
    dy, dx = ys - cy.view(b, 1, 1), xs - cx.view(b, 1, 1)
    cxx, cyy, cxy = ((mass * m).sum((1, 2)) / total for m in (dx * dx, dy * dy, dx * dy))
    return total, torch.rad2deg(0.5 * torch.atan2(-2 * cxy, cxx - cyy))


def _weak_views(dm, images: torch.Tensor) -> torch.Tensor:
    return dm.to_display(dm.on_after_batch_transfer({"unlabeled": images}, 0)["unlabeled"])


def _horizontal_bar(n: int) -> torch.Tensor:
    x = torch.zeros(n, 1, 33, 33, dtype=torch.uint8)
    x[:, :, 15:18, 6:27] = 255  # 21 x 3 about the centre
    return x


def test_max_rotation_turns_weak_views_within_the_bound_either_way_and_nothing_else(tiny_dataset):
    x = _horizontal_bar(512)
    plain_mass, plain_angle = _bar_pose(_weak_views(make_dm(tiny_dataset, max_shift=0), x))
    assert torch.allclose(plain_angle, torch.zeros(512, dtype=torch.float64), atol=1e-6)
    dm = make_dm(tiny_dataset, max_shift=0, max_rotation=30)
    turned = _weak_views(dm, x)
    assert torch.equal(turned, _weak_views(dm, x))  # seeded by the step: resume-exact
    mass, angle = _bar_pose(turned)
    assert torch.allclose(mass, plain_mass, rtol=0.03)  # turned, not zoomed or cut
    assert angle.abs().max() <= 31 and angle.min() < -25 and angle.max() > 25  # the whole range, no further
    y = torch.zeros(512, dtype=torch.long)
    evaluated, _ = dm.on_after_batch_transfer((x, y), 0)
    assert torch.equal(evaluated, make_dm(tiny_dataset, max_shift=0).on_after_batch_transfer((x, y), 0)[0])


def test_max_scale_zooms_weak_views_by_factors_within_the_bound(tiny_dataset):
    x = _horizontal_bar(512)
    plain_mass, _ = _bar_pose(_weak_views(make_dm(tiny_dataset, max_shift=0), x))
    mass, angle = _bar_pose(_weak_views(make_dm(tiny_dataset, max_shift=0, max_scale=0.25), x))
    zoom = (mass / plain_mass).sqrt()
    assert zoom.min() > 0.73 and zoom.max() < 1.27 and zoom.min() < 0.8 and zoom.max() > 1.2
    assert torch.allclose(angle, torch.zeros(512, dtype=torch.float64), atol=1e-6)  # zoomed, not turned


def test_elastic_displaces_weak_views_by_about_the_given_pixels_smoothly_and_leaves_evaluation_alone(tiny_dataset):
    pos = torch.arange(33)
    x = (7 * pos).to(torch.uint8).expand(256, 1, 33, 33).clone()  # a ramp: bilinear sampling reads it exactly
    plain = _weak_views(make_dm(tiny_dataset, max_shift=0), x) * 255 / 7  # each pixel's own column
    assert torch.allclose(plain, pos.float().expand_as(plain), atol=1e-4)
    dm = make_dm(tiny_dataset, max_shift=0, elastic=1.5)
    warped = _weak_views(dm, x)
    assert torch.equal(warped, _weak_views(dm, x))  # seeded by the step: resume-exact
    dx = (warped * 255 / 7 - plain)[..., 8:-8, 8:-8]  # the horizontal displacement, away from the zero border
    assert 1.2 < dx.pow(2).mean().sqrt() < 1.8
    assert (dx[..., 1:] * dx[..., :-1]).mean() / dx.pow(2).mean() > 0.9  # neighbours move alike: smooth
    y = torch.zeros(256, dtype=torch.long)
    evaluated, _ = dm.on_after_batch_transfer((x, y), 0)
    assert torch.equal(evaluated, make_dm(tiny_dataset, max_shift=0).on_after_batch_transfer((x, y), 0)[0])


def _strong_views(dataset, images: torch.Tensor, **settings) -> torch.Tensor:
    dm = SemiSupervisedDataModule(
        views=("strong",), dataset=dataset, labels=40, val_size=50, seed=0, download=False, **settings
    )
    return dm.to_display(dm.on_after_batch_transfer({"unlabeled": images}, 0)["views"]["strong"])


@pytest.mark.parametrize("fraction, side", [(0.25, 2), (0.5, 4), (1.0, 8)])
def test_strong_cutout_sets_the_side_of_the_square_the_strong_view_loses_and_changes_nothing_else(
    tiny_dataset, fraction, side
):
    white = torch.full((256, 1, 8, 8), 255, dtype=torch.uint8)
    uncut = _strong_views(tiny_dataset, white, strong_cutout=0.0)
    cut = _strong_views(tiny_dataset, white, strong_cutout=fraction)
    lost = (cut != uncut)[:, 0]  # (B, H, W)
    assert cut[:, 0][lost].abs().max() < 1e-6  # what differs is blacked out
    for hit in (lost.any(2), lost.any(1)):  # rows, then columns, holding a change: within one side-wide band
        first, last = hit.int().argmax(1), hit.shape[1] - 1 - hit.flip(1).int().argmax(1)
        assert ((last - first + 1)[hit.any(1)] <= side).all()  # the same distortions everywhere else
    assert lost.flatten(1).sum(1).max() == side * side  # the whole square where it lies on the lit image
    if fraction == 0.5:
        assert torch.equal(cut, _strong_views(tiny_dataset, white))  # the default


def test_a_strong_cutout_without_a_term_that_uses_the_strong_view_is_refused(tiny_dataset):
    with pytest.raises(ValueError, match=r"--strong-cutout 0.25 shapes the strong view, which no loss term here"):
        make_dm(tiny_dataset, strong_cutout=0.25)
    make_dm(tiny_dataset, strong_cutout=0.5)  # the default value is no request


def test_preview_images_are_fixed_and_displayable(tiny_dataset):
    dm = make_dm(tiny_dataset)
    first = dm.preview_images(5)
    assert torch.equal(first, dm.preview_images(5)) and first.shape == (5, 1, 8, 8)
    shown = dm.to_display(first)
    assert shown.min() >= 0 and shown.max() <= 1
    assert torch.allclose(shown * 255, dm.splits.train_images[dm.val_indices[:5]].float(), atol=1e-3)


def test_every_data_setting_is_a_typed_keyword_of_the_datamodule_with_its_default():
    """help(SemiSupervisedDataModule) and an IDE show each data option: the settings read their defaults there."""
    import inspect

    from swwae_lightning import settings

    parameters = inspect.signature(SemiSupervisedDataModule).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for name in [*settings.names_in(["data"]), "seed"]:
        assert parameters[name].default == settings.SETTINGS[name].default, name
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    with pytest.raises(TypeError, match="'lr'"):
        SemiSupervisedDataModule(lr=0.1)  # not a data setting: Python's own error names it
