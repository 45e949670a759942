"""Metric values against closed forms and against scikit-image (pyiqa 0.1.12 conventions, method.md section 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from difiisr.evaluation.lpips import LPIPSAlex, LPIPSWeightsError, load_lpips_alex, lpips_distance
from difiisr.evaluation.metrics import (
    MetricInputError,
    niqe,
    psnr,
    psnr_y,
    rgb_to_y,
    ssim,
    ssim_y,
    to_unit_float,
)

GREY_GAIN_DB = 20 * math.log10(255 / 219)  # psnr_y - psnr for R=G=B images


def scene(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth thermal-like grey scene, (h,w) float in [0,1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 0.5 + 0.25 * np.sin(xx / 7.0 + seed) * np.cos(yy / 9.0) + 0.15 * (xx > w / 2)
    return np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)


def as_u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def checkerboard(h: int, w: int) -> np.ndarray:
    return np.where((np.add.outer(np.arange(h), np.arange(w)) % 2) == 0, 1.0, -1.0)


# ---------------------------------------------------------------- identical images


@pytest.mark.parametrize("form", ["grey", "rgb"])
def test_identical_images_give_infinite_psnr_and_unit_ssim(form: str) -> None:
    img = as_u8(scene())
    if form == "rgb":
        img = np.stack([img, np.roll(img, 3, axis=1), 255 - img], axis=2)
    assert psnr_y(img, img.copy()) == math.inf
    assert psnr(img, img.copy()) == math.inf
    assert ssim_y(img, img.copy()) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img, img.copy()) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- BT.601 Y


def test_rgb_to_y_is_bt601_with_studio_range() -> None:
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    y = rgb_to_y(px)[0]
    expected = np.array([16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966]) / 255
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-15)
    grey = np.array([[0, 128, 255]], dtype=np.uint8)
    np.testing.assert_allclose(
        rgb_to_y(grey)[0], (16 + 219 * grey[0].astype(np.float64) / 255) / 255, atol=1e-15
    )


def test_uint16_is_scaled_by_65535() -> None:
    img8 = as_u8(scene(seed=1))
    img16 = img8.astype(np.uint16) * 257  # x*257/65535 == x/255 exactly
    np.testing.assert_allclose(to_unit_float(img16), to_unit_float(img8), atol=1e-15)
    noisy8 = as_u8(scene(seed=1) + 0.03 * checkerboard(64, 64))
    assert psnr(noisy8.astype(np.uint16) * 257, img16) == pytest.approx(psnr(noisy8, img8), abs=1e-9)
    assert ssim_y(noisy8.astype(np.uint16) * 257, img16) == pytest.approx(ssim_y(noisy8, img8), abs=1e-12)


# ---------------------------------------------------------------- PSNR closed forms


@pytest.mark.parametrize("d", [0.002, 0.01, 0.05])
def test_psnr_y_of_exact_plus_minus_d_pattern_on_y(d: float) -> None:
    """RGB offsets of +/- d*255/219 on every channel move Y by exactly +/- d, so MSE_Y = d^2."""
    base = np.stack([scene(seed=2) * 0.4 + 0.3, scene(seed=3) * 0.4 + 0.3, scene(seed=4) * 0.4 + 0.3], axis=2)
    delta = (d * 255 / 219) * checkerboard(64, 64)[..., None]
    sr = base + delta
    assert psnr_y(sr, base) == pytest.approx(10 * math.log10(1 / d**2), abs=1e-9)
    assert psnr(sr, base) == pytest.approx(10 * math.log10(1 / (d * 255 / 219) ** 2), abs=1e-9)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_psnr_of_uint8_plus_minus_k_levels(k: int) -> None:
    hr = np.full((40, 48), 128, dtype=np.uint8) + as_u8(scene(40, 48) * 0.2)
    sr = (hr.astype(np.int32) + k * checkerboard(40, 48).astype(np.int32)).astype(np.uint8)
    expected = 10 * math.log10(255**2 / k**2)
    assert psnr(sr, hr) == pytest.approx(expected, abs=1e-9)
    assert psnr(sr, hr, data_range=255) == pytest.approx(expected, abs=1e-9)  # raw values, explicit range
    assert psnr_y(sr, hr) == pytest.approx(expected + GREY_GAIN_DB, abs=1e-9)


def test_psnr_of_gaussian_noise_matches_sigma() -> None:
    """Additive N(0, sigma^2) noise: PSNR = -20 log10(sigma) up to the sampling error of the MSE (~0.01 dB)."""
    rng = np.random.default_rng(7)
    base = scene(256, 256) * 0.5 + 0.25
    for sigma in (0.01, 0.05):
        noisy = base + rng.normal(0, sigma, base.shape)
        assert psnr(noisy, base) == pytest.approx(-20 * math.log10(sigma), abs=0.05)


@pytest.mark.parametrize("rgb", [False, True])
def test_grey_y_psnr_is_grey_psnr_plus_20log10_255_over_219(rgb: bool) -> None:
    """For R=G=B, Y = (16 + 219 g)/255, so Y errors are 219/255 of grey errors: +20 log10(255/219) = +1.3219 dB."""
    hr = as_u8(scene(seed=5))
    rng = np.random.default_rng(5)
    sr = np.clip(hr.astype(np.int32) + rng.integers(-6, 7, hr.shape), 0, 255).astype(np.uint8)
    if rgb:
        hr, sr = np.repeat(hr[..., None], 3, axis=2), np.repeat(sr[..., None], 3, axis=2)
    assert psnr_y(sr, hr) - psnr(sr, hr) == pytest.approx(GREY_GAIN_DB, abs=1e-9)
    assert abs(GREY_GAIN_DB - 1.3219) < 1e-4


# ---------------------------------------------------------------- SSIM vs scikit-image


def _skimage_ssim(x: np.ndarray, y: np.ndarray, channel_axis: int | None = None) -> float:
    # The skimage settings that reproduce pyiqa: Gaussian weights sigma 1.5 (truncate 3.5 -> 11 taps),
    # population covariance, data range 255, K1 0.01, K2 0.03; skimage crops (win-1)/2 borders = 'valid'.
    return float(
        structural_similarity(
            x,
            y,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=channel_axis,
        )
    )


def _rounded_y(img: np.ndarray) -> np.ndarray:
    return np.round(rgb_to_y(img) * 255)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_y_matches_skimage_on_rounded_y(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hr = np.stack([as_u8(scene(48, 56, seed + i)) for i in range(3)], axis=2)
    sr = np.clip(hr.astype(np.int32) + rng.integers(-25, 26, hr.shape), 0, 255).astype(np.uint8)
    ours = ssim_y(sr, hr)
    ref = _skimage_ssim(_rounded_y(sr), _rounded_y(hr))
    assert 0.2 < ours < 0.99
    assert ours == pytest.approx(ref, abs=1e-4)


def test_ssim_on_rgb_and_grey_matches_skimage() -> None:
    rng = np.random.default_rng(11)
    hr = np.stack([as_u8(scene(40, 40, i)) for i in range(3)], axis=2)
    sr = np.clip(hr.astype(np.int32) + rng.integers(-15, 16, hr.shape), 0, 255).astype(np.uint8)
    ref = _skimage_ssim(sr.astype(np.float64), hr.astype(np.float64), channel_axis=2)
    assert ssim(sr, hr) == pytest.approx(ref, abs=1e-4)
    ref_grey = _skimage_ssim(sr[..., 0].astype(np.float64), hr[..., 0].astype(np.float64))
    assert ssim(sr[..., 0], hr[..., 0]) == pytest.approx(ref_grey, abs=1e-4)


def test_ssim_clips_negative_structure_term_like_pyiqa() -> None:
    """Anti-correlated images: skimage goes negative, pyiqa (relu on the c*s term) stays >= 0."""
    hr = as_u8(scene(seed=9))
    inverted = 255 - hr
    assert _skimage_ssim(_rounded_y(inverted), _rounded_y(hr)) < 0
    assert 0.0 <= ssim_y(inverted, hr) < 0.05


def test_ssim_rejects_images_smaller_than_the_window() -> None:
    small = np.zeros((10, 30), dtype=np.uint8)
    with pytest.raises(MetricInputError, match="at least 11x11 pixels, got 30x10"):
        ssim_y(small, small)


def test_size_mismatch_names_both_sizes() -> None:
    with pytest.raises(MetricInputError, match=r"64x64 \(SR\) vs 60x64 \(HR\)"):
        psnr_y(np.zeros((64, 64), np.uint8), np.zeros((64, 60), np.uint8))


# ---------------------------------------------------------------- NIQE


def test_niqe_is_finite_and_lower_for_a_natural_image_than_for_noise() -> None:
    natural = as_u8(scene(192, 192, seed=3))
    noise = np.random.default_rng(0).integers(0, 256, (192, 192)).astype(np.uint8)
    n_nat, n_noise = niqe(natural), niqe(noise)
    assert math.isfinite(n_nat) and math.isfinite(n_noise)
    assert n_nat < n_noise - 10
    # Grey input and its R=G=B RGB form are the same image on the Y channel.
    assert niqe(np.repeat(natural[..., None], 3, axis=2)) == pytest.approx(n_nat, abs=1e-9)


def test_niqe_is_nan_below_two_blocks() -> None:
    assert math.isnan(niqe(np.zeros((128, 128), np.uint8)))


# ---------------------------------------------------------------- LPIPS from local weights


def _random_lpips_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A full LPIPS-format state dict (net.sliceN.i.*, linK.model.1.weight) with random values (no real weights here)."""
    torch.manual_seed(seed)
    model = LPIPSAlex()
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("features."):
            _, idx, kind = key.split(".")
            state[f"net.slice{slice_of[int(idx)]}.{idx}.{kind}"] = value.clone()
        else:
            k = key.split(".")[1]
            state[f"lin{k}.model.1.weight"] = value.abs().clone()  # released lins are non-negative
    return state


