"""The bicubic test protocol is byte-identical to PIL's bicubic resize (8-bit) and keeps 16-bit range."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from difiisr.degradation import bicubic_downsample

SIZES = [(64, 64), (37, 53), (101, 77), (9, 6), (31, 130)]


def _pil_reference(hr: np.ndarray, sf: int) -> np.ndarray:
    h, w = hr.shape[:2]
    return np.asarray(Image.fromarray(hr).resize((w // sf, h // sf), Image.BICUBIC))


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sf", [4, 2, 3])
def test_uint8_matches_pil_byte_for_byte(shape: tuple[int, int], channels: int, sf: int) -> None:
    rng = np.random.default_rng(shape[0] * 1000 + shape[1] + channels + sf)
    full = shape if channels == 1 else (*shape, 3)
    hr = rng.integers(0, 256, full, dtype=np.uint8)
    lr = bicubic_downsample(hr, sf)
    ref = _pil_reference(hr, sf)
    assert lr.dtype == np.uint8
    assert lr.shape == (
        (shape[0] // sf, shape[1] // sf) if channels == 1 else (shape[0] // sf, shape[1] // sf, 3)
    )
    assert lr.tobytes() == ref.tobytes()


def test_smooth_uint8_image_matches_pil() -> None:
    """A smooth ramp (where rounding, not noise, decides each byte) also matches exactly."""
    yy, xx = np.mgrid[0:123, 0:97]
    hr = ((xx * 2 + yy) % 256).astype(np.uint8)
    assert bicubic_downsample(hr).tobytes() == _pil_reference(hr, 4).tobytes()


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (90, 33)])
def test_uint16_grey_uses_pil_i16_and_keeps_full_range(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    hr = rng.integers(0, 65536, shape, dtype=np.uint16)
    hr[: shape[0] // 3] = 65535  # saturated band: bicubic overshoot must clip, not wrap
    lr = bicubic_downsample(hr)
    ref = np.asarray(Image.fromarray(hr).resize((shape[1] // 4, shape[0] // 4), Image.BICUBIC))
    assert Image.fromarray(hr).mode == "I;16"
    assert lr.dtype == np.uint16
    assert lr.tobytes() == ref.tobytes()
    assert lr.max() == 65535  # full 16-bit range kept (8-bit would top out at 255)
    assert lr.max() > 255


def test_uint16_rgb_is_resized_channel_by_channel() -> None:
    rng = np.random.default_rng(3)
    hr = rng.integers(0, 65536, (41, 59, 3), dtype=np.uint16)
    lr = bicubic_downsample(hr)
    assert lr.shape == (10, 14, 3) and lr.dtype == np.uint16
    for ch in range(3):
        np.testing.assert_array_equal(lr[..., ch], bicubic_downsample(np.ascontiguousarray(hr[..., ch])))


def test_constant_image_stays_constant() -> None:
    """Closed form: bicubic weights sum to 1, so a constant image downsamples to the same constant."""
    assert np.all(bicubic_downsample(np.full((40, 52), 40000, np.uint16)) == 40000)
    assert np.all(bicubic_downsample(np.full((40, 52, 3), 77, np.uint8)) == 77)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="must be uint8 or uint16, got float32"):
        bicubic_downsample(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=r"image of 3x8 pixels is smaller than sf=4"):
        bicubic_downsample(np.zeros((3, 8), np.uint8))
    with pytest.raises(ValueError, match=r"expected \(H,W\) grey or \(H,W,3\) RGB"):
        bicubic_downsample(np.zeros((8, 8, 4), np.uint8))


# ---------------------------------------------------------------------------------------------- differentiable A


def _protocol_images() -> list[np.ndarray]:
    from difiisr.data.synthetic import generate_scene

    rng = np.random.default_rng(5)
    out = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in SIZES if min(shape) >= 8]
    return out + [generate_scene(96, 64, seed=1), generate_scene(101, 77, seed=2)]


def test_tensor_operator_is_within_one_level_of_pil_bytes() -> None:
    """Measured closeness of the differentiable A to the protocol: RMS about 0.3 grey levels (Pillow's own
    intermediate rounding), almost every value within 1 level; larger differences only where Pillow clips its
    intermediate pass (bicubic overshoot at saturated edges): with that clip, every value is within 1 level."""
    import torch

    from difiisr.degradation import bicubic_downsample_tensor

    for hr in _protocol_images():
        h, w = hr.shape
        x = torch.from_numpy(hr.astype(np.float64))[None, None]
        ours = bicubic_downsample_tensor(x, 4)[0, 0].numpy()
        ref = bicubic_downsample(hr, 4).astype(np.float64)
        assert ours.shape == ref.shape
        diff = ours - ref
        assert np.sqrt(np.mean(diff**2)) < 0.4, hr.shape
        assert np.mean(np.abs(diff) < 1.0) > 0.99, hr.shape
        horizontal = torch.nn.functional.interpolate(
            x, size=(h, w // 4), mode="bicubic", antialias=True, align_corners=False
        ).clamp(0, 255)
        clipped = (
            torch.nn.functional.interpolate(
                horizontal, size=(h // 4, w // 4), mode="bicubic", antialias=True, align_corners=False
            )
            .clamp(0, 255)[0, 0]
            .numpy()
        )
        assert np.abs(clipped - ref).max() < 1.0, hr.shape
        # on the [-1,1] scale used by guidance, A commutes with the affine map (weights sum to 1)
        scaled = bicubic_downsample_tensor(x / 127.5 - 1.0, 4)[0, 0].numpy()
        np.testing.assert_allclose(scaled, ours / 127.5 - 1.0, atol=1e-12)


def test_tensor_operator_with_pils_rounding_reproduces_the_protocol_bytes() -> None:
    """The only differences are rounding and clipping: horizontal pass, round to 8 bits, vertical pass, round
    (torch's antialiased bicubic, the kernel of A) = Pillow exactly."""
    import torch

    for hr in _protocol_images():
        h, w = hr.shape
        x = torch.from_numpy(hr.astype(np.float64))[None, None]
        horizontal = (
            torch.nn.functional.interpolate(
                x, size=(h, w // 4), mode="bicubic", antialias=True, align_corners=False
            )
            .round()
            .clamp(0, 255)
        )
        both = (
            torch.nn.functional.interpolate(
                horizontal, size=(h // 4, w // 4), mode="bicubic", antialias=True, align_corners=False
            )
            .round()
            .clamp(0, 255)
        )
        assert both[0, 0].numpy().astype(np.uint8).tobytes() == bicubic_downsample(hr, 4).tobytes()


def test_tensor_operator_gradient_matches_finite_differences_and_refuses_bad_input() -> None:
    import torch
    from torch.autograd import gradcheck

    from difiisr.degradation import bicubic_downsample_tensor

    x = torch.rand(1, 2, 13, 10, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda v: bicubic_downsample_tensor(v, 4), (x,), eps=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="smaller than sf=4"):
        bicubic_downsample_tensor(torch.zeros(1, 1, 3, 8), 4)
    with pytest.raises(ValueError, match=r"expected a float \(B,C,H,W\) tensor"):
        bicubic_downsample_tensor(torch.zeros(3, 8, 8), 4)
