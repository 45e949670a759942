"""ResShiftDiffusion against closed forms: forward process, prior, posterior, DDIM identities, prediction types."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from difiisr.diffusion import DiffusionConfig, ResShiftDiffusion, exponential_sqrt_etas

PREDICT_TYPES = ["xstart", "residual", "epsilon", "epsilon_scale"]
KAPPA = 2.0


def make(**overrides) -> ResShiftDiffusion:
    return ResShiftDiffusion(dataclasses.replace(DiffusionConfig(), **overrides))


def tensors(seed: int, shape=(3, 3, 8, 8)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    zy = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    return z0, zy, noise


def col(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1, 1, 1, 1)


def test_tables_follow_schedule() -> None:
    d = make()
    expected = exponential_sqrt_etas(15, 0.04, 0.99, 2.0, 0.3, True)
    assert d.num_timesteps == 15 and d.sqrt_etas.dtype == torch.float64
    np.testing.assert_array_equal(d.sqrt_etas.numpy(), expected)
    np.testing.assert_allclose(d.etas.numpy(), expected**2, rtol=1e-15)
    np.testing.assert_allclose(d.etas_prev.numpy(), np.append(0.0, expected[:-1] ** 2), rtol=1e-15)
    assert float(d.alphas.sum()) == pytest.approx(float(d.etas[-1]), rel=1e-14)
    assert float(d.posterior_variance[0]) == 0.0
    assert float(d.posterior_log_variance_clipped[0]) == pytest.approx(
        math.log(float(d.posterior_variance[1]))
    )
    assert d.timestep_map.tolist() == list(range(15))


def test_q_sample_with_zero_noise_is_the_shifted_mean() -> None:
    d = make()
    z0, zy, _ = tensors(0)
    t = torch.tensor([0, 7, 14])
    out = d.q_sample(z0, zy, t, torch.zeros_like(z0))
    eta = col([float(d.etas[i]) for i in (0, 7, 14)])
    torch.testing.assert_close(out, z0 + eta * (zy - z0), rtol=0, atol=1e-15)
    mean, var = d.q_mean_variance(z0, zy, t)
    torch.testing.assert_close(mean, out, rtol=0, atol=0)
    torch.testing.assert_close(var, KAPPA**2 * eta, rtol=1e-15, atol=0)


def test_q_sample_noise_term_closed_form() -> None:
    d = make()
    z0, zy, noise = tensors(1)
    out = d.q_sample(z0, zy, 5, noise)
    eta = float(d.etas[5])
    torch.testing.assert_close(out, z0 + eta * (zy - z0) + KAPPA * math.sqrt(eta) * noise, rtol=0, atol=1e-14)


def test_q_sample_monte_carlo_moments() -> None:
    d = make()
    n = 200_000
    z0 = torch.full((1, 1, 1, n), 0.3, dtype=torch.float64)
    zy = torch.full_like(z0, -0.5)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    samples = d.q_sample(z0, zy, 9, noise)
    eta = float(d.etas[9])
    mu, sigma = 0.3 + eta * (-0.8), KAPPA * math.sqrt(eta)
    assert abs(float(samples.mean()) - mu) < 5 * sigma / math.sqrt(n)
    assert abs(float(samples.std()) - sigma) < 5 * sigma / math.sqrt(2 * n)


def test_prior_sample_mean_and_std() -> None:
    d = make()
    zy = torch.linspace(-1, 1, 4, dtype=torch.float64).reshape(4, 1, 1, 1).expand(4, 1, 256, 256).contiguous()
    samples = d.prior_sample(zy, generator=torch.Generator().manual_seed(3))
    sigma = KAPPA * float(d.sqrt_etas[-1])
    assert sigma == pytest.approx(1.98)
    n = 256 * 256
    for b in range(4):
        deviation = samples[b] - zy[b]
        assert abs(float(deviation.mean())) < 5 * sigma / math.sqrt(n)
        assert abs(float(deviation.std()) - sigma) < 5 * sigma / math.sqrt(2 * n)


def test_prior_sample_with_explicit_noise_and_generator_reproducibility() -> None:
    d = make()
    z0, zy, noise = tensors(4)
    torch.testing.assert_close(d.prior_sample(zy, noise=noise), zy + KAPPA * 0.99 * noise, rtol=0, atol=1e-14)
    a = d.prior_sample(zy, generator=torch.Generator().manual_seed(7))
    b = d.prior_sample(zy, generator=torch.Generator().manual_seed(7))
    c = d.prior_sample(zy, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match=r"noise has shape \(1, 3, 8, 8\); expected \(3, 3, 8, 8\) like zy"):
        d.prior_sample(zy, noise=noise[:1])


@pytest.mark.parametrize("t", [1, 4, 14])
def test_posterior_matches_gaussian_conditioning(t: int) -> None:
    """q(z_{t-1} | z_t, z_0) from Bayes: prior N(z0 + eta_{t-1} r, k^2 eta_{t-1}), step N(z_{t-1} + alpha_t r, k^2 alpha_t)."""
    d = make()
    z0, zy, noise = tensors(5)
    z_t = d.q_sample(z0, zy, t, noise)
    eta_prev, eta = float(d.etas[t - 1]), float(d.etas[t])
    alpha = eta - eta_prev
    r = zy - z0
    prior_mean, prior_var = z0 + eta_prev * r, KAPPA**2 * eta_prev
    step_var = KAPPA**2 * alpha
    var = 1 / (1 / prior_var + 1 / step_var)
    mean = var * (prior_mean / prior_var + (z_t - alpha * r) / step_var)
    got_mean, got_var = d.posterior_mean_variance(z0, z_t, t)
    torch.testing.assert_close(got_mean, mean, rtol=0, atol=1e-12)
    assert got_var.shape == (3, 1, 1, 1)
    torch.testing.assert_close(got_var, torch.full_like(got_var, var), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        got_var, torch.full_like(got_var, KAPPA**2 * eta_prev / eta * alpha), rtol=1e-12, atol=0
    )


def test_posterior_at_t0_returns_x0_without_variance() -> None:
    d = make()
    z0, zy, noise = tensors(6)
    mean, var = d.posterior_mean_variance(z0, d.q_sample(z0, zy, 0, noise), 0)
    torch.testing.assert_close(mean, z0, rtol=0, atol=1e-15)
    assert torch.all(var == 0)


def test_ancestral_step_preserves_the_forward_marginal() -> None:
    """z_t ~ q(z_t|z0) then z_{t-1} ~ q(z_{t-1}|z_t, z0) gives z_{t-1} ~ q(z_{t-1}|z0) (moments, 200k samples)."""
    d = make()
    n, t = 200_000, 6
    g = torch.Generator().manual_seed(9)
    z0 = torch.full((1, 1, 1, n), 0.25, dtype=torch.float64)
    zy = torch.full_like(z0, -0.75)
    z_t = d.q_sample(z0, zy, t, torch.randn(z0.shape, generator=g, dtype=torch.float64))
    z_prev = d.ancestral_step(z0, z_t, t, torch.randn(z0.shape, generator=g, dtype=torch.float64))
    eta = float(d.etas[t - 1])
    mu, sigma = 0.25 + eta * (-1.0), KAPPA * math.sqrt(eta)
    assert abs(float(z_prev.mean()) - mu) < 5 * sigma / math.sqrt(n)
    assert abs(float(z_prev.std()) - sigma) < 5 * sigma / math.sqrt(2 * n)


@pytest.mark.parametrize("t", list(range(1, 15)))
def test_ddim_step_with_true_x0_moves_along_the_same_noise(t: int) -> None:
    d = make()
    z0, zy, eps = tensors(10 + t)
    z_t = d.q_sample(z0, zy, t, eps)
    torch.testing.assert_close(
        d.ddim_step(z0, z_t, zy, t), d.q_sample(z0, zy, t - 1, eps), rtol=0, atol=1e-12
    )


def test_ddim_step_at_t0_returns_x0_hat() -> None:
    d = make()
    z0, zy, eps = tensors(30)
    k, m, j = d.ddim_coefficients(0, z0)
    assert (float(k[0]), float(m[0]), float(j[0])) == (1.0, 0.0, 0.0)
    torch.testing.assert_close(d.ddim_step(z0, d.q_sample(z0, zy, 0, eps), zy, 0), z0, rtol=0, atol=0)


def test_ddim_coefficients_formula_and_partition_of_unity() -> None:
    d = make()
    like = torch.zeros(15, 1, 2, 2, dtype=torch.float64)
    k, m, j = d.ddim_coefficients(torch.arange(15), like)
    torch.testing.assert_close(k + m + j, torch.ones_like(k), rtol=0, atol=1e-15)
    eta, eta_prev = float(d.etas[5]), float(d.etas[4])
    assert float(k[5]) == pytest.approx(
        1 - eta_prev + math.sqrt(eta_prev * eta) - math.sqrt(eta_prev / eta), abs=1e-15
    )
    assert float(m[5]) == pytest.approx(math.sqrt(eta_prev / eta), abs=1e-15)
    assert float(j[5]) == pytest.approx(eta_prev - math.sqrt(eta_prev * eta), abs=1e-15)
    c = torch.full((1, 3, 4, 4), 0.37, dtype=torch.float64)
    for t in range(15):
        torch.testing.assert_close(d.ddim_step(c, c, c, t), c, rtol=0, atol=1e-15)


@pytest.mark.parametrize("latent", [True, False])
def test_scale_input_closed_forms(latent: bool) -> None:
    d = make(latent=latent)
    z = torch.full((2, 3, 4, 4), 1.5, dtype=torch.float64)
    out = d.scale_input(z, torch.tensor([0, 14]))
    for b, t in enumerate((0, 14)):
        eta = float(d.etas[t])
        scale = math.sqrt(KAPPA**2 * eta + 1) if latent else 3 * KAPPA * math.sqrt(eta) + 1
        torch.testing.assert_close(out[b], torch.full_like(out[b], 1.5 / scale), rtol=1e-15, atol=0)
    assert torch.equal(make(latent=latent, normalize_input=False).scale_input(z, 14), z)


def oracle_output(d: ResShiftDiffusion, kind: str, z0, zy, t: int, noise) -> torch.Tensor:
    """The network output f that encodes x0 = z0 for each prediction type (written from method.md)."""
    eta = float(d.etas[t])
    return {
        "xstart": z0,
        "residual": zy - z0,
        "epsilon": noise,
        "epsilon_scale": KAPPA * math.sqrt(eta) * noise,
    }[kind]


@pytest.mark.parametrize("kind", PREDICT_TYPES)
@pytest.mark.parametrize("t", [0, 6, 14])
def test_predict_x0_inverts_each_prediction_type(kind: str, t: int) -> None:
    d = make(predict_type=kind)
    z0, zy, noise = tensors(40 + t)
    z_t = d.q_sample(z0, zy, t, noise)
    f = oracle_output(d, kind, z0, zy, t, noise)
    torch.testing.assert_close(d.predict_x0(f, z_t, zy, t), z0, rtol=0, atol=1e-12)
    torch.testing.assert_close(d.training_target(z0, zy, t, noise), f, rtol=0, atol=1e-15)


def test_predict_x0_epsilon_formula_by_hand() -> None:
    d = make(predict_type="epsilon")
    z_t = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    zy = torch.full_like(z_t, -0.25)
    f = torch.full_like(z_t, 0.1)
    eta = float(d.etas[3])
    expected = (0.5 - KAPPA * math.sqrt(eta) * 0.1 - eta * -0.25) / (1 - eta)
    assert float(d.predict_x0(f, z_t, zy, 3)) == pytest.approx(expected, abs=1e-15)


class Recorder:
    """A callable model that records its inputs and returns a fixed function of them."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.calls: list[tuple[torch.Tensor, torch.Tensor, object]] = []

    def __call__(self, x, t, lq):
        self.calls.append((x.clone(), t.clone(), lq))
        return self.fn(x, t, lq)


