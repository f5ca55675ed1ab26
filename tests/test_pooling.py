"""What/where pooling: exact values where exact values exist."""

import pytest
import torch
import torch.nn.functional as F

from swwae_lightning import pooling as P


@pytest.fixture
def z():
    torch.manual_seed(0)
    return torch.randn(3, 4, 12, 12)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_hard_unpool_of_pool_keeps_each_max_at_its_switch_and_zero_elsewhere(z, k):
    what, where = P.hard_pool(z, k)
    restored = P.hard_unpool(what, where, k)
    switch = torch.zeros_like(z, dtype=torch.bool).flatten(2)
    switch.scatter_(2, where.flatten(2), True)
    switch = switch.view_as(z)
    assert torch.equal(restored[switch], z[switch])
    assert torch.all(restored[~switch] == 0)
    assert switch.sum() == what.numel()  # one switch per window
    ref_what, ref_where = F.max_pool2d(z, k, k, return_indices=True)
    assert torch.equal(what, ref_what) and torch.equal(where, ref_where)
    assert torch.equal(restored, F.max_unpool2d(ref_what, ref_where, k, k, output_size=z.shape[-2:]))


@pytest.mark.parametrize("k", [2, 3])
def test_soft_pool_with_huge_beta_is_max_and_argmax(k):
    # Distinct values 0.01 apart: beta * gap = 100, so the softmax is one-hot to float precision.
    z = torch.randperm(3 * 4 * 12 * 12, generator=torch.Generator().manual_seed(0)).float().view(3, 4, 12, 12) / 100
    what, where = P.soft_pool(z, k, beta=1e4)
    hard_what, hard_where = P.hard_pool(z, k)
    assert torch.allclose(what, hard_what, atol=1e-3)
    assert torch.allclose(where, P.hard_positions(hard_where, k), atol=1e-3)


def test_soft_pool_with_tiny_beta_is_window_mean_and_centre(z):
    k = 3
    what, where = P.soft_pool(z, k, beta=1e-6)
    assert torch.allclose(what, F.avg_pool2d(z, k), atol=1e-5)
    assert torch.allclose(where, torch.full_like(where, (k - 1) / 2), atol=1e-5)


def test_soft_pool_gradients_are_finite_even_for_large_activations():
    z = (torch.randn(2, 3, 8, 8) * 50).requires_grad_()
    what, where = P.soft_pool(z, 2, beta=100.0)
    (what.sum() + where.sum()).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_soft_unpool_integer_offset_lands_on_one_pixel_and_half_offset_splits_equally():
    what = torch.tensor([[[[2.0]]]])
    on_pixel = P.soft_unpool(what, torch.tensor([[[[[1.0, 0.0]]]]]), 2)
    assert torch.equal(on_pixel, torch.tensor([[[[0.0, 0.0], [2.0, 0.0]]]]))
    half = P.soft_unpool(what, torch.tensor([[[[[0.5, 1.0]]]]]), 2)
    assert torch.equal(half, torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]]))


def test_soft_unpool_preserves_each_values_mass(z):
    k = 3
    what, where = P.soft_pool(z, k, beta=2.0)
    out = P.soft_unpool(what, where, k)
    per_window = out.view(3, 4, 4, k, 4, k).sum(dim=(3, 5))
    assert torch.allclose(per_window, what, atol=1e-5)


def test_soft_unpool_is_differentiable_in_value_and_position():
    what = torch.tensor([[[[1.5]]]], requires_grad=True)
    where = torch.tensor([[[[[0.3, 0.6]]]]], requires_grad=True)
    out = P.soft_unpool(what, where, 2)
    (out * torch.arange(4.0).view(1, 1, 2, 2)).sum().backward()
    assert what.grad.abs() > 0 and where.grad.abs().sum() > 0


def test_a_bright_pixel_moved_one_pixel_inside_a_window_moves_the_soft_where_by_one():
    k = 4
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0
    shifted = torch.roll(x, shifts=1, dims=3)  # (1, 1) -> (1, 2), same window
    what_a, where_a = P.soft_pool(x, k, beta=100.0)
    what_b, where_b = P.soft_pool(shifted, k, beta=100.0)
    assert torch.allclose(what_a, what_b)
    assert torch.allclose(where_b - where_a, torch.tensor([0.0, 1.0]), atol=1e-3)


def test_copy_unpool_fills_every_position_of_the_window():
    what = torch.tensor([[[[1.0, 2.0]]]])
    assert torch.equal(P.copy_unpool(what, 2), torch.tensor([[[[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]]]]))
    assert torch.equal(P.unpool(P.make_pooling("hard"), what, None, 2, "copy"), P.copy_unpool(what, 2))


def test_unknown_modes_name_the_bad_value():
    with pytest.raises(ValueError, match="unknown pooling 'max'; choose one of"):
        P.make_pooling("max")
    with pytest.raises(ValueError, match="unpool='nearest'"):
        P.unpool(P.make_pooling("hard"), torch.zeros(1, 1, 1, 1), None, 2, "nearest")


def test_soft_pool_hand_written_gradient_matches_finite_differences():
    z = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: P.soft_pool(t, 3, 2.0), (z,))
    assert torch.autograd.gradcheck(lambda t: P.soft_unpool(*P.soft_pool(t, 2, 1.5), 2), (z,))


def test_soft_pool_backward_accepts_channels_last_gradients():
    z = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last).requires_grad_()
    what, where = P.soft_pool(z, 2, 10.0)
    conv = torch.nn.Conv2d(4, 4, 1).to(memory_format=torch.channels_last)
    (conv(what).sum() + where.sum()).backward()
    assert z.grad.shape == z.shape and torch.isfinite(z.grad).all()


def test_soft_pool_and_unpool_take_channels_last_maps_with_the_same_values_and_gradients():
    z = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    channels_last = z.contiguous(memory_format=torch.channels_last).requires_grad_()
    what, where = P.soft_pool(channels_last, 2, 3.0)
    ref_what, ref_where = P.soft_pool(z, 2, 3.0)
    assert torch.equal(what, ref_what) and torch.equal(where, ref_where)
    assert torch.autograd.gradcheck(lambda t: P.soft_unpool(*P.soft_pool(t, 2, 1.5), 2), (channels_last,))
