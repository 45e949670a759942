"""Upscaler on the tiny pixel-space preset with random weights (CPU): geometry, tiling, seeds, bit depths."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from difiisr.diffusion import sample_ancestral, sample_onestep
from difiisr.inference.settings import InferenceSettings, SettingsError
from difiisr.inference.tiling import plan_tiles, reflect_pad
from difiisr.inference.upscaler import UpscaleError, Upscaler, resolve_device, resolve_dtype
from difiisr.io import image_to_tensor, tensor_to_image
from difiisr.models.preset import ModelPreset, load_preset


@pytest.fixture(scope="module")
def tiny() -> ModelPreset:
    # The shipped tiny preset zero-initialises its output layer, so a fresh network outputs exactly its bicubic
    # input whatever the seed or tiling; these tests need random weights whose output depends on the noise.
    return load_preset("tiny", ["unet.zero_init_output=false"])


@pytest.fixture(scope="module")
def upscaler(tiny: ModelPreset) -> Upscaler:
    return Upscaler.from_random(tiny, seed=0, device="cpu")


def smooth_lr(height: int, width: int) -> torch.Tensor:
    """A smooth (1,3,H,W) grey test image in [-1,1]: ramps plus one slow sine."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    img = 0.5 * xx - 0.3 * yy + 0.2 * torch.sin(2 * math.pi * xx) - 0.1
    return img.expand(1, 3, height, width).contiguous()


def test_geometry_of_the_tiny_preset(upscaler: Upscaler) -> None:
    assert upscaler.sf == 4
    assert upscaler.net_scale == 4  # pixel space: the network runs at HR size
    assert upscaler.unet.size_multiple == 64
    assert upscaler.lr_multiple == 16
    assert resolve_dtype(upscaler.device, InferenceSettings().precision) == torch.float32
    assert upscaler.device == torch.device("cpu")


@pytest.mark.parametrize("sampler", ["onestep", "ddim", "ancestral"])
def test_every_sampler_gives_x4_in_range(upscaler: Upscaler, sampler: str) -> None:
    y = torch.rand(1, 3, 16, 12, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = upscaler.upscale_tensor(y, InferenceSettings(sampler=sampler, seed=3))
    assert out.shape == (1, 3, 64, 48) and out.dtype == torch.float32
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0


def test_padding_to_the_size_multiple_is_cropped_back(upscaler: Upscaler) -> None:
    y = torch.rand(2, 3, 20, 13, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = upscaler.upscale_tensor(y, InferenceSettings(seed=3))
    assert out.shape == (2, 3, 80, 52)
    # 20x13 is reflect-padded to 32x16 (multiples of 16) and cropped back: same as upscaling the padded image
    padded = upscaler.upscale_tensor(reflect_pad(y, 32, 16), InferenceSettings(seed=3))
    assert torch.allclose(out, padded[:, :, :80, :52], atol=1e-5)


def test_onestep_equals_the_diffusion_sampler_with_the_same_seed(upscaler: Upscaler) -> None:
    y = smooth_lr(16, 32)
    out = upscaler.upscale_tensor(y, InferenceSettings(sampler="onestep", seed=11))
    zy = F.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False)
    model = lambda x, t, lq: upscaler.unet(x, t, lq)  # noqa: E731
    with torch.inference_mode():
        ref = sample_onestep(model, upscaler.diffusion(), zy, zy, generator=torch.Generator().manual_seed(11))
    assert torch.allclose(out, ref.clamp(-1, 1), atol=1e-5)


def test_ancestral_equals_the_diffusion_sampler_with_the_same_seed(upscaler: Upscaler) -> None:
    """The whole-image pre-drawn noise is the same sequence the reference sampler draws from the generator."""
    y = smooth_lr(16, 16)
    out = upscaler.upscale_tensor(y, InferenceSettings(sampler="ancestral", seed=5))
    zy = F.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False)
    model = lambda x, t, lq: upscaler.unet(x, t, lq)  # noqa: E731
    with torch.inference_mode():
        ref = sample_ancestral(
            model, upscaler.diffusion(), zy, zy, generator=torch.Generator().manual_seed(5)
        )
    assert torch.allclose(out, ref.clamp(-1, 1), atol=1e-5)