@pytest.mark.parametrize("kind", PREDICT_TYPES)
def test_training_losses_zero_for_oracle_model(kind: str) -> None:
    d = make(predict_type=kind)
    z0, zy, noise = tensors(50)
    t = torch.tensor([0, 7, 14])
    target = d.training_target(z0, zy, t, noise)
    lq = object()
    model = Recorder(lambda x, tt, lq_: target)
    out = d.training_losses(model, z0, zy, t, lq=lq, noise=noise)
    assert set(out) == {"loss", "mse", "pred_x0", "x0_hat", "z_t"}
    assert out["loss"].shape == (3,) and out["mse"].shape == (3,)
    assert torch.all(out["loss"] == 0) and torch.all(out["mse"] == 0)
    torch.testing.assert_close(out["pred_x0"], z0, rtol=0, atol=1e-12)
    ((x_in, t_in, lq_in),) = model.calls
    assert t_in.tolist() == [0, 7, 14] and t_in.dtype == torch.int64 and lq_in is lq
    torch.testing.assert_close(x_in, d.scale_input(d.q_sample(z0, zy, t, noise), t), rtol=0, atol=0)


@pytest.mark.parametrize("kind", PREDICT_TYPES)
def test_training_losses_values_for_a_zero_model(kind: str) -> None:
    d = make(predict_type=kind)
    z0, zy, noise = tensors(60)
    t = torch.tensor([2, 9, 13])
    out = d.training_losses(lambda x, tt, lq: torch.zeros_like(x), z0, zy, t, noise=noise)
    mse = d.training_target(z0, zy, t, noise).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out["mse"], mse, rtol=1e-12, atol=0)
    expected_loss = mse / (KAPPA**2 * d.etas[t]) if kind == "epsilon_scale" else mse
    torch.testing.assert_close(out["loss"], expected_loss, rtol=1e-12, atol=0)


