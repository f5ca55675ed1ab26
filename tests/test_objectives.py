"""The objectives beside SWWAE's own: the label-topped decoder, FixMatch, the mean teacher, the what-where swap,
virtual adversarial training, entropy minimization."""

import csv
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import train
from orchestration import plugins
from orchestration.training import build_datamodule, build_module
from swwae_lightning import settings as S
from swwae_lightning.network import StackedWhatWhere
from swwae_lightning.objectives import (
    TERMS,
    Consistency,
    EntropyMinimization,
    FixMatch,
    Objective,
    VirtualAdversarial,
    WhatWhereSwap,
    confident_pseudo_labels,
    views_needed,
)
from swwae_lightning.objectives.virtual_adversarial import adversarial_direction, kl_from, unit_rows

plugins.declare_all_settings()


def tiny_config(dataset: str, tmp_path, **overrides) -> dict:
    return {
        **S.defaults(),
        "dataset": dataset,
        "data_dir": str(tmp_path / "data"),
        "labels": 40,
        "val_size": 50,
        "batch_size": 8,
        "unlabeled_batch_size": 16,
        "arch": "4C3-BN-MP2-8C3-MP2-FC16",
        "download": False,
        **overrides,
    }


# ----------------------------------------------------------------------------- the label-topped decoder
def test_label_topped_decoder_starts_from_the_one_hot_label_or_the_softmax_and_mirrors_the_classifier():
    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-MP2-8C3-MP2-FC16", 1, 8, 3, decoder_top="label")
    linears = [m for m in net.top_decoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 16), (16, 8 * 2 * 2)]  # the head, mirrored
    x, labels = torch.randn(5, 1, 8, 8), torch.tensor([2, 0])
    out = net(x, labels)
    assert out.reconstruction.shape == x.shape and not out.top_is_copy
    top = out.decoder_states[-1]
    assert top.shape == out.encoder_states[-1].shape
    assert torch.allclose(top[:2], net.top_decoder(F.one_hot(labels, 3).float()).view(2, 8, 2, 2))
    assert torch.allclose(top[2:], net.top_decoder(F.softmax(out.logits[2:], dim=1)).view(3, 8, 2, 2))
    # the top pair now carries a loss: every stage's h_l is compared with its reconstruction
    assert len(out.reconstruction_pairs()) == len(out.encoder_states) == 2


@pytest.mark.parametrize("top, reaches_classifier", [("label", True), ("what", False)])
def test_the_reconstruction_of_an_unlabeled_row_trains_the_classifier_only_through_the_label_top(
    top, reaches_classifier
):
    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-MP2-8C3-MP2-FC16", 1, 8, 3, decoder_top=top)
    x = torch.randn(3, 1, 8, 8)
    out = net(x, torch.tensor([1]))
    F.mse_loss(out.reconstruction[2:], x[2:]).backward()  # an unlabeled row's reconstruction only
    grad = net.head[-1].weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == reaches_classifier


# ----------------------------------------------------------------------------- each term
def fake_step(**logits) -> SimpleNamespace:
    teacher = logits.pop("teacher", None)
    return SimpleNamespace(logits=lambda name: logits[name], teacher_logits=lambda name: teacher, metrics={})


def test_fixmatch_mask_keeps_exactly_the_rows_at_or_above_the_threshold():
    probs = torch.tensor([[0.96, 0.04], [0.90, 0.10], [0.05, 0.95], [0.5, 0.5]])
    labels, mask = confident_pseudo_labels(probs.log(), 0.95)
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0] and labels[[0, 2]].tolist() == [0, 1]
    assert confident_pseudo_labels(probs.log(), 0.5)[1].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_fixmatch_is_zero_when_the_strong_view_agrees_and_positive_when_it_does_not():
    term = FixMatch(fixmatch_threshold=0.95)
    weak = torch.tensor([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [1.0, 1.1, 1.0]])  # two confident rows, one not
    agree = fake_step(unlabeled=weak, strong=weak.clone())
    assert term(agree) == pytest.approx(0.0, abs=1e-6)
    assert agree.metrics["fixmatch_mask"] == pytest.approx(2 / 3)
    disagree = fake_step(unlabeled=weak, strong=weak[[1, 0, 2]])
    assert term(disagree) > 10  # the confident rows' classes swapped
    only_unconfident = fake_step(unlabeled=weak[2:], strong=-weak[2:])
    assert term(only_unconfident) == 0  # below the threshold nothing is trained on


