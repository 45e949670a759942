"""Gradient guidance math: each term's gradient against finite differences (float64), the step-size schedule, the
spectral prior's known answers, and the sampler hook (scale 0 is exact; guidance lowers the LR error)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from difiisr.degradation.bicubic import bicubic_downsample_tensor
from difiisr.diffusion import DiffusionConfig, ResShiftDiffusion, sample_ancestral, sample_ddim
from difiisr.diffusion.guidance import (
    MIN_PRIOR_SIDE,
    SpectralPriorError,
    guidance_loss,
    log_amplitude_distance,
    lr_consistency,
    lr_consistency_guidance,
    lr_consistency_x0_guidance,
    power_law_fit,
    spectral_prior,
    spectral_target,
    step_sizes,
)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1


def power_law_image(size: int, alpha: float, seed: int, channels: int = 1) -> torch.Tensor:
    """``(1,channels,size,size)`` float64 grey image whose power spectrum is ~ f^-alpha (random phases), in [-1,1]."""
    g = torch.Generator().manual_seed(seed)
    f = torch.sqrt(torch.fft.fftfreq(size)[:, None] ** 2 + torch.fft.fftfreq(size)[None, :] ** 2).double()
    amplitude = torch.where(f > 0, f.clamp_min(1e-9) ** (-alpha / 2), torch.zeros_like(f))
    phase = torch.rand((size, size), generator=g, dtype=torch.float64) * 2 * math.pi
    img = torch.fft.ifft2(amplitude * torch.exp(1j * phase)).real
    img = img / img.abs().max() * 0.9
    return img.expand(1, channels, size, size).clone()


def central_differences(loss, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:  # noqa: ANN001
    """d loss / d x by central differences, one element at a time (float64 ``x``)."""
    numeric = torch.zeros_like(x)
    flat = numeric.view(-1)
    for i in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[i] = h
        flat[i] = (loss(x + step.view_as(x)) - loss(x - step.view_as(x))) / (2 * h)
    return numeric


# ---------------------------------------------------------------------------------------------- gradients


def test_lr_consistency_value_and_gradient_match_finite_differences() -> None:
    sr, y = rand(1, 2, 16, 16, seed=1), rand(1, 2, 4, 4, seed=2)
    expected = (bicubic_downsample_tensor(sr, 4) - y).pow(2).sum()
    torch.testing.assert_close(lr_consistency(sr, y, 4), expected.reshape(1))
    assert gradcheck(lambda x: lr_consistency(x, y, 4), (sr.requires_grad_(),), eps=1e-6, atol=1e-7)
    # a consistent SR has zero loss: the bicubic upsample is not, A(upsampled y) != y
    assert float(lr_consistency(sr.detach(), bicubic_downsample_tensor(sr.detach(), 4), 4)) == 0.0


def test_spectral_prior_gradient_matches_finite_differences() -> None:
    y = power_law_image(MIN_PRIOR_SIDE, 2.0, seed=3)
    sr = rand(1, 1, 2 * MIN_PRIOR_SIDE, 2 * MIN_PRIOR_SIDE, seed=4) * 0.5
    target = spectral_target(y, 2)
    lr_pixels = MIN_PRIOR_SIDE**2
    assert gradcheck(
        lambda x: spectral_prior(x, *target, lr_pixels), (sr.requires_grad_(),), eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize(("power", "band"), [(0.0, None), (1.5, None), (0.0, (0.2, 0.6))])
def test_log_amplitude_distance_gradient_matches_finite_differences(power: float, band) -> None:
    x, ref = rand(2, 2, 8, 8, seed=5), rand(2, 2, 8, 8, seed=6)
    assert gradcheck(
        lambda v: log_amplitude_distance(v, ref, radial_power=power, band=band),
        (x.requires_grad_(),),
        eps=1e-6,
        atol=1e-6,
    )


def test_log_amplitude_distance_values() -> None:
    x = rand(1, 1, 8, 8, seed=7)
    assert float(log_amplitude_distance(x, x)) == 0.0
    spectrum = torch.log1p(torch.fft.fft2(x, norm="ortho").abs())
    expected = (spectrum - torch.log1p(torch.fft.fft2(0.5 * x, norm="ortho").abs())).abs().mean()
    torch.testing.assert_close(log_amplitude_distance(x, 0.5 * x), expected, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="no frequency of a 8x8 image"):
        log_amplitude_distance(x, x, band=(0.9, 1.0))


def test_the_hook_moves_z_by_lambda_times_the_finite_difference_gradient() -> None:
    """The whole chain z_t -> x0_hat (a smooth stand-in network) -> L = C + mu S, against central differences."""
    weight = rand(1, 1, 3, 3, seed=8) * 0.3

    def x0_of(z: torch.Tensor) -> torch.Tensor:  # a smooth nonlinear "denoiser" on (1,1,32,32)
        return torch.tanh(z + torch.nn.functional.conv2d(z, weight, padding=1))

    y = power_law_image(MIN_PRIOR_SIDE, 2.0, seed=9)
    z = rand(1, 1, 2 * MIN_PRIOR_SIDE, 2 * MIN_PRIOR_SIDE, seed=10) * 0.5
    mu, lam = 0.01, 0.7
    lambdas = torch.tensor([0.0, lam], dtype=torch.float64)
    hook = lr_consistency_guidance(y, lambda v: v, lambdas, sf=2, mu=mu)
    z_in = z.clone().requires_grad_(True)
    moved = hook(z_in, torch.tensor([1]), x0_of(z_in)).detach()
    target = spectral_target(y, 2)

    numeric = central_differences(lambda v: float(guidance_loss(x0_of(v), y, 2, mu, target)), z)
    torch.testing.assert_close((z - moved) / lam, numeric, rtol=1e-5, atol=1e-6)
    # lambda 0 at t = 0: unchanged, nothing computed
    assert hook(z_in, torch.tensor([0]), x0_of(z_in)) is z_in


def test_the_x0_hook_moves_the_estimate_by_lambda_times_the_finite_difference_gradient() -> None:
    """Estimate space: x0_hat -> D (a smooth stand-in decoder) -> L = C + mu S, against central differences; the
    hook sees no graph from the denoiser and takes its own gradient."""
    weight = rand(1, 1, 3, 3, seed=16) * 0.3

    def decode(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x + torch.nn.functional.conv2d(x, weight, padding=1))

    y = power_law_image(MIN_PRIOR_SIDE, 2.0, seed=17)
    x0 = rand(1, 1, 2 * MIN_PRIOR_SIDE, 2 * MIN_PRIOR_SIDE, seed=18) * 0.5
    mu, lam = 0.01, 0.3
    hook = lr_consistency_x0_guidance(y, decode, torch.tensor([lam, 0.0], dtype=torch.float64), sf=2, mu=mu)
    with torch.no_grad():  # as in the Upscaler: the hook enables autograd itself
        moved = hook(x0, torch.tensor([0]))
    assert not moved.requires_grad
    target = spectral_target(y, 2)

    numeric = central_differences(lambda v: float(guidance_loss(decode(v), y, 2, mu, target)), x0)
    torch.testing.assert_close((x0 - moved) / lam, numeric, rtol=1e-5, atol=1e-6)
    assert hook(x0, torch.tensor([1])) is x0  # lambda 0: unchanged, nothing computed


# ---------------------------------------------------------------------------------------------- schedule


def test_step_sizes_per_schedule() -> None:
    etas = torch.tensor([0.01, 0.04, 0.25, 0.81], dtype=torch.float64)
    torch.testing.assert_close(step_sizes("constant", 2.0, etas), torch.tensor([0, 2, 2, 2.0]).double())
    torch.testing.assert_close(step_sizes("linear", 3.0, etas), torch.tensor([0, 3, 2, 1.0]).double())
    torch.testing.assert_close(step_sizes("eta", 1.0, etas), torch.tensor([0, 1, 6.25, 20.25]).double())
    torch.testing.assert_close(step_sizes("constant", 2.0, etas, 2), torch.tensor([0, 2, 2, 0.0]).double())
    assert not step_sizes("constant", 0.0, etas).any()
    with pytest.raises(ValueError, match="a 4-step process can guide 1..3 steps in space xt"):
        step_sizes("constant", 1.0, etas, 4)
    # estimate space: t = 0 is guided too (its corrected x0_hat is the output); the eta factor is relative to eta_0
    x0 = {"space": "x0"}
    torch.testing.assert_close(step_sizes("constant", 2.0, etas, **x0), torch.tensor([2, 2, 2, 2.0]).double())
    torch.testing.assert_close(
        step_sizes("constant", 2.0, etas, 2, **x0), torch.tensor([2, 2, 0, 0.0]).double()
    )
    torch.testing.assert_close(step_sizes("eta", 1.0, etas, **x0), torch.tensor([1, 4, 25, 81.0]).double())
    with pytest.raises(ValueError, match="can guide 1..4 steps in space x0"):
        step_sizes("constant", 1.0, etas, 5, **x0)
    with pytest.raises(ValueError, match="space 'z' is unknown"):
        step_sizes("constant", 1.0, etas, space="z")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schedule 'cosine' is unknown"):
        step_sizes("cosine", 1.0, etas)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        step_sizes("constant", -1.0, etas)


# ---------------------------------------------------------------------------------------------- spectral prior


@pytest.mark.parametrize("alpha", [1.5, 2.5, 3.0])
def test_power_law_fit_recovers_a_known_exponent(alpha: float) -> None:
    img = power_law_image(64, alpha, seed=11)
    _, fitted = power_law_fit(img)
    assert abs(float(fitted[0]) - alpha) < 0.2, (alpha, float(fitted[0]))


def test_spectral_prior_prefers_the_true_spectrum_to_a_blurred_one() -> None:
    """Known answer: for a power-law HR, the prior built from its bicubic LR scores the HR far better than the
    bicubic upsampling of that LR (which lacks the high frequencies) or the HR plus white noise (too much of
    them). It is not 0 for the HR: the antialiasing filter attenuates the LR's fit band a little, so the
    extrapolated target sits ~0.2 below the true log power."""
    hr = power_law_image(128, 2.0, seed=12, channels=3)
    y = bicubic_downsample_tensor(hr, 4)
    target = spectral_target(y, 4)
    pixels = y.shape[-2] * y.shape[-1]
    up = torch.nn.functional.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False)
    noisy = hr + 0.5 * rand(*hr.shape, seed=13)  # white noise of std 0.29
    s_hr, s_up, s_noisy = (float(spectral_prior(x, *target, pixels)[0]) for x in (hr, up, noisy))
    assert s_hr < 0.01 * s_up and s_hr < 0.2 * s_noisy, (s_hr, s_up, s_noisy)
    assert s_hr / pixels < 0.1  # mean squared log-power error per ring below 0.1


def test_spectral_prior_refuses_too_small_an_lr() -> None:
    with pytest.raises(SpectralPriorError, match="at least 16x16 pixels.*raise the tile size"):
        spectral_target(rand(1, 1, 12, 20), 4)


# ---------------------------------------------------------------------------------------------- in a sampler


def identity_model(diffusion: ResShiftDiffusion):
    """x0_hat = z_t (undoes the input scaling): a stand-in denoiser that only passes its state through."""

    def model(x: torch.Tensor, t: torch.Tensor, lq: object) -> torch.Tensor:
        eta = diffusion.etas.to(x.dtype)[t].reshape(-1, 1, 1, 1)
        return x * (3 * diffusion.kappa * eta.sqrt() + 1)

    return model


def pixel_process() -> ResShiftDiffusion:
    cfg = DiffusionConfig(steps=6, min_noise_level=0.2, latent=False, cap_sqrt_eta=False)
    return ResShiftDiffusion(cfg)


@pytest.mark.parametrize("sampler", [sample_ddim, sample_ancestral])
def test_scale_zero_reproduces_the_unguided_sample_exactly(sampler) -> None:
    from difiisr.models.preset import load_preset
    from difiisr.models.swin_unet import SwinUNet

    preset = load_preset("tiny", ["unet.zero_init_output=false"])  # a random net whose output depends on z_t
    torch.manual_seed(0)
    unet = SwinUNet(preset.unet).eval().requires_grad_(False)
    diffusion = ResShiftDiffusion(preset.diffusion)
    y = rand(1, 3, 16, 16, seed=14).float()
    zy = torch.nn.functional.interpolate(y, scale_factor=4, mode="bicubic")

    def model(x, t, lq):
        return unet(x, t, lq)

    zeros = torch.zeros(diffusion.num_timesteps)
    hook = lr_consistency_guidance(y, lambda v: v, zeros, sf=4)
    x0_hook = lr_consistency_x0_guidance(y, lambda v: v, zeros, sf=4)
    plain = sampler(model, diffusion, zy, zy, generator=torch.Generator().manual_seed(3))
    guided = sampler(model, diffusion, zy, zy, generator=torch.Generator().manual_seed(3), guidance=hook)
    x0_guided = sampler(
        model, diffusion, zy, zy, generator=torch.Generator().manual_seed(3), x0_guidance=x0_hook
    )
    assert torch.equal(plain, guided) and torch.equal(plain, x0_guided)


@pytest.mark.parametrize("sampler", [sample_ddim, sample_ancestral])
def test_guidance_lowers_the_lr_consistency_error_on_a_known_problem(sampler) -> None:
    """Known answer: HR with LR y = A(HR); a denoiser that only passes z_t through leaves prior noise in the
    sample, so it is not consistent with y. Guidance lowers ||A(sample) - y||^2, more with a larger lambda, to
    under 15% of the unguided error at lambda = 8 (the correction is scaled by the update's weight on z_t)."""
    diffusion = pixel_process()
    hr = power_law_image(64, 2.0, seed=15, channels=3).float()
    y = bicubic_downsample_tensor(hr, 4)
    zy = torch.nn.functional.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False)
    model = identity_model(diffusion)

    def error(scale: float) -> float:
        hook = lr_consistency_guidance(y, lambda v: v, step_sizes("constant", scale, diffusion.etas), sf=4)
        out = sampler(
            model,
            diffusion,
            zy,
            None,
            generator=torch.Generator().manual_seed(4),
            guidance=hook,
            clip_x0=False,
        )
        return float(lr_consistency(out, y, 4))

    plain, weak, strong = error(0.0), error(2.0), error(8.0)
    assert strong < weak < plain and strong < 0.15 * plain, (plain, weak, strong)


