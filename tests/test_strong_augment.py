"""Strong (FixMatch-style) augmentation: seeded, batched, per-image, and each op does what it says."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datamodules.strong_augment import (
    affine_matrices,
    apply_affine,
    random_affine,
    random_brightness_contrast,
    random_cutout,
    random_elastic,
    strong_augment,
)

OPS = {
    "affine": random_affine,
    "elastic": random_elastic,
    "cutout": random_cutout,
    "brightness_contrast": random_brightness_contrast,
    "strong": lambda x, g: strong_augment(x, g, hflip=False),
    "strong_hflip": lambda x, g: strong_augment(x, g, hflip=True),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 16, c: int = 1, h: int = 28, w: int = 28, dtype=torch.float32) -> torch.Tensor:
    """Digit-like: dark background, a bright blob off centre (so flips and shifts show), some texture."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    blob = torch.exp(-((yy - 0.4 * h) ** 2 + (xx - 0.6 * w) ** 2) / (0.04 * h * w))
    noise = torch.rand(b, c, h, w, generator=gen(123), dtype=dtype)
    return (0.8 * blob + 0.2 * noise).clamp(0, 1)


def ramp(b: int, h: int = 28, w: int = 28, axis: int = -1) -> torch.Tensor:
    """A linear ramp along ``axis`` (0 at the first pixel, 1 at the last): bilinear sampling reads it exactly."""
    size = w if axis == -1 else h
    line = torch.arange(size, dtype=torch.float64) / (size - 1)
    line = line.view(1, 1, 1, size) if axis == -1 else line.view(1, 1, size, 1)
    return line.expand(b, 1, h, w).contiguous()