def test_consistency_is_zero_when_student_and_teacher_agree_and_positive_when_they_do_not():
    term = Consistency(ema_decay=0.9)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.5, 0.0]])
    assert term(fake_step(unlabeled=logits, teacher=logits.clone())) == 0
    assert term(fake_step(unlabeled=logits, teacher=logits.flip(1))) > 0.1


def test_the_consistency_weight_warms_up_linearly_over_its_share_of_training():
    warm = Consistency(consistency_warmup=0.4)
    assert [warm.weight_scale(p) for p in (0.0, 0.1, 0.2, 0.4, 0.9, 1.0)] == [0.0, 0.25, 0.5, 1.0, 1.0, 1.0]
    assert [Consistency().weight_scale(p) for p in (0.0, 0.5)] == [1.0, 1.0]  # default: no warm-up


def test_a_warming_term_adds_its_scaled_weight_and_no_gradient_at_the_first_step():
    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-MP2-FC16", 1, 8, 3)
    teacher = torch.optim.swa_utils.AveragedModel(net)
    batch = {
        "labeled": (torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])),
        "unlabeled": torch.rand(6, 1, 8, 8),
        "views": {"second": torch.rand(6, 1, 8, 8)},
    }
    objective = Objective.from_settings(lambda_rec=0, lambda_mid=0, lambda_consistency=3.0, consistency_warmup=0.5)
    for progress, scale in ((0.0, 0.0), (0.25, 0.5), (0.75, 1.0)):
        parts = objective(net, batch, teacher, progress=progress)
        assert torch.allclose(parts.total, parts.terms["nll"] + 3.0 * scale * parts.terms["consistency"])
    assert not objective(net, batch, teacher, progress=0.0).terms["consistency"].requires_grad


def one_pixel_images(*positions) -> torch.Tensor:
    images = torch.zeros(len(positions), 1, 4, 4)
    for i, (row, col) in enumerate(positions):
        images[i, 0, row, col] = 1.0
    return images


def identity_network(**settings) -> StackedWhatWhere:
    """1x1 convs of weight 1: the reconstruction is exactly the max unpooled at its switch."""
    net = StackedWhatWhere("1C1-MP2", 1, 4, 2, **settings)
    for conv in (net.stages[0].encoder[0][0], net.stages[0].decoder[0][0]):
        conv.weight.data.fill_(1.0)
        conv.bias.data.zero_()
    return net


def test_swap_is_zero_when_a_shift_stays_inside_the_window_and_positive_when_the_what_moves():
    """The claim the term is built on: within a window the what is the same and the where carries the shift."""
    net, term = identity_network(), WhatWhereSwap()
    objective = Objective.from_settings(lambda_swap=1.0)
    first = one_pixel_images((0, 0))
    for second, expected_zero in ((one_pixel_images((1, 1)), True), (one_pixel_images((0, 2)), False)):
        step = objective.context(net, {"unlabeled": first, "views": {"second": second}})
        value = term(step)
        assert (value == 0) == expected_zero, (second, value)


# ----------------------------------------------------------------------------- views and passes
@pytest.mark.parametrize(
    "weights, views",
    [
        ({}, ()),
        ({"lambda_fixmatch": 1.0}, ("strong",)),
        ({"lambda_consistency": 1.0}, ("second",)),
        ({"lambda_swap": 1.0}, ("second",)),
        ({"lambda_fixmatch": 1.0, "lambda_swap": 1.0}, ("strong", "second")),
    ],
)
def test_extra_views_are_asked_for_only_by_the_terms_that_need_them(weights, views):
    assert views_needed({**S.defaults(), **weights}) == views


def test_the_datamodule_draws_extra_views_only_when_asked_and_leaves_the_other_batches_as_they_were(
    tiny_dataset, tmp_path
):
    plain = build_datamodule(tiny_config(tiny_dataset, tmp_path))
    with_views = build_datamodule(tiny_config(tiny_dataset, tmp_path, lambda_fixmatch=1.0, lambda_consistency=1.0))
    batches = []
    for dm in (plain, with_views):
        dm.setup("fit")
        raw, _, _ = next(iter(dm.train_dataloader()))
        batches.append(dm.on_after_batch_transfer(raw, 0))
    assert "views" not in batches[0]
    assert set(batches[1]["views"]) == {"strong", "second"}
    assert torch.equal(batches[0]["unlabeled"], batches[1]["unlabeled"])  # same draws for the weak views
    assert torch.equal(batches[0]["labeled"][0], batches[1]["labeled"][0])
    strong, second = batches[1]["views"]["strong"], batches[1]["views"]["second"]
    assert strong.shape == second.shape == batches[1]["unlabeled"].shape
    assert not torch.equal(second, batches[1]["unlabeled"]) and not torch.equal(strong, second)


