"""The stacked what-where network, its architecture strings and its losses."""

import pytest
import torch

from swwae_lightning import pooling as P
from swwae_lightning.arch import BatchNorm, Conv, Dropout, Linear, Pool, parse_arch
from swwae_lightning.network import StackedWhatWhere
from swwae_lightning.objectives import Objective
from swwae_lightning.presets import PRESETS


def loss_of(net, x, labels=None, **weights):
    """The objective on x, whose first len(labels) rows are labeled."""
    n = 0 if labels is None else len(labels)
    batch = {"unlabeled": x[n:]} if n < len(x) else {}
    if labels is not None:
        batch["labeled"] = (x[:n], labels)
    return Objective.from_settings(**weights)(net, batch)


def test_parse_arch_reads_the_compact_and_the_paper_notation():
    assert parse_arch("32C5-32C3-MP2-64C3-MP2-FC128-BN-D0.5") == [
        Conv(32, 5),
        Conv(32, 3),
        Pool(2),
        Conv(64, 3),
        Pool(2),
        Linear(128),
        BatchNorm(),
        Dropout(0.5),
    ]
    assert parse_arch("(16)5c-(32)3c-2p") == parse_arch("16C5-32C3-MP2")


@pytest.mark.parametrize(
    "arch, message",
    [
        ("32C5-XP2", r"bad token 'XP2'.*grammar"),
        ("32C5--MP2", r"bad token ''"),
        ("", "empty architecture"),
        ("MP2-32C3", "must follow a convolution"),
        ("32C3-FC10-64C3", "comes after an FC layer"),
        ("FC10", "has no convolution"),
        ("32C3-MP1", "pool sizes >= 2"),
        ("32C3-D1.5", "dropout in"),
        ("0C3-MP2", "maps, kernels and units"),
        ("32C3-BN-BN", "BN and Dp may each appear once"),
    ],
)
def test_bad_architecture_strings_quote_the_problem(arch, message):
    with pytest.raises(ValueError, match=message):
        parse_arch(arch)


def test_input_size_not_tiled_by_a_pool_fails_at_construction_naming_layer_and_sizes():
    with pytest.raises(ValueError, match=r"stage 2 pooling MP4 gets a 14x14 map"):
        StackedWhatWhere("8C3-MP2-8C3-MP4", 1, 28, 10)


@pytest.mark.parametrize("preset, shape", [("mnist", (1, 28)), ("cifar", (3, 32)), ("stl10", (3, 96))])
@pytest.mark.parametrize("pooling", ["hard", "soft"])
def test_every_decoder_state_has_its_encoder_states_shape(preset, shape, pooling):
    channels, size = shape
    net = StackedWhatWhere(PRESETS[preset], channels, size, 10, pooling=pooling).eval()
    x = torch.randn(2, channels, size, size)
    out = net(x)
    assert out.reconstruction.shape == x.shape
    assert len(out.encoder_states) == len(out.decoder_states) == len(net.stages)
    for h, r in zip(out.encoder_states, out.decoder_states):
        assert h.shape == r.shape
    assert len(out.wheres) == len(out.whats) == len(net.pool_sizes())
    assert torch.allclose(net.encode(x), out.logits)


def test_pooling_and_unpooling_switch_at_run_time():
    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-MP2-8C3-MP2", 1, 8, 3).eval()
    x = torch.randn(2, 1, 8, 8)
    with_where = net(x).reconstruction
    net.unpool = "copy"
    assert not torch.allclose(net(x).reconstruction, with_where)
    net.unpool = "where"
    net.set_pooling("soft", beta=5.0)
    assert net(x).wheres[0].dtype == torch.float32 and net.pooling.options == {"beta": 5.0}
    with pytest.raises(ValueError, match="unknown pooling 'average'; choose one of"):
        net.set_pooling("average")
    with pytest.raises(ValueError, match="unpool='nearest' is not one of"):
        net.unpool = "nearest"


def test_soft_pooling_rejects_non_positive_beta():
    with pytest.raises(ValueError, match="beta=0.0 must be > 0"):
        StackedWhatWhere("4C3-MP2", 1, 8, 3, pooling=P.SoftPooling(beta=0))
    with pytest.raises(ValueError, match="beta=nan must be a finite number"):
        StackedWhatWhere("4C3-MP2", 1, 8, 3, pooling=P.SoftPooling(beta=float("nan")))


def test_wrong_input_shape_is_named():
    net = StackedWhatWhere("4C3-MP2", 1, 8, 3)
    with pytest.raises(ValueError, match=r"input of shape \(3, 8, 8\)"):
        net(torch.zeros(1, 3, 8, 8))


