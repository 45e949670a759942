"""Samplers with callable models: oracle reconstruction, model calls and indices, seeds, guidance hook, clamping."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from difiisr.diffusion import (
    DiffusionConfig,
    ResShiftDiffusion,
    sample_ancestral,
    sample_ddim,
    sample_onestep,
)

PREDICT_TYPES = ["xstart", "residual", "epsilon", "epsilon_scale"]
SAMPLERS = {"onestep": sample_onestep, "ddim": sample_ddim, "ancestral": sample_ancestral}


def make(**overrides) -> ResShiftDiffusion:
    return ResShiftDiffusion(dataclasses.replace(DiffusionConfig(), **overrides))


def images(seed: int, shape=(2, 3, 8, 8), dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.rand(shape, generator=g, dtype=dtype) * 1.8 - 0.9
    zy = torch.rand(shape, generator=g, dtype=dtype) * 1.8 - 0.9
    return z0, zy


class OracleModel:
    """Knows z0: from the scaled input and original t it returns the output that encodes x0 = z0 for its type.

    This is a stand-in for a perfectly trained network (no real network belongs in diffusion tests).
    """

    def __init__(self, full: ResShiftDiffusion, z0: torch.Tensor, zy: torch.Tensor) -> None:
        self.full, self.z0, self.zy = full, z0, zy
        self.calls: list[tuple[list[int], object]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, lq: object) -> torch.Tensor:
        self.calls.append((t.tolist(), lq))
        cfg = self.full.config
        eta = self.full.etas[t].reshape(-1, 1, 1, 1).to(x.dtype)
        if not cfg.normalize_input:
            scale = torch.ones_like(eta)
        elif cfg.latent:
            scale = (cfg.kappa**2 * eta + 1).sqrt()
        else:
            scale = 3 * cfg.kappa * eta.sqrt() + 1
        z_t = x * scale
        noise = (z_t - self.z0 - eta * (self.zy - self.z0)) / (cfg.kappa * eta.sqrt())
        return {
            "xstart": self.z0,
            "residual": self.zy - self.z0,
            "epsilon": noise,
            "epsilon_scale": cfg.kappa * eta.sqrt() * noise,
        }[cfg.predict_type]


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("latent", [True, False])
def test_xstart_oracle_reconstructs_z0_exactly(name: str, latent: bool) -> None:
    d = make(latent=latent)
    z0, zy = images(0)
    out = SAMPLERS[name](lambda x, t, lq: z0, d, zy, None, generator=torch.Generator().manual_seed(0))
    assert out.shape == z0.shape and out.dtype == torch.float64
    assert torch.equal(out, z0)


@pytest.mark.parametrize("kind", PREDICT_TYPES)
@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("latent", [True, False])
def test_oracle_of_every_prediction_type_reconstructs_z0(kind: str, name: str, latent: bool) -> None:
    d = make(predict_type=kind, latent=latent)
    z0, zy = images(1)
    out = SAMPLERS[name](OracleModel(d, z0, zy), d, zy, "lq", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, z0, rtol=0, atol=1e-10)


def test_model_calls_use_scaled_input_and_descending_original_indices() -> None:
    d = make()
    z0, zy = images(2)
    lq = torch.zeros(2, 3, 2, 2)
    noise = torch.randn(zy.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    seen: list[tuple[torch.Tensor, torch.Tensor, object]] = []

    def model(x, t, lq_):
        seen.append((x.clone(), t.clone(), lq_))
        return z0

    sample_onestep(model, d, zy, lq, noise=noise)
    ((x, t, lq_seen),) = seen
    assert t.tolist() == [14, 14] and t.dtype == torch.int64 and lq_seen is lq
    prior = zy + 2.0 * 0.99 * noise
    torch.testing.assert_close(x, prior / math.sqrt(4 * 0.99**2 + 1), rtol=0, atol=1e-14)

    seen.clear()
    sample_ddim(model, d, zy, lq, noise=noise)
    assert [s[1].tolist() for s in seen] == [[i, i] for i in range(14, -1, -1)]
    # The second call sees z_13 = k z0 + m prior + j zy (DDIM step from the prior with x0_hat = z0).
    k, m, j = (float(c[0]) for c in d.ddim_coefficients(14, zy))
    z13 = k * z0 + m * prior + j * zy
    torch.testing.assert_close(seen[1][0], d.scale_input(z13, 13), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["ddim", "ancestral", "onestep"])
def test_respaced_sampling_calls_the_model_with_mapped_indices(name: str) -> None:
    d = make().respaced(4)
    z0, zy = images(3)
    oracle = OracleModel(make(), z0, zy)  # oracle in the original index space
    out = SAMPLERS[name](oracle, d, zy, None, generator=torch.Generator().manual_seed(3))
    expected = [[11, 11]] if name == "onestep" else [[11, 11], [7, 7], [3, 3], [0, 0]]
    assert [c[0] for c in oracle.calls] == expected
    torch.testing.assert_close(out, z0, rtol=0, atol=1e-12)


def test_respaced_prior_uses_the_kept_noise_level() -> None:
    d = make().respaced(4)
    zy = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    out = d.prior_sample(zy, noise=torch.ones_like(zy))
    assert float(out) == pytest.approx(2.0 * float(make().sqrt_etas[11]), abs=1e-15)


def test_seeds_make_samples_reproducible() -> None:
    d = make()
    _, zy = images(4)

    def model(x, t, lq):
        return 0.5 * x

    def run(name: str, seed: int) -> torch.Tensor:
        return SAMPLERS[name](model, d, zy, None, generator=torch.Generator().manual_seed(seed))

    for name in SAMPLERS:
        assert torch.equal(run(name, 5), run(name, 5)), name
        assert not torch.allclose(run(name, 5), run(name, 6)), name


def test_ancestral_draws_per_step_noise_from_the_generator() -> None:
    d = make()
    _, zy = images(5)
    noise = torch.randn(zy.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def model(x, t, lq):
        return 0.5 * x

    a = sample_ancestral(model, d, zy, None, noise=noise, generator=torch.Generator().manual_seed(1))
    b = sample_ancestral(model, d, zy, None, noise=noise, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, b)  # same prior, different per-step noise
    c = sample_ddim(model, d, zy, None, noise=noise, generator=torch.Generator().manual_seed(1))
    e = sample_ddim(model, d, zy, None, noise=noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(c, e)  # DDIM is deterministic given the prior noise


def test_explicit_noise_equals_generator_draw() -> None:
    d = make()
    z0, zy = images(6)
    noise = torch.randn(zy.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def model(x, t, lq):
        return x.sin()

    a = sample_onestep(model, d, zy, None, noise=noise)
    b = sample_onestep(model, d, zy, None, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_ancestral_final_noise_is_skipped_at_t0() -> None:
    """The last step returns x0_hat itself (no noise), so a model that ignores its input gives z0 for any seed."""
    d = make(predict_type="residual")
    z0, zy = images(7)
    out = sample_ancestral(lambda x, t, lq: zy - z0, d, zy, None, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, z0, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["ddim", "ancestral"])
def test_guidance_hook_called_every_step_with_differentiable_x0(name: str) -> None:
    d = make(latent=True)
    _, zy = images(8)
    calls: list[tuple[list[int], torch.Tensor]] = []

    def model(x, t, lq):
        return 2.0 * x

    def guidance(z_t, t, x0_hat):
        assert z_t.requires_grad and x0_hat.shape == z_t.shape
        (grad,) = torch.autograd.grad(x0_hat.sum(), z_t)
        calls.append((t.tolist(), grad))
        return z_t

    with torch.no_grad():  # the hook gets autograd even when the caller disabled it
        guided = SAMPLERS[name](
            model, d, zy, None, generator=torch.Generator().manual_seed(0), guidance=guidance
        )
    assert [c[0] for c in calls] == [[i, i] for i in range(14, -1, -1)]
    for t, (_, grad) in zip(range(14, -1, -1), calls, strict=True):
        # x0_hat = 2 z_t / sqrt(kappa^2 eta_t + 1) in latent space, so d(sum x0_hat)/dz_t is that constant.
        expected = 2.0 / math.sqrt(4.0 * float(d.etas[t]) + 1)
        torch.testing.assert_close(grad, torch.full_like(grad, expected), rtol=1e-12, atol=0)
    plain = SAMPLERS[name](model, d, zy, None, generator=torch.Generator().manual_seed(0))
    assert torch.equal(guided, plain)  # identity guidance changes nothing
    assert not guided.requires_grad


@pytest.mark.parametrize("name", ["ddim", "ancestral"])
def test_guidance_hook_changes_the_result(name: str) -> None:
    d = make()
    z0, zy = images(9)
    target = torch.full_like(zy, 0.2)

    def model(x, t, lq):
        return x

    def pull(z_t, t, x0_hat):
        (grad,) = torch.autograd.grad((x0_hat - target).pow(2).sum(), z_t)
        return z_t - 0.2 * grad

    plain = SAMPLERS[name](model, d, zy, None, generator=torch.Generator().manual_seed(1))
    guided = SAMPLERS[name](model, d, zy, None, generator=torch.Generator().manual_seed(1), guidance=pull)
    assert not torch.allclose(plain, guided)
    assert (guided - target).pow(2).mean() < (plain - target).pow(2).mean()


def test_guidance_must_return_z_t_shape() -> None:
    d = make()
    _, zy = images(10)
    with pytest.raises(
        ValueError, match=r"guidance returned shape \(2, 3\) at t=14; it must return a corrected z_t"
    ):
        sample_ddim(lambda x, t, lq: x, d, zy, None, guidance=lambda z, t, x0: z[:, :, 0, 0])


def test_pixel_space_clamps_x0_hat_latent_never() -> None:
    _, zy = images(11)

    def model(x, t, lq):
        return torch.full_like(x, 5.0)

    g = torch.Generator
    assert torch.all(sample_onestep(model, make(latent=False), zy, None, generator=g().manual_seed(0)) == 1.0)
    assert torch.all(sample_onestep(model, make(latent=True), zy, None, generator=g().manual_seed(0)) == 5.0)
    out = sample_ddim(model, make(latent=False), zy, None, generator=g().manual_seed(0), clip_x0=False)
    assert torch.all(out == 5.0)
    assert torch.all(sample_ancestral(model, make(latent=True), zy, None, clip_x0=True) == 1.0)


def test_samplers_run_in_float32_and_show_progress(capsys: pytest.CaptureFixture[str]) -> None:
    d = make().respaced(3)
    zy = torch.zeros(1, 3, 4, 4)
    out = sample_ddim(
        lambda x, t, lq: x, d, zy, None, generator=torch.Generator().manual_seed(0), progress=True
    )
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert "ddim sampling" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_cpu_generator_gives_the_same_sample_on_cuda(name: str) -> None:
    d = make()
    z0, zy = images(12, dtype=torch.float32)

    def model(x, t, lq):
        return 0.5 * x + 0.1 * lq

    lq = torch.ones_like(zy)
    cpu = SAMPLERS[name](model, d, zy, lq, generator=torch.Generator().manual_seed(3))
    gpu = SAMPLERS[name](model, d, zy.cuda(), lq.cuda(), generator=torch.Generator().manual_seed(3))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    on_device = torch.Generator(device="cuda")
    a = SAMPLERS[name](model, d, zy.cuda(), lq.cuda(), generator=on_device.manual_seed(4))
    b = SAMPLERS[name](model, d, zy.cuda(), lq.cuda(), generator=on_device.manual_seed(4))
    assert torch.equal(a, b)


def test_ancestral_with_pre_drawn_step_noise_equals_drawing_from_the_generator() -> None:
    """``step_noise`` (one draw per step t = T-1..1, made up front) gives exactly what the generator would draw."""
    diffusion = make(steps=6)
    _, zy = images(3, dtype=torch.float32)
    model = lambda x, t, lq: x * 0.5  # noqa: E731 - any deterministic network
    drawn = sample_ancestral(model, diffusion, zy, None, generator=torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    prior = torch.randn(zy.shape, generator=g)
    steps = torch.stack([torch.randn(zy.shape, generator=g) for _ in range(diffusion.num_timesteps - 1)])
    pre = sample_ancestral(model, diffusion, zy, None, noise=prior, step_noise=steps)
    assert torch.equal(drawn, pre)
    with pytest.raises(
        ValueError, match=r"step_noise has shape \(4, 2, 3, 8, 8\); expected \(5, 2, 3, 8, 8\)"
    ):
        sample_ancestral(model, diffusion, zy, None, noise=prior, step_noise=steps[:4])


def test_the_sampler_table_calls_each_sampler_with_pre_drawn_noise() -> None:
    from difiisr.diffusion import SAMPLERS as TABLE

    diffusion = make(steps=5)
    _, zy = images(4, dtype=torch.float32)
    model = lambda x, t, lq: torch.tanh(x)  # noqa: E731
    g = torch.Generator().manual_seed(2)
    for name, fn in SAMPLERS.items():
        sampler = TABLE[name]
        draws = sampler.noise_draws(diffusion.num_timesteps)
        assert draws == (5 if name == "ancestral" else 1)
        noise = torch.randn((draws, *zy.shape), generator=g)
        got = sampler(model, diffusion, zy, None, noise)
        kwargs = {"noise": noise[0]}
        if name == "ancestral":
            kwargs["step_noise"] = noise[1:]
        assert torch.equal(got, fn(model, diffusion, zy, None, **kwargs)), name
        with pytest.raises(ValueError, match=f"{name}: noise has shape"):
            sampler(model, diffusion, zy, None, torch.cat([noise, noise[:1]]))  # one draw too many
    with pytest.raises(ValueError, match="guidance needs ddim or ancestral"):
        TABLE["onestep"](model, diffusion, zy, None, torch.zeros((1, *zy.shape)), guidance=lambda z, t, x: z)
