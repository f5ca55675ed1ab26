"""Static shapes and the compiled step: --full-batches gives every training step one shape, and
--compile computes what the eager network computes."""

import time

import pytest
import torch
from test_objectives import tiny_config
from torch._dynamo.utils import counters

from datamodules.sampling import EpochSampler
from orchestration import plugins
from orchestration.training import build_datamodule, build_module

plugins.declare_all_settings()


@pytest.fixture(autouse=True, scope="module")
def own_inductor_cache(tmp_path_factory):
    """Inductor keys its compiled C++ (precompiled headers included) by source, not by ATEN_CPU_CAPABILITY, so a
    cache written under the machine's own capability breaks a run under another: these tests compile afresh."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
    yield
    patch.undo()


def test_full_batches_are_all_of_the_batch_size_disjoint_and_leave_out_another_remainder_each_epoch():
    for rank in (0, 1):
        shards = []
        for epoch in (0, 1):
            sampler = EpochSampler(103, 10, seed=3, rank=rank, world_size=2, epoch=epoch, full_batches=True)
            batches = sampler.batches()
            assert len(sampler) == len(batches) == 5  # 51 or 52 examples a rank: 5 full batches of 10
            assert [len(b) for b in batches] == [10] * 5
            seen = torch.cat(batches)
            assert len(seen.unique()) == 50
            shards.append(set(seen.tolist()))
        assert shards[0] != shards[1]  # the left-out examples change with the epoch
    near_equal = EpochSampler(103, 10, seed=3, rank=0, world_size=2).batches()
    assert sorted({len(b) for b in near_equal}) == [8, 9]  # without it: 6 batches of 8 or 9


def test_full_batches_refuse_a_shard_smaller_than_one_batch_in_one_line():
    with pytest.raises(ValueError, match=r"--full-batches: batches of 10 need at least 20 examples \(2 rank\(s\)\)"):
        EpochSampler(19, 10, seed=0, world_size=2, full_batches=True)


def test_every_training_batch_of_an_epoch_has_one_shape_with_full_batches(tmp_path, tiny_dataset):
    shapes = {}
    for full in (False, True):
        datamodule = build_datamodule(tiny_config(tiny_dataset, tmp_path, unlabeled_batch_size=24, full_batches=full))
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        shapes[full] = {(b["labeled"][0].shape, b["unlabeled"].shape) for b, *_ in loader}
    assert len(shapes[False]) > 1  # 310 unlabeled images in 13 near-equal batches of 23 and 24
    assert shapes[True] == {((8, 1, 8, 8), (24, 1, 8, 8))}


def test_the_compiled_training_step_computes_the_eager_steps_loss_and_gradients_on_the_cpu(tmp_path, tiny_dataset):
    """The default job's terms (reconstruction, intermediate) through the compiled forward; compile time printed."""
    cfg = tiny_config(tiny_dataset, tmp_path, arch="4C3-MP2-8C3-MP2-FC16")
    g = torch.Generator().manual_seed(0)
    batch = {
        "labeled": (torch.randn(8, 1, 8, 8, generator=g), torch.arange(8) % 4),
        "unlabeled": torch.randn(16, 1, 8, 8, generator=g),
    }
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        module = build_module({**cfg, "compile": compiled}).train()
        counters.clear()
        start = time.perf_counter()
        loss = module.compute_loss(batch)
        loss.total.backward()
        seconds = time.perf_counter() - start
        assert bool(counters["stats"]["unique_graphs"]) == compiled  # dynamo traced the step, or did not
        results[compiled] = (loss.parts(), [p.grad.clone() for p in module.parameters()], seconds)
    (eager_parts, eager_grads, _), (parts, grads, seconds) = results[False], results[True]
    print(f"compiling the tiny network's step took {seconds:.1f} s on this machine")
    assert set(parts) == set(eager_parts) and {"loss", "rec", "mid"} <= set(parts)
    for name in parts:
        assert torch.allclose(parts[name].detach(), eager_parts[name].detach(), rtol=1e-5, atol=1e-6), name
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads, eager_grads))
    assert any(g.abs().sum() > 0 for g in grads)


def test_a_compiled_modules_weights_load_into_an_eager_one_under_the_same_names(tmp_path, tiny_dataset):
    cfg = tiny_config(tiny_dataset, tmp_path, arch="4C3-MP2-8C3-MP2-FC16")
    compiled, eager = build_module({**cfg, "compile": True}), build_module(cfg)
    assert "encode" in vars(compiled.net) and "encode" not in vars(eager.net)  # the compiled entry, in place
    assert list(compiled.state_dict()) == list(eager.state_dict())
    with torch.no_grad():
        for p in compiled.parameters():
            p.add_(1.0)
    eager.load_state_dict(compiled.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(eager.state_dict().values(), compiled.state_dict().values()))