def test_lpips_from_local_files(tmp_path) -> None:
    state = _random_lpips_state()
    full = tmp_path / "lpips_full.pth"
    torch.save(state, full)
    model = load_lpips_alex(full)
    hr = np.stack([as_u8(scene(64, 64, i)) for i in range(3)], axis=2)
    sr = np.clip(hr.astype(np.int32) + 20 * checkerboard(64, 64)[..., None].astype(np.int32), 0, 255).astype(
        np.uint8
    )
    assert lpips_distance(model, hr, hr.copy()) == pytest.approx(0.0, abs=1e-7)
    base = lpips_distance(model, sr, hr)
    assert base > 0

    # Linear in the linear-layer weights: doubling them doubles the distance.
    doubled = {k: (2 * v if k.startswith("lin") else v) for k, v in state.items()}
    torch.save(doubled, tmp_path / "lpips_x2.pth")
    assert lpips_distance(load_lpips_alex(tmp_path / "lpips_x2.pth"), sr, hr) == pytest.approx(
        2 * base, rel=1e-5
    )

    # lpips-package layout: linear layers in one file, torchvision AlexNet features in another -> same model.
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, tmp_path / "alex.pth")
    tv = {f"features.{k.split('.', 2)[2]}": v for k, v in state.items() if k.startswith("net.")}
    torch.save({"state_dict": tv}, tmp_path / "alexnet_tv.pth")
    split = load_lpips_alex([tmp_path / "alex.pth", tmp_path / "alexnet_tv.pth"])
    assert lpips_distance(split, sr, hr) == pytest.approx(base, rel=1e-6)


def test_lpips_refuses_incomplete_weights(tmp_path) -> None:
    state = _random_lpips_state()
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, tmp_path / "alex.pth")
    with pytest.raises(LPIPSWeightsError, match="AlexNet trunk is missing"):
        load_lpips_alex(tmp_path / "alex.pth")
    with pytest.raises(LPIPSWeightsError, match="not found"):
        load_lpips_alex(tmp_path / "nope.pth")