def test_determinism_by_seed(upscaler: Upscaler) -> None:
    y = smooth_lr(16, 32)
    a = upscaler.upscale_tensor(y, InferenceSettings(seed=7, tile=16, tile_overlap=4, batch=3))
    # batching does not change results
    b = upscaler.upscale_tensor(y, InferenceSettings(seed=7, tile=16, tile_overlap=4, batch=1))
    c = upscaler.upscale_tensor(y, InferenceSettings(seed=8, tile=16, tile_overlap=4, batch=3))
    assert torch.allclose(a, b, atol=1e-5)
    assert float((a - c).abs().mean()) > 0.05


def test_tiled_equals_untiled_when_the_tile_covers_the_image(upscaler: Upscaler) -> None:
    y = smooth_lr(14, 30)
    untiled = upscaler.upscale_tensor(y, InferenceSettings(seed=2, tile=None))
    assert torch.equal(
        upscaler.upscale_tensor(y, InferenceSettings(seed=2, tile=30, tile_overlap=8)), untiled
    )
    assert torch.equal(
        upscaler.upscale_tensor(y, InferenceSettings(seed=2, tile=1000, tile_overlap=16)), untiled
    )
    # a tile rounded up to the padded image size (24 -> 32 >= 16x32) is one tile: the same result
    assert torch.allclose(
        upscaler.upscale_tensor(y, InferenceSettings(seed=2, tile=24, tile_overlap=8)), untiled, atol=1e-6
    )


def _hard_pasted_tiles(
    upscaler: Upscaler, y: torch.Tensor, tile: int, overlap: int, seed: int
) -> torch.Tensor:
    """Naive tiling for comparison: each tile upscaled on its own (own seed) and pasted without blending."""
    h, w = y.shape[-2:]
    out = torch.zeros(1, 3, 4 * h, 4 * w)
    for i, t in enumerate(plan_tiles(h, w, tile, overlap)):
        rows, cols = t.slices(4)
        crop = y[:, :, t.top : t.top + t.height, t.left : t.left + t.width]
        out[:, :, rows, cols] = upscaler.upscale_tensor(crop, InferenceSettings(seed=seed * 100 + i))
    return out


