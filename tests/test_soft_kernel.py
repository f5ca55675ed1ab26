"""Soft pooling's fused CPU kernel: the same values and gradients as the tensor implementation, and a fallback."""

from __future__ import annotations

import logging

import pytest
import torch

from swwae_lightning import pooling as P
from swwae_lightning.pooling import soft, soft_kernel


@pytest.fixture
def kernel():
    ext = soft_kernel.kernel()
    if ext is None:
        pytest.skip("the soft-pooling C++ kernel cannot be built here (no C++ compiler or ninja)")
    return ext


@pytest.fixture
def tensor_path(monkeypatch):
    """Soft pooling as on a machine without the kernel (and as on the GPU): tensor operations only."""
    monkeypatch.setattr(soft_kernel, "usable", lambda t: None)


def pool_and_unpool(z: torch.Tensor, k: int, beta: float, seed: int = 1) -> list[torch.Tensor]:
    """Forward values and input gradients of a pool of z and of an unpool of random values and positions."""
    z = z.detach().requires_grad_()
    what, where = P.soft_pool(z, k, beta)
    g = torch.Generator().manual_seed(seed)
    grad_what = torch.randn(what.shape, generator=g, dtype=z.dtype)
    grad_where = torch.randn(where.shape, generator=g, dtype=z.dtype)
    (grad_z,) = torch.autograd.grad((what, where), z, (grad_what, grad_where))
    # Positions anywhere in the window; the unpool's position gradient jumps at integers, so
    # each path unpools the same positions rather than its own pooled (rounding-different) ones.
    what_in = torch.randn(what.shape, generator=g, dtype=z.dtype).requires_grad_()
    where_in = ((k - 1) * torch.rand(where.shape, generator=g, dtype=z.dtype)).requires_grad_()
    out = P.soft_unpool(what_in, where_in, k)
    grad_what_in, grad_where_in = torch.autograd.grad(
        out, (what_in, where_in), torch.randn(out.shape, generator=g, dtype=z.dtype)
    )
    return [what, where, grad_z, out, grad_what_in, grad_where_in]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k, beta", [(2, 100.0), (3, 2.0), (4, 10.0)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_matches_the_tensor_implementation(kernel, monkeypatch, dtype, k, beta, channels_last):
    z = torch.randn(3, 4, 4 * k, 5 * k, generator=torch.Generator().manual_seed(k), dtype=dtype) * 2
    if channels_last:
        z = z.to(memory_format=torch.channels_last)
    assert soft_kernel.usable(z) is kernel
    fused = pool_and_unpool(z, k, beta)
    monkeypatch.setattr(soft_kernel, "usable", lambda t: None)
    reference = pool_and_unpool(z, k, beta)
    eps = torch.finfo(dtype).eps
    for name, a, b in zip(["what", "where", "d z", "unpooled", "d what", "d where"], fused, reference):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        # d z = w (beta g z + g (1 - beta what) - ...) cancels terms of size beta |g z|: both
        # implementations round those, in different orders.
        scale = beta * float(z.abs().max()) * 4 if name == "d z" else 1.0
        torch.testing.assert_close(a, b, rtol=64 * eps, atol=64 * eps * scale, msg=name)


def test_soft_pooling_on_the_cpu_runs_the_kernel_both_ways(kernel, monkeypatch):
    calls = []

    class Counting:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(kernel, name)

    monkeypatch.setattr(soft_kernel, "kernel", Counting)
    pool_and_unpool(torch.randn(2, 3, 8, 8), 2, 100.0)
    assert calls == ["pool_forward", "pool_backward", "unpool_forward", "unpool_backward"]
    assert soft_kernel.usable(torch.zeros(1, 4, 4, dtype=torch.bfloat16)) is None  # autocast's dtype: tensor path


def test_kernel_gradients_match_finite_differences(kernel):
    z = torch.randn(2, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: P.soft_pool(t, 3, 2.0), (z,))
    assert torch.autograd.gradcheck(lambda t: P.soft_unpool(*P.soft_pool(t, 2, 1.5), 2), (z,))


def test_tensor_path_gradients_match_finite_differences(tensor_path):
    z = torch.randn(2, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: P.soft_pool(t, 3, 2.0), (z,))
    assert torch.autograd.gradcheck(lambda t: P.soft_unpool(*P.soft_pool(t, 2, 1.5), 2), (z,))


def test_kernel_keeps_nan_so_the_nan_guard_sees_it(kernel):
    z = torch.randn(1, 1, 4, 4)
    z[0, 0, 1, 2] = float("nan")
    what, where = P.soft_pool(z, 2, 100.0)
    assert torch.isnan(what[0, 0, 0, 1]) and torch.isnan(where[0, 0, 0, 1]).all()
    assert torch.isfinite(what[0, 0, 1]).all() and torch.isfinite(what[0, 0, :, 0]).all()
    assert torch.isnan(P.soft_unpool(what, where, 2)[0, 0, :2, 2:]).all()


@pytest.mark.parametrize("path", ["kernel", "tensor_path"])
def test_small_gradients_stay_out_of_the_subnormal_range(request, path):
    """Floored exponents keep w_i * gradient normal, so the encoder's backward never runs on subnormal floats."""
    request.getfixturevalue(path)
    z = (torch.randn(4, 8, 16, 16, generator=torch.Generator().manual_seed(0)) * 2).requires_grad_()
    what, where = P.soft_pool(z, 2, 100.0)
    (1e-6 * (what.sum() + where.sum())).backward()
    magnitude = z.grad.abs()
    assert not ((magnitude > 0) & (magnitude < torch.finfo(torch.float32).tiny)).any()


def test_a_kernel_that_cannot_be_built_leaves_the_tensor_path_and_one_line(monkeypatch, caplog):
    from torch.utils import cpp_extension

    def no_ninja(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.setattr(cpp_extension, "verify_ninja_availability", no_ninja)
    soft_kernel.kernel.cache_clear()
    caplog.set_level(logging.INFO)
    try:
        assert soft_kernel.kernel() is None and soft_kernel.kernel() is None
        what, where = P.soft_pool(torch.randn(1, 2, 4, 4), 2, 100.0)
        assert what.shape == (1, 2, 2, 2) and where.shape == (1, 2, 2, 2, 2)
    finally:
        soft_kernel.kernel.cache_clear()  # the next test loads the real kernel from the cache again
    lines = [r.getMessage() for r in caplog.records if "soft pooling" in r.getMessage()]
    assert lines == [
        "soft pooling: the CPU kernel could not be built (Ninja is required to load C++ extensions); "
        "using tensor operations"
    ]


def test_kernel_applies_only_where_the_window_divides_the_map():
    assert soft._kernel_for(torch.zeros(1, 1, 5, 4), 2) is None


def test_a_kernel_source_that_does_not_compile_fails_instead_of_falling_back(monkeypatch):
    from torch.utils import cpp_extension

    def compile_error(*args, **kwargs):
        raise RuntimeError("Error building extension 'swwae_soft_pool': soft_kernel.cpp:12: error: expected ';'")

    monkeypatch.setattr(cpp_extension, "load", compile_error)
    soft_kernel.kernel.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="Error building extension"):
            soft_kernel.kernel()
    finally:
        soft_kernel.kernel.cache_clear()