def test_training_losses_draws_noise_from_generator_and_backpropagates() -> None:
    d = make()
    z0, zy, _ = tensors(70)
    weight = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    def model(x, t, lq):
        return weight * x

    a = d.training_losses(model, z0, zy, 5, generator=torch.Generator().manual_seed(1))
    b = d.training_losses(model, z0, zy, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["loss"], b["loss"])
    a["loss"].mean().backward()
    assert weight.grad is not None and float(weight.grad) != 0.0


def test_respaced_process_keeps_original_levels_and_maps_indices() -> None:
    full = make()
    spaced = full.respaced(4)
    assert spaced.num_timesteps == 4 and spaced.original_num_timesteps == 15
    assert spaced.timestep_map.tolist() == [0, 3, 7, 11]
    torch.testing.assert_close(spaced.sqrt_etas, full.sqrt_etas[[0, 3, 7, 11]], rtol=0, atol=0)
    np.testing.assert_allclose(spaced.etas_prev.numpy(), [0.0, *full.etas[[0, 3, 7]].tolist()], rtol=1e-15)
    assert spaced.model_timesteps(torch.tensor([3, 0, 2])).tolist() == [11, 0, 7]
    same = ResShiftDiffusion(dataclasses.replace(DiffusionConfig(), timestep_respacing=4))
    assert same.timestep_map.tolist() == [0, 3, 7, 11] and torch.equal(same.sqrt_etas, spaced.sqrt_etas)
    assert full.respaced(15).timestep_map.tolist() == list(range(15))
    assert spaced.respaced(15).timestep_map.tolist() == list(range(15))  # always from the original schedule