def _border_and_interior_gradients(x: torch.Tensor, tile: int, overlap: int) -> tuple[float, float]:
    """Largest mean |gradient| across any tile edge, and the median across all other lines (8-px image margin cut)."""
    h, w = (s // 4 for s in x.shape[-2:])
    tiles = plan_tiles(h, w, tile, overlap)
    worst, interior = 0.0, []
    for axis, size, starts in ((-1, w, {t.left for t in tiles}), (-2, h, {t.top for t in tiles})):
        edges = {4 * s - 1 for s in starts if s > 0} | {4 * (s + tile) - 1 for s in starts if s + tile < size}
        grad = x.diff(dim=axis).abs().mean(dim=(0, 1, 3 if axis == -2 else 2))
        worst = max(worst, float(grad[sorted(edges)].max()))
        keep = torch.zeros_like(grad, dtype=torch.bool)
        keep[8:-8] = True
        keep[sorted(edges)] = False
        interior.append(grad[keep])
    return worst, float(torch.cat(interior).median())


def test_tiles_smaller_than_the_image_leave_no_seam(tiny: ModelPreset) -> None:
    """Gaussian blending: the gradient across tile edges stays at the interior level; hard pasting does not.

    A near-noise-free process (kappa 1e-4) makes the random network's output smooth, so any tile seam shows.
    """
    quiet = dataclasses.replace(tiny, diffusion=dataclasses.replace(tiny.diffusion, kappa=1e-4))
    ups = Upscaler.from_random(quiet, seed=0, device="cpu")
    y = smooth_lr(48, 64)
    tiled = ups.upscale_tensor(y, InferenceSettings(seed=1, tile=32, tile_overlap=8, batch=6))
    worst, interior = _border_and_interior_gradients(tiled, 32, 8)
    assert worst < 5 * interior, (worst, interior)
    naive_worst, naive_interior = _border_and_interior_gradients(_hard_pasted_tiles(ups, y, 32, 8, 1), 32, 8)
    assert naive_worst > 10 * naive_interior, (naive_worst, naive_interior)  # the check does see seams


def test_one_seed_serves_all_tiles(upscaler: Upscaler) -> None:
    """With the default (noise-dominated) process, tiles take slices of one whole-image noise draw, so the tiled
    result stays close to the untiled one; tiles drawing their own noise are as far off as another seed."""
    y = smooth_lr(48, 48)
    untiled = upscaler.upscale_tensor(y, InferenceSettings(seed=1))
    tiled = upscaler.upscale_tensor(y, InferenceSettings(seed=1, tile=32, tile_overlap=8))
    own_noise = _hard_pasted_tiles(upscaler, y, 32, 8, seed=1)
    other_seed = upscaler.upscale_tensor(y, InferenceSettings(seed=2))
    err_tiled = float((tiled - untiled).abs().mean())
    err_own = float((own_noise - untiled).abs().mean())
    assert err_tiled < 0.2 * err_own, (err_tiled, err_own)
    assert err_own > 0.8 * float((other_seed - untiled).abs().mean())


def test_grey_in_grey_out_and_16_bit_in_16_bit_out(upscaler: Upscaler) -> None:
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, size=(12, 20), dtype=np.uint16)
    out16 = upscaler.upscale_array(grey16, InferenceSettings(seed=4))
    assert out16.shape == (48, 80) and out16.dtype == np.uint16
    expected = tensor_to_image(
        upscaler.upscale_tensor(image_to_tensor(grey16), InferenceSettings(seed=4)), bit_depth=16, channels=1
    )
    assert np.array_equal(out16, expected)
    assert np.any(out16 % 257 != 0)  # real 16-bit values, not 8-bit data scaled up

    rgb8 = rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    out8 = upscaler.upscale_array(rgb8, InferenceSettings(seed=4, tile=16, tile_overlap=4))
    assert out8.shape == (48, 80, 3) and out8.dtype == np.uint8
    grey8 = rgb8[..., 0]
    assert upscaler.upscale_array(grey8).shape == (48, 80)


def test_bad_inputs_give_clear_errors(upscaler: Upscaler) -> None:
    with pytest.raises(UpscaleError, match=r"y must have shape \(B,3,h,w\)"):
        upscaler.upscale_tensor(torch.zeros(1, 1, 8, 8))
    with pytest.raises(UpscaleError, match=r"y must be in \[-1,1\], got values in \[0, 255\]"):
        upscaler.upscale_tensor(torch.full((1, 3, 8, 8), 255.0).index_fill_(2, torch.tensor([0]), 0.0))
    with pytest.raises(
        SettingsError, match="sampler 'euler' is unknown; use one of onestep, ddim, ancestral"
    ):
        upscaler.upscale_tensor(torch.zeros(1, 3, 8, 8), InferenceSettings(sampler="euler"))
    with pytest.raises(SettingsError, match="steps=9: this model's schedule has 4 steps; use 1..4"):
        upscaler.upscale_tensor(torch.zeros(1, 3, 8, 8), InferenceSettings(sampler="ddim", steps=9))
    with pytest.raises(SettingsError, match="tile_overlap=16 must be smaller than tile=16"):
        upscaler.upscale_tensor(torch.zeros(1, 3, 40, 40), InferenceSettings(tile=16, tile_overlap=16))
    # a tile rounded up to the size multiple (17 -> 16 here) may still be too small for the overlap
    with pytest.raises(SettingsError, match="tile_overlap=16 must be smaller than the tile"):
        upscaler.upscale_tensor(torch.zeros(1, 3, 40, 40), InferenceSettings(tile=17, tile_overlap=16))
    with pytest.raises(SettingsError, match="tile=-8: must be >= 1 LR pixel"):
        upscaler.upscale_tensor(torch.zeros(1, 3, 40, 40), InferenceSettings(tile=-8, tile_overlap=4))
    with pytest.raises(SettingsError, match="batch=0: must be >= 1"):
        upscaler.upscale_tensor(torch.zeros(1, 3, 8, 8), InferenceSettings(batch=0))
    with pytest.raises(UpscaleError, match="pixels must be a uint8 or uint16 numpy array, got float32"):
        upscaler.upscale_array(np.zeros((4, 4), np.float32))
    with pytest.raises(
        UpscaleError, match=r"pixels must be \(H,W\) grey or \(H,W,3\) RGB, got shape \(4, 4, 2\)"
    ):
        upscaler.upscale_array(np.zeros((4, 4, 2), np.uint8))


