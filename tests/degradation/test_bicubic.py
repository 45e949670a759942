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