# ---------------------------------------------------------------- determinism, shapes, ranges
@pytest.mark.parametrize("name", OPS)
def test_same_seed_is_bit_identical_other_seed_differs_and_input_is_untouched(name):
    op, x = OPS[name], images()
    before = x.clone()
    out = op(x, gen(0))
    assert torch.equal(out, op(x, gen(0)))
    assert not torch.equal(out, op(x, gen(1)))
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize(
    "shape,dtype", [((8, 1, 28, 28), torch.float32), ((6, 3, 32, 32), torch.float32), ((5, 3, 20, 24), torch.float64)]
)
def test_shape_dtype_preserved_and_values_stay_in_unit_interval(name, shape, dtype):
    x = images(*shape, dtype=dtype)
    out = OPS[name](x, gen(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", OPS)
def test_each_image_gets_its_own_transformation(name):
    x = images(8, 3, 16, 16)[:1].expand(8, -1, -1, -1).contiguous()  # eight copies of one image
    out = OPS[name](x, gen(0)).flatten(1)
    distinct = (out[:, None] - out[None]).abs().amax(-1) > 1e-4
    assert distinct.sum() == 8 * 7  # every pair differs


def test_the_random_numbers_come_from_the_generator_not_the_global_rng():
    x = images(4)
    torch.manual_seed(0)
    first = strong_augment(x, gen(5), hflip=True)
    torch.manual_seed(1)
    assert torch.equal(first, strong_augment(x, gen(5), hflip=True))


def test_generator_draws_are_those_of_a_fixed_sequence():
    """Resumability: the output depends on the generator state only, so a generator advanced by the
    same draws gives the same result; and strong_augment consumes a fixed number of draws."""
    x = images(4)
    g = gen(0)
    strong_augment(x, g, hflip=False)
    after_one = g.get_state()
    g2 = gen(0)
    strong_augment(images(4, c=1) * 0.5, g2, hflip=True)  # other pixels, with flips: same draws consumed
    assert torch.equal(after_one, g2.get_state())


# ---------------------------------------------------------------- affine
def test_affine_with_zero_magnitudes_is_the_identity():
    x = images(4, 3, 20, 24)
    out = random_affine(x, gen(0), max_degrees=0.0, max_shear=0.0, scale=(1.0, 1.0), max_translate=0.0)
    assert torch.allclose(out, x, atol=1e-5)


def one_pixel(h: int, w: int, row: int, col: int) -> torch.Tensor:
    x = torch.zeros(1, 1, h, w, dtype=torch.float64)
    x[0, 0, row, col] = 1
    return x


def params(degrees=0.0, shear=0.0, scale=1.0, tx=0.0, ty=0.0) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor([v], dtype=torch.float64) for v in (degrees, shear, scale, tx, ty))


@pytest.mark.parametrize(
    "h,w,p,src,dst",
    [
        (28, 28, params(tx=3 / 28, ty=-2 / 28), (10, 12), (8, 15)),  # 3 px right, 2 px up
        (20, 30, params(tx=-4 / 30, ty=5 / 20), (4, 10), (9, 6)),  # non-square: fractions of each side
        (28, 28, params(degrees=90.0), (5, 20), (20, 22)),  # (x, y) -> (-y, x) about the centre (13.5, 13.5)
        (29, 29, params(scale=0.5), (10, 16), (12, 15)),  # offsets from the centre (14, 14) halve
        (21, 31, params(shear=1.0), (13, 15), (13, 18)),  # x += shear * y, about the centre (15, 10)
    ],
)
def test_affine_matrices_move_a_single_pixel_where_expected(h, w, p, src, dst):
    out = apply_affine(one_pixel(h, w, *src), affine_matrices(*p, h, w))
    assert torch.allclose(out, one_pixel(h, w, *dst), atol=1e-6)


def test_apply_affine_matches_affine_grid_and_grid_sample():
    x = images(6, 3, 20, 24, dtype=torch.float64)
    u = torch.rand(5, 6, generator=gen(3), dtype=torch.float64) * 2 - 1
    theta = affine_matrices(30 * u[0], 0.3 * u[1], 1 + 0.2 * u[2], 0.1 * u[3], 0.1 * u[4], 20, 24)
    reference = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    assert torch.allclose(apply_affine(x, theta), reference, atol=1e-10)


def test_random_affine_stays_within_its_magnitudes():
    """A pure translation of at most 2 px (max_translate * 28) moves a centred pixel by at most 2 px."""
    x = one_pixel(28, 28, 14, 14).expand(32, 1, 28, 28)
    out = random_affine(x, gen(0), max_degrees=0.0, max_shear=0.0, scale=(1.0, 1.0), max_translate=2 / 28)
    mass = out.flatten(1).sum(1)
    rows = (out.sum(-1).squeeze(1) * torch.arange(28.0, dtype=out.dtype)).sum(1) / mass
    cols = (out.sum(-2).squeeze(1) * torch.arange(28.0, dtype=out.dtype)).sum(1) / mass
    assert torch.allclose(mass, torch.ones_like(mass))
    assert ((rows - 14).abs() <= 2 + 1e-9).all() and ((cols - 14).abs() <= 2 + 1e-9).all()
    assert (rows - 14).abs().max() > 1 and (cols - 14).abs().max() > 1  # and does use the range


# ---------------------------------------------------------------- elastic
def test_elastic_with_zero_alpha_is_the_identity():
    x = images(4, 3, 20, 24)
    assert torch.allclose(random_elastic(x, gen(0), alpha=0.0), x, atol=1e-5)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_elastic_displacements_are_about_alpha_pixels_and_smooth(alpha):
    """Bilinear sampling reads a ramp exactly, so the output gives the displacement back; an all-ones
    channel marks (and excludes) the pixels that sampled near or past the zero border."""
    b, ones = 64, torch.ones(64, 1, 28, 28, dtype=torch.float64)
    fields = []
    for axis in (-1, -2):
        out = random_elastic(torch.cat([ramp(b, axis=axis), ones], 1), gen(0), alpha=alpha)
        pos = torch.arange(28.0, dtype=torch.float64)
        fields.append(out[:, 0] * 27 - (pos if axis == -1 else pos.view(28, 1)))
        inside = (out[:, 1] - 1).abs() < 1e-9
    dx, dy = fields
    assert inside.float().mean() > 0.8
    for d in (dx, dy):
        rms = d[inside].pow(2).mean().sqrt()
        assert 0.6 * alpha < rms < 1.2 * alpha
        assert d[inside].abs().max() < 5 * alpha
        # smooth: horizontally neighbouring pixels move alike
        pairs = inside[..., 1:] & inside[..., :-1]
        assert (d[..., 1:] - d[..., :-1])[pairs].abs().mean() < 0.25 * rms
    assert not torch.allclose(dx[inside], dy[inside])  # two independent fields


# ---------------------------------------------------------------- cutout
@pytest.mark.parametrize("h,w,fraction,side", [(28, 28, 0.5, 14), (32, 32, 0.25, 8), (20, 24, 0.5, 10)])
def test_cutout_zeroes_exactly_one_square_of_the_expected_side_per_image(h, w, fraction, side):
    out = random_cutout(torch.ones(64, 3, h, w), gen(0), size_fraction=fraction)
    assert torch.equal(out[:, :1].expand_as(out), out)  # the same square in every channel
    zero = out[:, 0] == 0
    assert (zero.flatten(1).sum(1) == side * side).all()
    corners = []
    for hit in (zero.any(2), zero.any(1)):  # the rows, then the columns, holding a zero: (B, H), (B, W)
        first = hit.int().argmax(1)
        last = hit.shape[1] - 1 - hit.flip(1).int().argmax(1)
        assert (hit.sum(1) == side).all() and (last - first + 1 == side).all()  # one contiguous run of side
        corners.append(first.tolist())
    # side x side box holding side^2 zeros: exactly the square; each image at its own position
    assert len(set(zip(*corners))) > 32


def test_cutout_of_size_zero_is_the_identity():
    x = images(4)
    assert torch.equal(random_cutout(x, gen(0), size_fraction=0.0), x)


# ---------------------------------------------------------------- brightness / contrast
def test_brightness_contrast_with_zero_magnitudes_is_the_identity():
    x = images(8, 3)
    assert torch.equal(random_brightness_contrast(x, gen(0), max_brightness=0.0, max_contrast=0.0), x)


def test_brightness_shifts_and_contrast_keeps_the_mean_when_nothing_clips():
    x = 0.45 + 0.1 * torch.rand(16, 3, 8, 8, generator=gen(1), dtype=torch.float64)  # in [0.45, 0.55]
    shifted = random_brightness_contrast(x, gen(0), max_brightness=0.3, max_contrast=0.0)
    delta = (shifted - x).flatten(1)
    assert torch.allclose(delta, delta[:, :1].expand_as(delta))  # one constant per image ...
    assert delta[:, 0].abs().max() <= 0.3 and delta[:, 0].std() > 0.05  # ... within the range, varying
    contrasted = random_brightness_contrast(x, gen(0), max_brightness=0.0, max_contrast=0.3)
    assert torch.allclose(contrasted.mean((1, 2, 3)), x.mean((1, 2, 3)))
    ratio = contrasted.std((1, 2, 3)) / x.std((1, 2, 3))
    assert ((ratio >= 0.7 - 1e-9) & (ratio <= 1.3 + 1e-9)).all() and ratio.std() > 0.05


# ---------------------------------------------------------------- the composition
def nearest(out: torch.Tensor, candidates: list[torch.Tensor]) -> torch.Tensor:
    """Per image, the index of the candidate batch it is closest to (mean absolute difference)."""
    return torch.stack([(out - c).abs().flatten(1).mean(1) for c in candidates]).argmin(0)


def sequential(x: torch.Tensor, seed: int, flip: torch.Tensor | None) -> torch.Tensor:
    """strong_augment's recipe spelled out with the public ops (two resamplings instead of one)."""
    g = gen(seed)
    torch.rand(x.shape[0], generator=g)  # the flip coins: drawn, whether or not a flip is asked for
    if flip is not None:  # (the coins are drawn either way)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    x = random_elastic(random_affine(x, g), g)
    return random_cutout(random_brightness_contrast(x, g), g)


def test_strong_augment_without_hflip_never_flips():
    """On a left-to-right ramp a flip is unmistakable: each output is close to the unflipped recipe
    and far from the flipped one; with hflip=True the same test does see about half flipped."""
    x = ramp(64).float()
    no_flip, all_flip = sequential(x, 0, None), sequential(x, 0, torch.ones(64, dtype=torch.bool))
    assert (nearest(strong_augment(x, gen(0), hflip=False), [no_flip, all_flip]) == 0).all()
    flipped = nearest(strong_augment(x, gen(0), hflip=True), [no_flip, all_flip]) == 1
    assert 16 <= flipped.sum() <= 48
    assert torch.equal(flipped, torch.rand(64, generator=gen(0)) < 0.5)  # the coins are the first draw


def test_hflip_only_changes_the_flipped_images_and_uses_the_same_other_draws():
    x = images(32)
    coins = torch.rand(32, generator=gen(0)) < 0.5
    with_flip = strong_augment(x, gen(0), hflip=True)
    assert torch.equal(with_flip[~coins], strong_augment(x, gen(0), hflip=False)[~coins])
    assert torch.equal(with_flip[coins], strong_augment(x.flip(-1), gen(0), hflip=False)[coins])


def test_strong_augment_is_the_recipe_with_one_resampling():
    """Fused affine + elastic reads the input where the two separate warps would; on a smooth image
    the results agree up to the second interpolation and the zero border."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    x = torch.exp(-(xx**2 + yy**2) / 0.3).expand(32, 1, 28, 28).contiguous()
    diff = (strong_augment(x, gen(0), hflip=False) - sequential(x, 0, None)).abs()
    assert diff.mean() < 0.005 and diff.max() < 0.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_with_the_same_generator():
    x = images(16, 3, 32, 32)
    cpu = strong_augment(x, gen(0), hflip=True)
    cuda = strong_augment(x.cuda(), gen(0), hflip=True)
    assert cuda.device.type == "cuda" and cuda.dtype == x.dtype
    assert (cuda.cpu() - cpu).abs().max() < 1e-3


def test_a_batch_costs_a_handful_of_ops_not_a_loop_over_images():
    """The same torch calls for 8 images as for 256: nothing loops over the images (counted, not timed)."""
    from torch.overrides import TorchFunctionMode

    class CountCalls(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    strong_augment(torch.rand(8, 1, 28, 28), gen(0), hflip=False)  # builds its cached kernels once
    counts = []
    for n in (8, 256):
        with CountCalls() as counter:
            strong_augment(torch.rand(n, 1, 28, 28), gen(0), hflip=False)
        counts.append(counter.calls)
    assert counts[0] == counts[1] and 10 < counts[0] < 400, counts