def test_respaced_training_calls_model_with_original_index() -> None:
    spaced = make().respaced(5)
    z0, zy, noise = tensors(80)
    model = Recorder(lambda x, t, lq: torch.zeros_like(x))
    spaced.training_losses(model, z0, zy, torch.tensor([4, 1, 0]), noise=noise)
    assert model.calls[0][1].tolist() == [12, 3, 0]
    eta = float(spaced.etas[4])
    assert eta == pytest.approx(float(make().etas[12]), rel=1e-15)


def test_timestep_errors_are_readable() -> None:
    d = make()
    z0, zy, noise = tensors(90)
    with pytest.raises(IndexError, match=r"t=15; step indices must be in 0..14"):
        d.q_sample(z0, zy, 15, noise)
    with pytest.raises(IndexError, match=r"t holds \[0, 3, 20\]; step indices must be in 0..3"):
        d.respaced(4).q_sample(z0, zy, torch.tensor([0, 3, 20]), noise)
    with pytest.raises(TypeError, match="t must hold integer step indices, got dtype torch.float32"):
        d.q_sample(z0, zy, torch.tensor([1.0, 2.0, 3.0]), noise)
    with pytest.raises(ValueError, match=r"t has shape \(2,\); expected \(3,\) to match the batch"):
        d.q_sample(z0, zy, torch.tensor([1, 2]), noise)
    with pytest.raises(ValueError, match=r"model returned shape \(3, 6, 8, 8\); expected \(3, 3, 8, 8\)"):
        d.training_losses(lambda x, t, lq: torch.cat([x, x], 1), z0, zy, 1, noise=noise)


def test_low_precision_state_is_promoted_to_float32() -> None:
    d = make()
    zy = torch.zeros(1, 3, 4, 4, dtype=torch.bfloat16)
    z = d.prior_sample(zy, generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float32
