"""Batched noise: per-image seeded fields, the basicsr formulas, independence of batch and thread count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difiisr.degradation.noise import add_noise
from difiisr.degradation.seeding import noise_source

SPECS = [
    {"kind": "gaussian", "sigma": 12.0, "gray": False},
    {"kind": "poisson", "scale": 1.5, "gray": True},
    {"kind": "gaussian", "sigma": 4.0, "gray": True},
    {"kind": "poisson", "scale": 0.7, "gray": False},
    {"kind": "poisson", "scale": 2.0, "gray": False},
    {"kind": "gaussian", "sigma": 25.0, "gray": False},
]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Six (3,24,20) images in [0,1] with many distinct 8-bit levels."""
    return torch.rand(len(SPECS), 3, 24, 20, generator=torch.Generator().manual_seed(0))


def _sources(seeds: list[int]):
    return [noise_source(s) for s in seeds]


def test_batch_equals_each_image_alone_and_any_worker_count(images) -> None:
    seeds = [11, 12, 13, 14, 15, 16]
    batch = add_noise(images, SPECS, _sources(seeds))
    threaded = add_noise(images, SPECS, _sources(seeds), workers=3)
    assert torch.equal(batch, threaded)
    for i, seed in enumerate(seeds):
        alone = add_noise(images[i : i + 1], SPECS[i : i + 1], _sources([seed]))
        assert torch.equal(alone[0], batch[i]), i
    perm = [3, 0, 5, 1, 4, 2]
    permuted = add_noise(images[perm], [SPECS[i] for i in perm], _sources([seeds[i] for i in perm]))
    assert torch.equal(permuted, batch[perm])
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0


def test_gaussian_field_is_randn_times_sigma_over_255() -> None:
    x = torch.full((1, 3, 16, 16), 0.5)
    out = add_noise(x, [{"kind": "gaussian", "sigma": 5.0, "gray": False}], _sources([7]))
    expected = torch.randn((3, 16, 16), generator=noise_source(7).torch_gen) * (5.0 / 255.0)
    assert torch.equal(out[0], (expected + 0.5).clamp(0, 1))
    grey = add_noise(x, [{"kind": "gaussian", "sigma": 5.0, "gray": True}], _sources([7]))
    one = torch.randn((1, 16, 16), generator=noise_source(7).torch_gen) * (5.0 / 255.0)
    assert torch.equal(grey[0], (one + 0.5).clamp(0, 1).expand(3, -1, -1))


def test_poisson_field_follows_basicsr_formula() -> None:
    """Five distinct levels -> vals = 8; noise = (poisson(level/255 * 8) / 8 - level/255) * scale."""
    levels = torch.tensor([0, 40, 80, 120, 200], dtype=torch.float32)
    img = (levels.repeat(12)[:60].view(1, 1, 6, 10) / 255.0).expand(1, 3, 6, 10).contiguous()
    spec = {"kind": "poisson", "scale": 0.5, "gray": False}
    out = add_noise(img, [spec], _sources([21]))
    base = img[0].double()
    counts = noise_source(21).numpy_gen.poisson((base * 8).numpy())
    expected = (torch.from_numpy(counts).float() / 8 - img[0]) * 0.5
    assert torch.equal(out[0], (img[0] + expected).clamp(0, 1))


def test_grey_poisson_uses_luma_and_stays_grey() -> None:
    gen = torch.Generator().manual_seed(3)
    grey = torch.rand(2, 1, 16, 16, generator=gen).expand(2, 3, 16, 16).contiguous()
    specs = [{"kind": "poisson", "scale": 3.0, "gray": True}] * 2
    out = add_noise(grey, specs, _sources([1, 2]))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert not torch.equal(out, grey)


def test_noise_statistics_match_closed_forms() -> None:
    """Gaussian std sigma/255; Poisson on a flat image (1 level -> vals 1): variance level/255 * scale**2."""
    x = torch.full((1, 3, 128, 128), 0.5)
    g = add_noise(x, [{"kind": "gaussian", "sigma": 10.0, "gray": False}], _sources([5])) - x
    assert abs(float(g.std()) - 10.0 / 255) < 0.03 * 10.0 / 255 and abs(float(g.mean())) < 1e-3
    flat = torch.full((1, 3, 128, 128), 100 / 255)
    p = add_noise(flat, [{"kind": "poisson", "scale": 0.2, "gray": False}], _sources([6])) - flat
    var = 100 / 255 * 0.2**2
    n = p.numel()
    assert abs(float(p.var()) - var) < 6 * var * math.sqrt(2 / n) + 0.02 * var
    assert abs(float(p.mean())) < 6 * math.sqrt(var / n)


def test_bad_inputs_name_the_problem(images) -> None:
    with pytest.raises(ValueError, match="2 specs and 6 sources for 6 images"):
        add_noise(images, SPECS[:2], _sources(list(range(6))))
    with pytest.raises(ValueError, match="unknown kind 'speckle'"):
        add_noise(images[:1], [{"kind": "speckle", "gray": False}], _sources([0]))


def test_seeded_fields_differ_between_seeds(images) -> None:
    a = add_noise(images, SPECS, _sources([1, 2, 3, 4, 5, 6]))
    b = add_noise(images, SPECS, _sources([1, 2, 3, 4, 5, 7]))
    assert torch.equal(a[:5], b[:5]) and not torch.equal(a[5], b[5])
    assert np.isfinite(a.numpy()).all()