def test_loss_parts_labels_cover_only_the_first_rows_and_none_gives_no_nll():
    torch.manual_seed(0)
    net = StackedWhatWhere("4C3-MP2-8C3-MP2", 1, 8, 3)
    x = torch.randn(6, 1, 8, 8)
    out = net(x)
    labels = torch.tensor([0, 2])
    loss = loss_of(net, x, labels, lambda_rec=0.5, lambda_mid=0.25).terms
    expected_nll = torch.nn.functional.cross_entropy(out.logits[:2], labels)
    expected_mid = torch.nn.functional.mse_loss(out.decoder_states[0], out.encoder_states[0])
    assert torch.allclose(loss["nll"], expected_nll)
    assert torch.allclose(loss["rec"], torch.nn.functional.mse_loss(out.reconstruction, x))
    assert torch.allclose(loss["mid"], expected_mid)  # the top pair (r_L = h_L) is left out
    total = loss_of(net, x, labels, lambda_rec=0.5, lambda_mid=0.25).total
    assert torch.allclose(total, loss["nll"] + 0.5 * loss["rec"] + 0.25 * loss["mid"])
    assert loss_of(net, x, None).terms["nll"] == 0


def test_zero_lambdas_report_the_terms_but_send_no_gradient_to_the_decoder():
    net = StackedWhatWhere("4C3-MP2-8C3-MP2", 1, 8, 3)
    x = torch.randn(4, 1, 8, 8)
    # lambda_rec = 0 with lambda_mid > 0 runs the decoder: rec is reported but trains nothing.
    loss = loss_of(net, x, torch.tensor([0, 1]), lambda_rec=0, lambda_mid=1e-30)
    loss.total.backward()
    assert loss.terms["rec"] > 0 and not loss.terms["rec"].requires_grad
    assert all(p.grad is None or p.grad.abs().max() < 1e-20 for s in net.stages for p in s.decoder.parameters())
    baseline = Objective.from_settings(lambda_rec=0, lambda_mid=0)
    assert not baseline.uses_decoder and baseline.computed == []  # both zero: the decoder never runs


@pytest.mark.parametrize("pooling", ["hard", "soft"])
def test_100_adam_steps_on_one_mnist_batch_cut_the_reconstruction_loss_by_80_percent(mnist_batch, pooling):
    torch.manual_seed(0)
    net = StackedWhatWhere("16C5-BN-MP2-32C3-MP2", 1, 28, 10, pooling=pooling)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = mnist_batch
    first = None
    for _ in range(100):
        loss = loss_of(net, x, None, lambda_rec=1.0, lambda_mid=0.1)
        first = first if first is not None else loss.terms["rec"].item()
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        final = loss_of(net, x, None).terms["rec"].item()
    assert final < 0.2 * first, (first, final)


def test_channels_last_module_computes_the_same_losses_and_gradients():
    """--channels-last changes only the memory layout: same loss and gradients, channels-last weights."""
    from orchestration import plugins
    from orchestration.training import build_module
    from swwae_lightning import settings

    plugins.declare_all_settings()
    cfg = {**settings.defaults(), "arch": "4C5-BN-MP2-8C3-MP2-FC16", "lr": 1e-3, "schedule": "cosine"}
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    losses, grads = [], []
    for channels_last in (False, True):
        torch.manual_seed(0)
        module = build_module({**cfg, "channels_last": channels_last}).train()
        convs = [p for p in module.parameters() if p.dim() == 4]
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert all(p.is_contiguous(memory_format=layout) for p in convs)
        loss = loss_of(module.net, x, y, lambda_rec=1.0, lambda_mid=0.1).total
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in module.parameters()])
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*grads))


def test_image_output_conv_runs_channels_last_on_cpu_with_the_plain_convs_values_and_gradients():
    from swwae_lightning.network import ImageOutputConv2d

    net = StackedWhatWhere("4C5-MP2-8C3-MP2", in_channels=3, image_size=8, num_classes=2)
    last = net.stages[0].decoder[-1][0]
    assert isinstance(last, ImageOutputConv2d) and last.out_channels == 3
    assert not any(isinstance(m, ImageOutputConv2d) for m in net.stages[1].modules())  # only the image's conv
    plain = torch.nn.Conv2d(4, 3, 5, padding="same")
    plain.load_state_dict(last.state_dict())
    x = torch.randn(2, 4, 8, 8)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    out, ref = last(xs[0]), plain(xs[1])
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.allclose(out, ref, atol=1e-6)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert torch.allclose(xs[0].grad, xs[1].grad, atol=1e-6) and torch.allclose(
        last.weight.grad, plain.weight.grad, atol=1e-5
    )
    assert last.weight.is_contiguous()  # the stored weights keep their layout (checkpoints unchanged)


def test_every_what_where_option_is_a_typed_keyword_of_the_network_or_of_its_pooling():
    """help(StackedWhatWhere) and an IDE show each option with its default: the settings read theirs from there."""
    import inspect

    from swwae_lightning import settings

    network = inspect.signature(StackedWhatWhere).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in network.values())
    for setting in (s for s in settings.SETTINGS.values() if s.group == "what-where"):
        if setting.owner is None:
            parameters = network
        else:
            parameters = inspect.signature(P.POOLINGS[setting.owner.partition("=")[2]]).parameters
        assert parameters[setting.name].default == setting.default, setting.name