@pytest.mark.parametrize("sampler", [sample_ddim, sample_ancestral])
def test_estimate_space_guidance_reaches_the_output_of_a_denoiser_that_ignores_z_t(sampler) -> None:
    """Known answer for the failure mode of z_t guidance: a denoiser whose x0_hat does not depend on z_t at all
    (it returns the bicubic upsampling, as a residual model starts) cannot be moved by a z_t correction, since the
    last update's output is x0_hat itself. Estimate-space guidance corrects x0_hat, including at t = 0. This
    model forgets every earlier correction (its x0_hat ignores z_t), so only the last one acts: one gradient step
    of lambda = 8 = sf^2 / 2 from bicubic(y) cuts ||A(sample) - y||^2 to about a fifth."""
    diffusion = pixel_process()
    hr = power_law_image(64, 2.0, seed=19, channels=3).float()
    y = bicubic_downsample_tensor(hr, 4)
    zy = torch.nn.functional.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False)

    def blind_model(x: torch.Tensor, t: torch.Tensor, lq: object) -> torch.Tensor:
        return zy.expand_as(x).clone()  # x0_hat = bicubic(y) whatever z_t is

    def run(**hooks: object) -> float:
        out = sampler(
            blind_model,
            diffusion,
            zy,
            None,
            generator=torch.Generator().manual_seed(5),
            clip_x0=False,
            **hooks,
        )
        return float(lr_consistency(out, y, 4))

    plain = run()
    lambdas = step_sizes("constant", 8.0, diffusion.etas, space="x0")
    in_x0 = run(x0_guidance=lr_consistency_x0_guidance(y, lambda v: v, lambdas, sf=4))
    in_xt = run(
        guidance=lr_consistency_guidance(y, lambda v: v, step_sizes("constant", 8.0, diffusion.etas), sf=4)
    )
    assert in_xt == pytest.approx(plain, rel=1e-6)  # z_t guidance cannot move this output
    assert in_x0 < 0.3 * plain, (plain, in_x0)
