"""Typed parameters of the Real-ESRGAN second-order degradation (method.md section 1).

Defaults are the ResShift ``realsr_swinunet_realesrgan256`` configuration that DifIISR also ships. Two knobs
that the reference hard-codes are exposed here:

* ``kernel_size_range`` / ``kernel_size_range2``: the reference comment says "kernel size ranges from 7 to
  21", but its code draws ``random.choice(range(3, blur_kernel_size, 2))``, i.e. odd sizes 3..19 for stage 1
  and 3..13 for stage 2 (and for the final sinc filter). The defaults follow the code, not the comment; set
  ``kernel_size_range=(7, 21)`` to get what the comment describes.
* ``resize_scope``: the reference draws ONE resize scale and mode per batch (all images of a batch share the
  intermediate size, which is what makes batching possible). ``"batch"`` does the same; ``"image"`` gives
  every image its own draw and processes images one at a time, so an image's output never depends on the other
  images of the call (used for the pairs folder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from difiisr.config import ConfigError

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
_PROB_TOL = 1e-6


def _default_kernels() -> tuple[str, ...]:
    return KERNEL_TYPES


def _default_kernel_prob() -> tuple[float, ...]:
    return (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)


@dataclass(frozen=True)
class RealESRGANConfig:
    """Every parameter of the Real-ESRGAN second-order degradation; ranges are ``(low, high)`` inclusive.

    Sigmas are in pixels, angles in radians, Gaussian noise sigma in 8-bit grey levels (0..255 scale), JPEG
    quality in 1..100, resize scales relative to the current size.
    """

    sf: int = 4
    gt_size: int = 256
    crop_pad_size: int = 300
    use_hflip: bool = True
    use_rot: bool = False

    # stage 1 blur (blur_kernel_size: the largest kernel side; the reference zero-pads every kernel to it,
    # here each kernel runs at its own size, which gives the same pixels)
    blur_kernel_size: int = 21
    kernel_size_range: tuple[int, int] = (3, 19)
    kernel_list: tuple[str, ...] = field(default_factory=_default_kernels)
    kernel_prob: tuple[float, ...] = field(default_factory=_default_kernel_prob)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)

    # stage 2 blur
    blur_kernel_size2: int = 15
    kernel_size_range2: tuple[int, int] = (3, 13)
    kernel_list2: tuple[str, ...] = field(default_factory=_default_kernels)
    kernel_prob2: tuple[float, ...] = field(default_factory=_default_kernel_prob)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    final_sinc_prob: float = 0.8

    # stage 1 resize, noise, JPEG
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)

    # stage 2
    second_order_prob: float = 0.5
    second_blur_prob: float = 0.8
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, float] = (30.0, 95.0)

    # execution choices (not in the reference config; see the module docstring)
    resize_scope: Literal["batch", "image"] = "batch"
    force_gray: bool = False

    def __post_init__(self) -> None:
        """Check probabilities, ranges and kernel sizes; errors name the key and the fix."""
        self._check_int_at_least("sf", 1)
        self._check_int_at_least("gt_size", 1)
        if self.gt_size % self.sf:
            _fail("gt_size", f"{self.gt_size} is not a multiple of sf={self.sf}; LR size must be gt_size/sf")
        if self.crop_pad_size < self.gt_size:
            _fail(
                "crop_pad_size", f"{self.crop_pad_size} < gt_size={self.gt_size}; it must be at least gt_size"
            )
        for suffix in ("", "2"):
            self._check_kernels(suffix)
        for key in (
            "sinc_prob",
            "sinc_prob2",
            "final_sinc_prob",
            "gaussian_noise_prob",
            "gray_noise_prob",
            "second_order_prob",
            "second_blur_prob",
            "gaussian_noise_prob2",
            "gray_noise_prob2",
        ):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                _fail(key, f"{value} is not a probability in [0, 1]")
        for key in ("resize_prob", "resize_prob2"):
            self._check_distribution(key, 3, "(up, down, keep)")
        for key in ("blur_sigma", "blur_sigma2"):
            self._check_range(key, positive=True)
        for key in ("betag_range", "betap_range", "betag_range2", "betap_range2"):
            low, high = self._check_range(key, positive=True)
            if not low <= 1.0 <= high:
                _fail(
                    key, f"({low}, {high}) must contain 1: half the draws are below 1, half above (basicsr)"
                )
        for key in ("resize_range", "resize_range2"):
            low, high = self._check_range(key, positive=True)
            if not low <= 1.0 <= high:
                _fail(key, f"({low}, {high}) must contain 1: 'down' draws from [low, 1], 'up' from [1, high]")
        for key in ("noise_range", "noise_range2", "poisson_scale_range", "poisson_scale_range2"):
            self._check_range(key, positive=False)
        for key in ("jpeg_range", "jpeg_range2"):
            low, high = self._check_range(key, positive=True)
            if not 1.0 <= low <= high <= 100.0:
                _fail(key, f"({low}, {high}) must lie within JPEG quality 1..100")
        if self.resize_scope not in ("batch", "image"):
            _fail("resize_scope", f"{self.resize_scope!r} is not one of 'batch', 'image'")

    @property
    def min_side(self) -> int:
        """Smallest HR side (pixels) the pipeline accepts: every blur must fit its reflect padding."""
        # stage 2 blurs an image shrunk by resize_range[0]; the final sinc blurs the LR (size side/sf); the
        # stage-2 resize (side/sf * resize_range2[0]) must keep at least one pixel
        half2 = self.blur_kernel_size2 // 2
        need = max(
            self.blur_kernel_size // 2 + 1,
            math.ceil((half2 + 1) / self.resize_range[0]),
            (half2 + 1) * self.sf,
            math.ceil(self.sf / self.resize_range2[0]),
        )
        return int(math.ceil(need / self.sf) * self.sf)

    # ------------------------------------------------------------------------------------------ checks

    def _check_int_at_least(self, key: str, low: int) -> None:
        value = getattr(self, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            _fail(key, f"{value!r} must be an integer >= {low}")

    def _check_range(self, key: str, *, positive: bool) -> tuple[float, float]:
        value = tuple(getattr(self, key))
        if len(value) != 2:
            _fail(key, f"{value!r} must be two numbers (low, high)")
        low, high = float(value[0]), float(value[1])
        if not low <= high:
            _fail(key, f"({low}, {high}) is not ordered; write it as (low, high) with low <= high")
        if low < 0 or (positive and low <= 0):
            _fail(key, f"({low}, {high}) must be {'positive' if positive else 'non-negative'}")
        return low, high

    def _check_distribution(self, key: str, length: int, what: str) -> None:
        probs = tuple(getattr(self, key))
        if len(probs) != length:
            _fail(key, f"{probs!r} must hold {length} probabilities {what}")
        if any(p < 0 for p in probs):
            _fail(key, f"{probs!r} holds a negative probability")
        total = float(sum(probs))
        if abs(total - 1.0) > _PROB_TOL:
            _fail(key, f"probabilities {probs!r} sum to {total:g}; they must sum to 1")

    def _check_kernels(self, suffix: str) -> None:
        size_key = f"blur_kernel_size{suffix}"
        range_key = f"kernel_size_range{suffix}"
        list_key = f"kernel_list{suffix}"
        prob_key = f"kernel_prob{suffix}"
        size = getattr(self, size_key)
        if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
            _fail(size_key, f"{size!r} must be an odd integer >= 3")
        low, high = (int(v) for v in getattr(self, range_key))
        if low % 2 == 0 or high % 2 == 0 or low < 3 or low > high or high > size:
            _fail(range_key, f"({low}, {high}) must be odd sizes with 3 <= low <= high <= {size_key}={size}")
        kinds = tuple(getattr(self, list_key))
        unknown = [k for k in kinds if k not in KERNEL_TYPES]
        if unknown or not kinds:
            _fail(
                list_key, f"unknown kernel type(s) {unknown or kinds}; choose from {', '.join(KERNEL_TYPES)}"
            )
        self._check_distribution(prob_key, len(kinds), f"(one per {list_key} entry)")


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"RealESRGANConfig.{key}: {message}")