def test_the_baseline_never_runs_the_decoder_and_fixmatch_alone_encodes_in_one_pass(monkeypatch):
    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-MP2-8C3-MP2-FC16", 1, 8, 3)
    monkeypatch.setattr(net, "forward", lambda *a, **k: pytest.fail("the decoder ran"))
    encoded = []
    original = net.encode
    monkeypatch.setattr(net, "encode", lambda x: encoded.append(len(x)) or original(x))
    x = torch.randn(6, 1, 8, 8)
    batch = {"labeled": (x[:2], torch.tensor([0, 1])), "unlabeled": x[2:], "views": {"strong": x[2:] + 1}}
    loss = Objective.from_settings(lambda_rec=0, lambda_mid=0)(net, batch)
    assert set(loss.terms) == {"nll"} and encoded == [2]
    loss = Objective.from_settings(lambda_rec=0, lambda_mid=0, lambda_fixmatch=1)(net, batch)
    assert set(loss.terms) == {"nll", "fixmatch"} and encoded[1:] == [2 + 4 + 4]  # labeled, weak, strong together


# ----------------------------------------------------------------------------- the mean teacher
class RecordWeights(pl.Callback):
    def __init__(self):
        self.before_each_step = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before_each_step.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})


def test_the_ema_teacher_equals_the_closed_form_average_after_k_steps(tiny_dataset, tmp_path):
    decay, k = 0.8, 5
    cfg = tiny_config(tiny_dataset, tmp_path, lambda_consistency=1.0, ema_decay=decay, schedule="constant")
    module, datamodule, record = build_module(cfg), build_datamodule(cfg), RecordWeights()
    pl.Trainer(
        max_steps=k,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[record],
    ).fit(module, datamodule=datamodule)
    # Step t takes in the weights theta_t the previous steps made: theta_0 is copied, then each is averaged in.
    thetas = record.before_each_step
    assert len(thetas) == k
    teacher = module.teacher.module.state_dict()
    for name, value in teacher.items():
        if not value.is_floating_point():
            continue
        expected = decay ** (k - 1) * thetas[0][name].double()
        for t in range(1, k):
            expected = expected + (1 - decay) * decay ** (k - 1 - t) * thetas[t][name].double()
        assert torch.allclose(value.double(), expected, atol=1e-6), name
    assert not torch.equal(teacher["head.5.weight"], module.net.state_dict()["head.5.weight"])
    assert not any(p.requires_grad for p in module.teacher.parameters())  # the optimizer never sees it


def test_the_module_gives_the_objective_the_share_of_steps_taken(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path, lambda_consistency=1.0, consistency_warmup=0.5, schedule="constant")
    module, datamodule, seen = build_module(cfg), build_datamodule(cfg), []
    call = module.objective.__call__
    module.objective = lambda *args, progress, **kwargs: (
        seen.append(progress) or call(*args, progress=progress, **kwargs)
    )
    pl.Trainer(
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    ).fit(module, datamodule=datamodule)
    assert seen == [0.0, 0.25, 0.5, 0.75]
    assert module._progress() == 1.0  # outside a fit (evaluation, the benchmark): full weights


# ----------------------------------------------------------------------------- through train.py
def test_a_fixmatch_run_logs_the_mask_share_and_the_pseudo_labels_validation_accuracy(tmp_path, tiny_dataset):
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
                "--lambda-rec",
                "0",
                "--lambda-mid",
                "0",
                "--lambda-fixmatch",
                "1",
                "--fixmatch-threshold",
                "0.3",
                "--max-epochs",
                "2",
                "--log-every",
                "1",
                "--logger",
                "csv",
                "--run-dir",
                str(run_dir),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    masks = [float(r["train/fixmatch_mask"]) for r in rows if r.get("train/fixmatch_mask")]
    shares = [float(r["val/fixmatch_pseudo_share"]) for r in rows if r.get("val/fixmatch_pseudo_share")]
    accuracies = [float(r["val/fixmatch_pseudo_acc"]) for r in rows if r.get("val/fixmatch_pseudo_acc")]
    assert masks and all(0 <= m <= 1 for m in masks) and any(m > 0 for m in masks)
    assert len(shares) == len(accuracies) == 2 and all(0 <= v <= 1 for v in shares + accuracies)


