"""One-vs-all heads: what they learn, and that an image they call unknown pulls no class toward it."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_run
from torch.optim.swa_utils import AveragedModel

import train
from orchestration import plugins
from orchestration.predict import image_scores, score_to_use
from swwae_lightning.module import SWWAEModule
from swwae_lightning.network import StackedWhatWhere
from swwae_lightning.objectives import Objective
from swwae_lightning.objectives.open_set import head_disagreement, head_entropy, known_probability, labeled_loss

plugins.declare_all_settings()

ARCH, CLASSES = "4C3-MP2-FC16", 3


def heads_network(seed: int = 0) -> StackedWhatWhere:
    torch.manual_seed(seed)
    return StackedWhatWhere(ARCH, 1, 8, CLASSES, open_set_heads=True).eval()


def test_the_heads_are_built_only_when_asked_and_leave_the_classifier_as_it_was():
    x = torch.randn(5, 1, 8, 8)
    net = heads_network()
    logits, open_set = net.encode_open(x)
    assert open_set.shape == (5, 2, CLASSES)
    assert torch.equal(logits, net.encode(x)) and torch.equal(net(x).logits, logits)
    assert torch.equal(net(x).open_set_logits, open_set)
    plain = StackedWhatWhere(ARCH, 1, 8, CLASSES)
    assert not any(k.startswith("open_set") for k in plain.state_dict()) and plain.encode_open(x)[1] is None
    assert Objective.from_settings(lambda_ova=1.0).needs_open_set and not Objective().needs_open_set
    assert SWWAEModule.from_settings(ARCH, 1, 8, CLASSES, lambda_ova=1.0).net.open_set is not None
    assert SWWAEModule.from_settings(ARCH, 1, 8, CLASSES).net.open_set is None


def test_the_labeled_loss_asks_the_own_head_for_yes_and_the_most_mistaken_other_head_for_no():
    # one image of class 1; heads as (not of it, of it) logits
    open_set = torch.tensor([[[0.0, 2.0, 1.0], [1.0, 0.0, 3.0]]])  # (1, 2, 3)
    p_of = F.softmax(open_set, dim=1)[0, 1]  # of each class: sigmoid(of - not of)
    expected = -math.log(p_of[1]) + max(-math.log(1 - p_of[0]), -math.log(1 - p_of[2]))
    assert labeled_loss(open_set, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)
    sure = torch.tensor([[[9.0, -9.0, 9.0], [-9.0, 9.0, -9.0]]])  # class 1 yes, the others no
    assert labeled_loss(sure, torch.tensor([1])).item() < 1e-6 < labeled_loss(sure, torch.tensor([0])).item()


def test_the_unlabeled_parts_are_zero_only_for_sure_heads_and_views_that_agree():
    sure, unsure = torch.tensor([[[9.0], [-9.0]]]), torch.zeros(1, 2, 1)
    assert head_entropy(sure).item() < 1e-3 and head_entropy(unsure).item() == pytest.approx(math.log(2))
    assert head_disagreement(sure, sure).item() == 0 and head_disagreement(sure, -sure).item() > 1.9


def with_heads_saying(net: StackedWhatWhere, unknown_class: int) -> None:
    """Every image the classifier gives ``unknown_class`` is "not of it"; every other image is "of" its class."""
    with torch.no_grad():
        net.open_set.weight.zero_()
        bias = torch.tensor([[-5.0] * CLASSES, [5.0] * CLASSES])
        bias[:, unknown_class] = torch.tensor([5.0, -5.0])
        net.open_set.bias.copy_(bias.flatten())


def mixed_batch(net: StackedWhatWhere) -> tuple[dict, torch.Tensor]:
    """A batch whose unlabeled rows the classifier gives to one class (then called unknown) and to others."""
    g = torch.Generator().manual_seed(1)
    labeled = (torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 1]))
    unlabeled = torch.randn(24, 1, 8, 8, generator=g) + torch.linspace(-4, 4, 24).view(-1, 1, 1, 1)
    views = {name: unlabeled + 0.1 * torch.randn(24, 1, 8, 8, generator=g) for name in ("second", "strong")}
    predicted = net.encode(unlabeled).argmax(1)
    with_heads_saying(net, int(predicted[0]))
    unknown = predicted == predicted[0]
    assert 0 < int(unknown.sum()) < len(unknown)  # both kinds of row are there
    return {"labeled": labeled, "unlabeled": unlabeled, "views": views}, unknown


def only(batch: dict, rows: torch.Tensor) -> dict:
    return {
        "labeled": batch["labeled"],
        "unlabeled": batch["unlabeled"][rows],
        "views": {k: v[rows] for k, v in batch["views"].items()},
    }


@pytest.mark.parametrize(
    "weights",
    [
        {"lambda_entmin": 1.0},
        {"lambda_vat": 1.0},
        {"lambda_consistency": 1.0},
        {"lambda_fixmatch": 1.0, "fixmatch_threshold": 0.34},
    ],
)
def test_every_unlabeled_term_trains_only_on_the_rows_the_heads_call_known(weights):
    net = heads_network()
    batch, unknown = mixed_batch(net)
    teacher = AveragedModel(net)
    name = next(iter(weights))[len("lambda_") :]
    off = {"lambda_rec": 0.0, "lambda_mid": 0.0}
    torch.manual_seed(0)
    gated = Objective.from_settings(lambda_ova=1.0, **off, **weights)(net, batch, teacher)
    torch.manual_seed(0)
    known_only = Objective.from_settings(**off, **weights)(net, only(batch, ~unknown), teacher)
    torch.manual_seed(0)
    every_row = Objective.from_settings(**off, **weights)(net, batch, teacher)
    assert gated.metrics["unlabeled_kept"].item() == pytest.approx((~unknown).float().mean().item())
    torch.testing.assert_close(gated.terms[name], known_only.terms[name], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(every_row.terms[name], known_only.terms[name], rtol=1e-3)


def test_an_image_the_heads_call_unknown_gets_no_pull_toward_a_class_and_a_known_one_does():
    net = heads_network()
    batch, unknown = mixed_batch(net)
    batch["unlabeled"].requires_grad_(True)
    off = {"lambda_rec": 0.0, "lambda_mid": 0.0}
    for objective, pulled in (
        (Objective.from_settings(lambda_ova=1.0, lambda_entmin=1.0, **off), ~unknown),
        (Objective.from_settings(lambda_entmin=1.0, **off), None),
    ):
        (grad,) = torch.autograd.grad(objective(net, batch).terms["entmin"], batch["unlabeled"])
        pull = grad.flatten(1).norm(dim=1)
        if pulled is None:  # without the heads every row is pulled
            assert bool((pull > 0).all())
        else:
            assert bool((pull[~pulled] == 0).all()) and bool((pull[pulled] > 0).all())


def test_no_row_kept_leaves_the_unlabeled_terms_at_zero_instead_of_a_mean_over_nothing():
    net = heads_network()
    batch, _ = mixed_batch(net)
    with torch.no_grad():
        net.open_set.bias.copy_(torch.tensor([[5.0] * CLASSES, [-5.0] * CLASSES]).flatten())  # nothing is known
    parts = Objective.from_settings(lambda_ova=1.0, lambda_entmin=1.0, lambda_vat=1.0, lambda_rec=0.0, lambda_mid=0.0)(
        net, batch
    )
    assert parts.metrics["unlabeled_kept"].item() == 0
    assert parts.terms["entmin"].item() == 0 and parts.terms["vat"].item() == 0 and torch.isfinite(parts.total)


def test_steps_on_the_term_teach_the_heads_the_labeled_classes():
    net = heads_network().train()
    g = torch.Generator().manual_seed(2)
    images, labels = torch.randn(30, 1, 8, 8, generator=g), torch.arange(30) % CLASSES
    for c in range(CLASSES):
        images[labels == c, :, 2 * c : 2 * c + 2] += 3.0  # each class a bright band
    batch = {"labeled": (images, labels), "unlabeled": images, "views": {"second": images}}
    objective = Objective.from_settings(lambda_ova=1.0, lambda_rec=0.0, lambda_mid=0.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = objective(net, batch).terms["ova"].item()
    for _ in range(60):
        optimizer.zero_grad()
        objective(net, batch).total.backward()
        optimizer.step()
    net.eval()
    logits, open_set = net.encode_open(images)
    assert objective(net, batch).terms["ova"].item() < first / 4
    assert bool((known_probability(open_set, logits) > 0.5).all())


def test_predict_scores_with_the_heads_where_the_model_has_them():
    x = torch.randn(4, 1, 8, 8)
    module = SWWAEModule.from_settings(ARCH, 1, 8, CLASSES, lambda_ova=1.0, lambda_rec=0.0, lambda_mid=0.0).eval()
    logits, scores = image_scores(module, x)
    assert set(scores) == {"probability", "energy", "one_vs_all"} and torch.equal(logits, module(x))
    expected = 1 - known_probability(*reversed(module.net.encode_open(x)))
    assert torch.equal(scores["one_vs_all"], expected)
    assert score_to_use(module, "auto") == "one_vs_all"
    plain = SWWAEModule.from_settings(ARCH, 1, 8, CLASSES).eval()
    assert score_to_use(plain, "auto") == "probability"
    with pytest.raises(ValueError, match="--lambda-ova"):
        score_to_use(plain, "one_vs_all")


def test_a_run_with_the_term_logs_its_parts_and_the_share_of_rows_kept(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--dataset", tiny_dataset, "--max-epochs", "1", "--run-dir", str(run_dir), "--log-every", "1"]
    assert train.main(tiny_run(*args, "--lambda-ova", "1", "--lambda-entmin", "1", pictures=False)) == 0
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    kept = [float(r["train/unlabeled_kept"]) for r in rows if r.get("train/unlabeled_kept")]
    assert kept and all(0 <= k <= 1 for k in kept) and any(r.get("train/ova") for r in rows)
