"""Real-ESRGAN second-order degradation: seeding, shapes, recorded parameters, statistics, grey input."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from difiisr.config import ConfigError, from_mapping
from difiisr.degradation import (
    KERNEL_TYPES,
    RealESRGANConfig,
    RealESRGANDegradation,
    apply_crop,
    build_kernel,
    sample_crop,
    sample_params,
)
from difiisr.degradation.params import basicsr_degradations
from difiisr.degradation.seeding import crop_rng, image_seeds, params_rng

SIZE = 64  # HR side used here: the smallest comfortable size for the default config (min_side 56)


@pytest.fixture(scope="module")
def hr() -> torch.Tensor:
    """Four smooth-plus-texture test images (B,3,64,64) in [0,1]."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    base = torch.stack([0.2 + 0.6 * xx, 0.5 * yy + 0.3, 0.5 + 0.3 * torch.sin(6 * xx)])
    return (0.7 * base + 0.3 * torch.rand(4, 3, SIZE, SIZE, generator=gen)).clamp(0, 1)


@pytest.fixture(scope="module")
def pipeline() -> RealESRGANDegradation:
    return RealESRGANDegradation()


def _binomial_ok(hits: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(hits / n - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-12


# ------------------------------------------------------------------------------------------- seeding


def test_same_seed_is_byte_identical_and_other_seed_differs(pipeline, hr) -> None:
    lr1, rec1 = pipeline(hr, 123)
    lr2, rec2 = pipeline(hr, 123)
    lr3, _ = pipeline(hr, 124)
    assert lr1.numpy().tobytes() == lr2.numpy().tobytes()
    assert rec1 == rec2
    assert not torch.equal(lr1, lr3)


def test_torch_generator_seed_is_reproducible(pipeline, hr) -> None:
    a, _ = pipeline(hr[:2], torch.Generator().manual_seed(9))
    b, _ = pipeline(hr[:2], torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_global_random_state_is_untouched(pipeline, hr) -> None:
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    pipeline(hr[:2], 5)
    assert torch.equal(torch_state, torch.get_rng_state())
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1]) and np_state[2:] == after[2:]
    assert py_state == random.getstate()


def test_numpy_error_state_survives_the_basicsr_import() -> None:
    """basicsr calls np.seterr at import; the pipeline undoes it (checked in a fresh interpreter)."""
    code = (
        "import numpy as np, torch\n"
        "before = np.geterr()\n"
        "from difiisr.degradation import RealESRGANDegradation\n"
        "RealESRGANDegradation()(torch.rand(1, 3, 64, 64), 0)\n"
        "assert np.geterr() == before, np.geterr()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_image_seed_does_not_depend_on_batch_size() -> None:
    assert image_seeds(77, 2) == image_seeds(77, 5)[:2]
    assert len(set(image_seeds(77, 5))) == 5


# ------------------------------------------------------------------------------------------ outputs


def test_lr_size_dtype_range_and_8bit_grid(pipeline, hr) -> None:
    lr, records = pipeline(hr, 1)
    assert lr.shape == (4, 3, SIZE // 4, SIZE // 4) and lr.dtype == torch.float32
    assert float(lr.min()) >= 0.0 and float(lr.max()) <= 1.0
    assert torch.equal(lr * 255, (lr * 255).round())
    assert len(records) == 4


def test_levels_65535_gives_16bit_grid(pipeline, hr) -> None:
    lr, _ = pipeline(hr[:2], 2, levels=65535)
    assert torch.allclose(lr * 65535, (lr * 65535).round(), atol=2e-3)
    assert not torch.equal(lr * 255, (lr * 255).round())  # finer than 8-bit


def test_batch_scope_shares_resize_of_first_image(pipeline, hr) -> None:
    lr, records = pipeline(hr, 31)
    first = records[0]["resize1"]
    assert first["shared"] is False
    for rec in records[1:]:
        assert rec["resize1"]["shared"] is True
        assert {k: rec["resize1"][k] for k in ("scale", "mode", "size")} == {
            k: first[k] for k in ("scale", "mode", "size")
        }
    # image 0 with its own seed alone: the same draws (its resize is its own in both cases), so the same LR up
    # to batch-size-dependent float rounding of the CPU kernels (none with the pinned torch on x86)
    alone, (rec0,) = pipeline(hr[:1], [records[0]["seed"]])
    assert rec0 == records[0]
    diff = (alone[0] - lr[0]).abs()
    assert float(diff.max()) <= 1 / 255 + 1e-6 and float((diff > 0).float().mean()) < 0.01


def test_batch_scope_output_does_not_depend_on_position_or_companions(pipeline) -> None:
    """Beyond the shared resizes (drawn by the lead images), an image's LR is the same in any batch order or
    subset: the per-size blur groups, noise draws, JPEG chunks and final groups never mix images."""
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(10, 3, SIZE, SIZE, generator=gen)
    for seed in (0, 3):
        seeds = image_seeds(seed, 10)
        lr, records = pipeline(images, seeds)
        lead2 = next(i for i, r in enumerate(records) if r["second_order"])
        leads = [0] + ([lead2] if lead2 else [])
        rest = [i for i in range(10) if i not in leads]
        for order in (leads + rest[::-1], leads + rest[1::2]):
            out, recs = pipeline(images[order], [seeds[i] for i in order])
            assert torch.equal(out, lr[order])
            assert recs == [records[i] for i in order]


def test_image_scope_output_depends_only_on_own_seed(hr) -> None:
    pipe = RealESRGANDegradation(RealESRGANConfig(resize_scope="image"))
    lr, records = pipe(hr, 8)
    for i in range(4):
        alone, _ = pipe(hr[i : i + 1], [records[i]["seed"]])
        assert torch.equal(alone[0], lr[i])
        assert records[i]["resize1"]["shared"] is False


def test_records_are_exactly_sample_params_plus_applied_sizes(hr) -> None:
    """The pipeline applies the draws of sample_params(params_rng(seed)) (one image: no shared resize)."""
    pipe = RealESRGANDegradation()
    _, (rec,) = pipe(hr[:1], [4242])
    drawn = sample_params(pipe.config, params_rng(4242))
    for key, value in drawn.items():
        if key in ("resize1", "resize2") and value is not None:
            assert {k: rec[key][k] for k in value} == value
        else:
            assert rec[key] == value


def test_constant_image_without_noise_stays_constant() -> None:
    """Blur kernels sum to 1, resizes keep constants; JPEG moves a flat block by at most a few levels."""
    cfg = RealESRGANConfig(
        noise_range=(0.0, 0.0),
        poisson_scale_range=(0.0, 0.0),
        noise_range2=(0.0, 0.0),
        poisson_scale_range2=(0.0, 0.0),
    )
    lr, _ = RealESRGANDegradation(cfg)(torch.full((3, 3, SIZE, SIZE), 0.5), 0)
    assert float((lr - 0.5).abs().max()) <= 3 / 255


# --------------------------------------------------------------------------------------- grey input


def test_grey_input_stays_grey_with_gray_noise(hr) -> None:
    grey = hr[:, :1].expand(-1, 3, -1, -1).contiguous()
    pipe = RealESRGANDegradation(RealESRGANConfig(gray_noise_prob=1.0, gray_noise_prob2=1.0))
    kinds = set()
    for seed in range(6):
        lr, records = pipe(grey, seed)
        assert torch.equal(lr[:, 0], lr[:, 1]) and torch.equal(lr[:, 0], lr[:, 2])
        kinds |= {r["noise1"]["kind"] for r in records}
    assert kinds == {"gaussian", "poisson"}  # both noise kinds were exercised


def test_colour_noise_on_grey_input_adds_chroma_unless_force_gray(hr) -> None:
    grey = hr[:, :1].expand(-1, 3, -1, -1).contiguous()
    cfg = RealESRGANConfig(gray_noise_prob=0.0, gray_noise_prob2=0.0)
    lr, _ = RealESRGANDegradation(cfg)(grey, 3)
    assert not torch.equal(lr[:, 0], lr[:, 1])
    forced, _ = RealESRGANDegradation(RealESRGANConfig(gray_noise_prob=0.0, force_gray=True))(grey, 3)
    assert torch.equal(forced[:, 0], forced[:, 1]) and torch.equal(forced[:, 0], forced[:, 2])
    assert torch.equal(forced * 255, (forced * 255).round())


# ---------------------------------------------------------------------------------- drawn parameters


def _in(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] - 1e-12 <= value <= bounds[1] + 1e-12


def _check_kernel(k: dict, size_range: tuple[int, int], sigma, betag, betap) -> None:
    assert k["size"] % 2 == 1 and size_range[0] <= k["size"] <= size_range[1]
    if k["type"] == "sinc":
        limit = math.pi / 3 if k["size"] < 13 else math.pi / 5
        assert _in(k["cutoff"], (limit, math.pi))
        return
    assert k["type"] in KERNEL_TYPES
    assert _in(k["sigma_x"], sigma) and _in(k["sigma_y"], sigma) and _in(k["angle"], (-math.pi, math.pi))
    if not k["type"].endswith("aniso"):
        assert k["sigma_y"] == k["sigma_x"] and k["angle"] == 0.0
    if k["type"].startswith("generalized"):
        assert _in(k["beta"], betag)
    elif k["type"].startswith("plateau"):
        assert _in(k["beta"], betap)
    else:
        assert k["beta"] is None


def _check_record(rec: dict, c: RealESRGANConfig) -> None:
    _check_kernel(rec["kernel1"], c.kernel_size_range, c.blur_sigma, c.betag_range, c.betap_range)
    for key, rng_, noise, poisson, jpeg in (
        ("1", c.resize_range, c.noise_range, c.poisson_scale_range, c.jpeg_range),
        ("2", c.resize_range2, c.noise_range2, c.poisson_scale_range2, c.jpeg_range2),
    ):
        if key == "2" and not rec["second_order"]:
            assert rec["resize2"] is rec["noise2"] is rec["kernel2"] is rec["blur2"] is None
            continue
        r = rec[f"resize{key}"]
        assert r["mode"] in ("area", "bilinear", "bicubic")
        assert {
            "up": _in(r["scale"], (1.0, rng_[1])),
            "down": _in(r["scale"], (rng_[0], 1.0)),
            "keep": r["scale"] == 1.0,
        }[r["direction"]]
        n = rec[f"noise{key}"]
        assert _in(n["sigma"], noise) if n["kind"] == "gaussian" else _in(n["scale"], poisson)
        assert isinstance(n["gray"], bool)
        assert _in(rec[f"jpeg{key}"], jpeg)
    if rec["second_order"] and rec["blur2"]:
        _check_kernel(rec["kernel2"], c.kernel_size_range2, c.blur_sigma2, c.betag_range2, c.betap_range2)
    if rec["final_sinc"] is not None:
        assert c.kernel_size_range2[0] <= rec["final_sinc"]["size"] <= c.kernel_size_range2[1]
        assert _in(rec["final_sinc"]["cutoff"], (math.pi / 3, math.pi))
    assert rec["final_order"] in ("resize_sinc_then_jpeg", "jpeg_then_resize_sinc")
    assert rec["final_resize_mode"] in ("area", "bilinear", "bicubic")


def test_recorded_params_of_the_pipeline_are_within_ranges(pipeline, hr) -> None:
    for seed in range(3):
        _, records = pipeline(hr, seed)
        for rec in records:
            _check_record(rec, pipeline.config)


def test_drawn_params_stay_in_ranges_and_kernel_sizes_follow_reference_code() -> None:
    cfg = RealESRGANConfig()
    records = [sample_params(cfg, params_rng(s)) for s in range(600)]
    for rec in records:
        _check_record(rec, cfg)
    # the reference draws random.choice(range(3, 21, 2)): odd 3..19 (its comment says 7..21)
    assert {r["kernel1"]["size"] for r in records} == set(range(3, 20, 2))
    assert {r["kernel2"]["size"] for r in records if r["kernel2"]} == set(range(3, 14, 2))


def test_second_order_and_kernel_type_frequencies_match_config() -> None:
    """Binomial check (4 sigma) over 2000 cheap draws (no image work)."""
    cfg = RealESRGANConfig()
    n = 2000
    rng = np.random.default_rng(2024)
    records = [sample_params(cfg, rng) for _ in range(n)]
    assert _binomial_ok(sum(r["second_order"] for r in records), n, cfg.second_order_prob)
    assert _binomial_ok(sum(r["kernel1"]["type"] == "sinc" for r in records), n, cfg.sinc_prob)
    non_sinc = [r["kernel1"]["type"] for r in records if r["kernel1"]["type"] != "sinc"]
    counts = Counter(non_sinc)
    for kind, p in zip(cfg.kernel_list, cfg.kernel_prob, strict=True):
        assert _binomial_ok(counts[kind], len(non_sinc), p), (kind, counts[kind], len(non_sinc), p)
    directions = Counter(r["resize1"]["direction"] for r in records)
    for direction, p in zip(("up", "down", "keep"), cfg.resize_prob, strict=True):
        assert _binomial_ok(directions[direction], n, p)
    assert _binomial_ok(sum(r["final_sinc"] is not None for r in records), n, cfg.final_sinc_prob)
    assert _binomial_ok(sum(r["noise1"]["kind"] == "gaussian" for r in records), n, cfg.gaussian_noise_prob)
    assert _binomial_ok(sum(r["noise1"]["gray"] for r in records), n, cfg.gray_noise_prob)


def test_frequencies_follow_a_changed_config() -> None:
    cfg = RealESRGANConfig(second_order_prob=0.2, kernel_prob=(0.1, 0.1, 0.1, 0.1, 0.1, 0.5), sinc_prob=0.0)
    n = 1000
    rng = np.random.default_rng(5)
    records = [sample_params(cfg, rng) for _ in range(n)]
    assert _binomial_ok(sum(r["second_order"] for r in records), n, 0.2)
    assert _binomial_ok(sum(r["kernel1"]["type"] == "plateau_aniso" for r in records), n, 0.5)
    assert not any(r["kernel1"]["type"] == "sinc" for r in records)


# ------------------------------------------------------------------------------------------- kernels


def test_build_kernel_uses_basicsr_builders_and_pads() -> None:
    deg = basicsr_degradations()
    spec = {"type": "aniso", "size": 7, "sigma_x": 1.3, "sigma_y": 0.6, "angle": 0.4, "beta": None}
    k = build_kernel(spec, 21)
    assert k.shape == (21, 21) and abs(k.sum() - 1.0) < 1e-12
    np.testing.assert_array_equal(k[7:14, 7:14], deg.bivariate_Gaussian(7, 1.3, 0.6, 0.4, isotropic=False))
    assert np.count_nonzero(k[:7]) == 0
    np.testing.assert_array_equal(build_kernel(spec), k[7:14, 7:14])  # unpadded: the kernel's own size
    sinc = build_kernel({"type": "sinc", "size": 9, "cutoff": 1.5}, 15)
    assert abs(sinc.sum() - 1.0) < 1e-9 and np.isfinite(sinc).all()


# ---------------------------------------------------------------------------------------- crop/flip


def test_crop_and_degrade_crops_pads_and_records(pipeline) -> None:
    gen = torch.Generator().manual_seed(1)
    images = [
        torch.rand(3, 90, 100, generator=gen),
        torch.rand(3, 40, 130, generator=gen),
    ]  # 2nd needs padding
    hr, lr, records = pipeline.crop_and_degrade(images, 6, crop=64)
    assert hr.shape == (2, 3, 64, 64) and lr.shape == (2, 3, 16, 16)
    seeds = image_seeds(6, 2)
    for img, out, rec, seed in zip(images, hr, records, seeds, strict=True):
        cp = sample_crop(
            crop_rng(seed), img.shape[1], img.shape[2], crop=64, sf=4, crop_pad_size=300, use_hflip=True
        )
        assert rec["crop"] == cp.to_dict()
        assert torch.equal(out, apply_crop(img, cp))
    assert records[1]["crop"]["pad_bottom"] == 300 - 40


def test_crop_numpy_and_tensor_paths_agree() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 33, 3), dtype=np.uint8)
    cp = sample_crop(rng, 20, 33, crop=48, sf=4, crop_pad_size=60, use_hflip=True, use_rot=True)
    via_numpy = apply_crop(img, cp)
    via_tensor = apply_crop(torch.from_numpy(img).permute(2, 0, 1).float(), cp).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(via_numpy, via_tensor.astype(np.uint8))
    whole = sample_crop(rng, 23, 38, crop=None, sf=4)
    assert (whole.height, whole.width, whole.top, whole.left) == (20, 36, 0, 0)


# ------------------------------------------------------------------------------------ input checks


def test_input_errors_name_the_fix(pipeline, hr) -> None:
    with pytest.raises(ValueError, match=r"pass \(x \+ 1\) / 2"):
        pipeline(hr * 2 - 1, 0)
    with pytest.raises(ValueError, match="not a multiple of sf=4"):
        pipeline(hr[..., :62], 0)
    with pytest.raises(ValueError, match="below the minimum side 56"):
        pipeline(torch.rand(1, 3, 48, 48), 0)
    with pytest.raises(ValueError, match="got 1 per-image seeds for a batch of 4"):
        pipeline(hr, [1])


def test_config_validation_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"RealESRGANConfig.kernel_prob: probabilities .* sum to 0.9"):
        RealESRGANConfig(kernel_prob=(0.45, 0.25, 0.12, 0.03, 0.02, 0.03))
    with pytest.raises(ConfigError, match=r"RealESRGANConfig.resize_range: \(1.5, 0.15\) is not ordered"):
        RealESRGANConfig(resize_range=(1.5, 0.15))
    with pytest.raises(ConfigError, match=r"RealESRGANConfig.kernel_size_range: \(4, 19\) must be odd"):
        RealESRGANConfig(kernel_size_range=(4, 19))
    with pytest.raises(ConfigError, match=r"RealESRGANConfig.second_order_prob: 1.5 is not a probability"):
        RealESRGANConfig(second_order_prob=1.5)
    with pytest.raises(ConfigError, match=r"RealESRGANConfig.kernel_list: unknown kernel type"):
        RealESRGANConfig(kernel_list=("iso", "box"), kernel_prob=(0.5, 0.5))
    with pytest.raises(ConfigError, match=r"RealESRGANConfig.gt_size: 250 is not a multiple of sf=4"):
        RealESRGANConfig(gt_size=250)