def test_every_registered_term_has_a_weight_flag_and_reports_under_its_name():
    flags = {s.option for s in S.SETTINGS.values()}
    for term in TERMS:
        assert term.weight.option in flags and term.weight.group == "objectives"
        assert all(s.group == "objectives" for s in term.settings)


def test_the_module_and_its_objective_are_built_from_parts_and_their_flat_settings_rebuild_them():
    import inspect

    from swwae_lightning.module import SWWAEModule

    objective = Objective({FixMatch(fixmatch_threshold=0.9): 1.0, VirtualAdversarial(): 0.5})
    assert objective.computed == ["fixmatch", "vat"] and objective.views == ("strong",)
    flat = objective.settings()
    assert flat["lambda_fixmatch"] == 1.0 and flat["fixmatch_threshold"] == 0.9 and flat["lambda_vat"] == 0.5
    assert flat["lambda_rec"] == 0.0  # a registered term it lacks is off
    assert Objective.from_settings(**flat).settings() == flat
    assert Objective().computed == [] and Objective.from_settings().computed == ["rec", "mid"]  # the NLL; SWWAE's
    with pytest.raises(ValueError, match="fixmatch_treshold"):
        FixMatch(fixmatch_treshold=0.9)
    with pytest.raises(ValueError, match="lambda_vat"):
        Objective({VirtualAdversarial(): -1.0})

    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-MP2-FC8", 1, 8, 3, pooling="soft")
    module = SWWAEModule(net, objective, lr=1e-3)
    torch.manual_seed(0)
    rebuilt = SWWAEModule.from_settings(**module.hparams)
    assert dict(rebuilt.hparams) == dict(module.hparams) and module.hparams["pooling"] == "soft"
    assert module.hparams["lr"] == 1e-3 and rebuilt.objective.settings() == flat
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), rebuilt.state_dict().values()))
    signature = inspect.signature(SWWAEModule).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
    for name in ("lr", "weight_decay", "schedule", "freeze_encoder"):
        assert signature[name].default == S.SETTINGS[name].default  # the flag's default is read from there
    with pytest.raises(ValueError, match="open_set_heads=True"):
        SWWAEModule(net, Objective.from_settings(lambda_ova=1.0))


@pytest.mark.parametrize("eval_teacher", [False, True])
def test_eval_teacher_validates_and_tests_the_ema_weights_instead_of_the_students(tiny_dataset, tmp_path, eval_teacher):
    cfg = tiny_config(
        tiny_dataset, tmp_path, lambda_consistency=1.0, ema_decay=0.5, eval_teacher=eval_teacher, schedule="constant"
    )
    module, datamodule = build_module(cfg), build_datamodule(cfg)
    trainer = pl.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=datamodule)
    measured = module.teacher.module if eval_teacher else module.net
    other = module.net if eval_teacher else module.teacher.module
    assert module.evaluated_net is measured
    x, y = datamodule.on_after_batch_transfer(next(iter(datamodule.test_dataloader())), 0)  # normalized
    measured.eval(), other.eval()
    with torch.no_grad():
        expected = 1 - (measured.encode(x).argmax(1) == y).float().mean().item()
        assert not torch.equal(measured.encode(x), other.encode(x))  # the two networks answer differently
    tested = trainer.test(module, dataloaders=DataLoader(TensorDataset(x, y), batch_size=len(x)), verbose=False)[0][
        "test/error"
    ]
    assert tested == pytest.approx(expected)


# ----------------------------------------------------------------------------- virtual adversarial training
def vat_step(net, images) -> SimpleNamespace:
    return SimpleNamespace(net=net, unlabeled=images, logits=lambda name: net.encode(images))


def test_the_adversarial_direction_moves_the_prediction_more_than_random_directions_of_the_same_size():
    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-MP2-FC16", 1, 8, 3).eval()
    images = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        target = net.encode(images)
    direction = adversarial_direction(net, images, target)
    assert torch.allclose(direction.flatten(1).norm(dim=1), torch.ones(16))
    with torch.no_grad():
        adversarial = kl_from(target, net.encode(images + 0.5 * direction))
        randoms = [kl_from(target, net.encode(images + 0.5 * unit_rows(torch.randn_like(images)))) for _ in range(20)]
    assert adversarial > 3 * max(randoms)