def test_respaced_steps_run(upscaler: Upscaler) -> None:
    y = smooth_lr(16, 16)
    assert upscaler.diffusion(2).num_timesteps == 2
    out = upscaler.upscale_tensor(y, InferenceSettings(sampler="ddim", steps=2))
    assert out.shape == (1, 3, 64, 64)


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype(torch.device("cpu")) == torch.float32
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(UpscaleError, match="CUDA is not available here; use --device cpu or auto"):
            resolve_device("cuda")


def test_random_init_is_seeded_and_leaves_the_global_rng_alone(tiny: ModelPreset) -> None:
    state = torch.random.get_rng_state()
    a = Upscaler.from_random(tiny, seed=3, device="cpu")
    b = Upscaler.from_random(tiny, seed=3, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb in zip(a.unet.state_dict().items(), b.unet.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


#: The x4 layout (VQGAN latent space, ResShift LQ spelling) shrunk to CPU-test size.
SMALL_LATENT = [
    "unet.model_channels=32",
    "unet.channel_mult=[1,1,1,1]",
    "unet.num_res_blocks=[1,1,1,1]",
    "unet.swin_embed_dim=32",
    "unet.num_head_channels=16",
    "autoencoder.ch=32",
    "autoencoder.n_embed=64",
    "autoencoder.num_res_blocks=1",
]


def test_latent_preset_pipeline_matches_its_definition() -> None:
    """x4 latent path: z_y = E(bicubic x4 of the padded LR), lq = the LR itself, one step, D(x0), clamp, crop."""
    ups = Upscaler.from_random(load_preset("x4", SMALL_LATENT), seed=0, device="cpu")
    assert (ups.net_scale, ups.lr_multiple, ups.noise_channels) == (1, 64, 3)
    y = smooth_lr(40, 70)
    out = ups.upscale_tensor(y, InferenceSettings(seed=9))
    assert out.shape == (1, 3, 160, 280)
    y_pad = reflect_pad(y, 64, 128)
    with torch.inference_mode():
        zy = ups.autoencoder.encode(F.interpolate(y_pad, scale_factor=4, mode="bicubic", align_corners=False))
        model = lambda x, t, lq: ups.unet(x, t, lq)  # noqa: E731
        x0 = sample_onestep(model, ups.diffusion(), zy, y_pad, generator=torch.Generator().manual_seed(9))
        ref = ups.autoencoder.decode(x0).clamp(-1, 1)[:, :, :160, :280]
    assert torch.allclose(out, ref, atol=1e-5)
    tiled = ups.upscale_tensor(
        smooth_lr(64, 128), InferenceSettings(seed=9, tile=64, tile_overlap=16, batch=3)
    )
    assert tiled.shape == (1, 3, 256, 512) and float(tiled.abs().max()) <= 1.0


@pytest.mark.gpu
def test_cuda_autocast_matches_cpu_float32(tiny: ModelPreset) -> None:
    cpu = Upscaler.from_random(tiny, seed=0, device="cpu")
    gpu = Upscaler.from_random(tiny, seed=0, device="cuda")
    assert resolve_dtype(gpu.device, "auto") in (torch.bfloat16, torch.float16)
    y = smooth_lr(48, 80)
    a = cpu.upscale_tensor(y, InferenceSettings(seed=1, tile=32, tile_overlap=8))
    b = gpu.upscale_tensor(y.cuda(), InferenceSettings(seed=1, tile=32, tile_overlap=8, batch=8))
    assert b.device.type == "cuda" and b.shape == a.shape
    assert float((a - b.cpu()).abs().mean()) < 0.05