def test_config_from_yaml_mapping_and_defaults_match_method() -> None:
    cfg = from_mapping(RealESRGANConfig, {"gray_noise_prob": 1.0, "jpeg_range": [40, 90]}, "test.yaml")
    assert cfg.gray_noise_prob == 1.0 and cfg.jpeg_range == (40.0, 90.0)
    with pytest.raises(ConfigError, match="unknown key"):
        from_mapping(RealESRGANConfig, {"gray_noise": 1.0}, "test.yaml")
    d = RealESRGANConfig()
    assert (d.sf, d.gt_size, d.crop_pad_size, d.blur_kernel_size, d.blur_kernel_size2) == (
        4,
        256,
        300,
        21,
        15,
    )
    assert d.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and d.final_sinc_prob == 0.8
    assert d.resize_prob == (0.2, 0.7, 0.1) and d.resize_prob2 == (0.3, 0.4, 0.3)
    assert (d.noise_range, d.noise_range2, d.poisson_scale_range2) == ((1.0, 30.0), (1.0, 25.0), (0.05, 2.5))


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_cuda_is_seeded_and_follows_the_input_device(hr) -> None:
    pipe = RealESRGANDegradation()
    x = hr.cuda()
    a, rec_a = pipe(x, 11)
    b, rec_b = pipe(x, 11)
    c, _ = pipe(x, 12)
    assert a.device.type == "cuda" and a.shape == (4, 3, 16, 16)
    assert torch.equal(a, b) and rec_a == rec_b and not torch.equal(a, c)
    cpu, rec_cpu = pipe(hr, 11)
    assert rec_cpu == rec_a  # same draws; the noise samplers differ by device, so only the means agree
    assert abs(float(a.mean()) - float(cpu.mean())) < 0.03