def test_vat_grows_with_its_radius_and_trains_the_network_on_the_perturbed_pass_only():
    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-MP2-FC16", 1, 8, 3)
    images = torch.randn(16, 1, 8, 8)
    small, large = (VirtualAdversarial(vat_epsilon=e)(vat_step(net, images)) for e in (1e-3, 2.0))
    assert 0 <= small < 1e-5 < large
    large.backward()
    assert all(p.grad is not None for p in net.head.parameters())


def test_the_vat_divergence_is_never_negative_when_two_predictions_all_but_agree():
    # Unclamped, about half of these rounded sums come out a few ulps below zero, on any vector unit.
    torch.manual_seed(0)
    clean = torch.randn(200, 16, 10)
    divergences = [kl_from(a, a + 1e-7 * torch.randn_like(a)) for a in clean]
    assert min(d.item() for d in divergences) == 0.0
    assert max(d.item() for d in divergences) < 1e-6


def test_vat_leaves_batch_norm_running_statistics_as_the_clean_pass_left_them():
    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-BN-MP2-FC16", 1, 8, 3).train()
    images = torch.randn(16, 1, 8, 8) + 3.0
    step = vat_step(net, images)
    target = step.logits("unlabeled")  # the clean pass updates the statistics, as any training step does
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in norms]
    step.logits = lambda name: target
    VirtualAdversarial(vat_epsilon=5.0)(step)
    after = [(m.running_mean, m.running_var, int(m.num_batches_tracked)) for m in norms]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] for a, b in zip(after, before))
    assert all(m.track_running_stats for m in norms)  # switched back on


def test_a_vat_run_asks_for_no_extra_view_and_trains_through_the_module(tiny_dataset, tmp_path):
    assert views_needed({"lambda_vat": 1.0}) == ()
    cfg = tiny_config(tiny_dataset, tmp_path, lambda_vat=1.0, vat_epsilon=2.0, lambda_rec=0, lambda_mid=0)
    module = build_module(cfg)
    assert "vat" in module.objective.computed
    trainer = pl.Trainer(
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, datamodule=build_datamodule(cfg))
    assert trainer.global_step == 3


# ----------------------------------------------------------------------------- entropy minimization
def test_entropy_minimization_is_the_mean_entropy_in_nats_of_the_unlabeled_predictions():
    term = EntropyMinimization()
    uniform, confident = torch.zeros(2, 4), torch.tensor([[50.0, 0.0, 0.0, 0.0]])
    assert term(fake_step(unlabeled=uniform)) == pytest.approx(torch.log(torch.tensor(4.0)).item())
    assert term(fake_step(unlabeled=confident)) == pytest.approx(0.0, abs=1e-12)
    mixed = torch.tensor([[0.0, 0.0, -1e4, -1e4], [50.0, 0.0, 0.0, 0.0]])  # ln 2 and 0
    assert term(fake_step(unlabeled=mixed)) == pytest.approx(0.5 * torch.log(torch.tensor(2.0)).item())


def test_steps_on_the_entropy_term_make_the_unlabeled_predictions_more_confident_without_labels():
    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-MP2-FC16", 1, 8, 3)
    images = torch.randn(32, 1, 8, 8)
    step = SimpleNamespace(logits=lambda name: net.encode(images))
    term, optimizer = EntropyMinimization(), torch.optim.SGD(net.parameters(), lr=0.5)
    before = term(step).item()
    for _ in range(20):
        optimizer.zero_grad()
        term(step).backward()
        optimizer.step()
    assert term(step).item() < 0.5 * before


def test_an_entropy_minimization_run_asks_for_no_extra_view_and_trains_through_the_module(tiny_dataset, tmp_path):
    assert views_needed({"lambda_entmin": 1.0}) == ()
    cfg = tiny_config(tiny_dataset, tmp_path, lambda_entmin=1.0, lambda_vat=1.0, lambda_rec=0, lambda_mid=0)
    module = build_module(cfg)
    assert {"entmin", "vat"} <= set(module.objective.computed)
    trainer = pl.Trainer(
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, datamodule=build_datamodule(cfg))
    assert trainer.global_step == 3
