"""What one image's Real-ESRGAN degradation draws, and the blur kernels built from those draws.

``sample_params`` draws every random choice of the pipeline for one image from a ``numpy.random.Generator``
(no image work, so thousands of draws take milliseconds). The pipeline applies exactly these draws, so the
returned dict is also the record written to the manifest. Kernels are built with basicsr's deterministic
builders (``bivariate_Gaussian``, ``bivariate_generalized_Gaussian``, ``bivariate_plateau``,
``circular_lowpass_kernel``) instead of its ``random_*`` wrappers, which draw from numpy's global RNG.

Record layout (all values JSON-able)::

    kernel1      {"type": iso|aniso|generalized_iso|generalized_aniso|plateau_iso|plateau_aniso,
                  "size", "sigma_x", "sigma_y", "angle" (rad), "beta" (None for iso/aniso)}
                 or {"type": "sinc", "size", "cutoff" (rad)}
    resize1      {"direction": up|down|keep, "scale", "mode": area|bilinear|bicubic}
    noise1       {"kind": "gaussian", "sigma" (0..255 levels), "gray"} or {"kind": "poisson", "scale", "gray"}
    jpeg1        quality (float, 1..100)
    second_order bool; when False, blur2/kernel2/resize2/noise2 are None
    blur2        bool (second_blur_prob); kernel2 like kernel1 (None when blur2 is False)
    resize2, noise2  like resize1/noise1 (resize2's scale is relative to the LR size HR/sf, as the reference)
    final_sinc   {"size", "cutoff"} or None (then the final filter is the identity pulse)
    final_order  "resize_sinc_then_jpeg" | "jpeg_then_resize_sinc" (each with probability 0.5)
    final_resize_mode  area|bilinear|bicubic
    jpeg2        quality of the last JPEG
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from difiisr.degradation.config import KERNEL_TYPES, RESIZE_MODES, RealESRGANConfig

FINAL_ORDERS = ("resize_sinc_then_jpeg", "jpeg_then_resize_sinc")
FINAL_ORDER_PROB = 0.5  # hard-coded in the reference
_SINC_LARGE_SIZE = 13  # reference: kernels of size >= 13 may take a lower sinc cutoff
_SINC_CUTOFF_SMALL = (math.pi / 3, math.pi)
_SINC_CUTOFF_LARGE = (math.pi / 5, math.pi)
_FINAL_SINC_CUTOFF = (math.pi / 3, math.pi)
_ROTATION = (-math.pi, math.pi)


def sample_params(config: RealESRGANConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Draw one image's degradation parameters (the record layout in the module docstring) from ``rng``."""
    c = config
    rec: dict[str, Any] = {}
    rec["kernel1"] = _draw_kernel(
        rng,
        c.kernel_size_range,
        c.sinc_prob,
        c.kernel_list,
        c.kernel_prob,
        c.blur_sigma,
        c.betag_range,
        c.betap_range,
    )
    rec["resize1"] = _draw_resize(rng, c.resize_prob, c.resize_range)
    rec["noise1"] = _draw_noise(
        rng, c.gaussian_noise_prob, c.noise_range, c.poisson_scale_range, c.gray_noise_prob
    )
    rec["jpeg1"] = float(rng.uniform(*c.jpeg_range))

    # stage 2 is always drawn (a fixed sequence of draws), then dropped when second_order is off
    second_order = bool(rng.random() < c.second_order_prob)
    blur2 = bool(rng.random() < c.second_blur_prob)
    kernel2 = _draw_kernel(
        rng,
        c.kernel_size_range2,
        c.sinc_prob2,
        c.kernel_list2,
        c.kernel_prob2,
        c.blur_sigma2,
        c.betag_range2,
        c.betap_range2,
    )
    resize2 = _draw_resize(rng, c.resize_prob2, c.resize_range2)
    noise2 = _draw_noise(
        rng, c.gaussian_noise_prob2, c.noise_range2, c.poisson_scale_range2, c.gray_noise_prob2
    )
    rec["second_order"] = second_order
    rec["blur2"] = blur2 if second_order else None
    rec["kernel2"] = kernel2 if second_order and blur2 else None
    rec["resize2"] = resize2 if second_order else None
    rec["noise2"] = noise2 if second_order else None

    if rng.random() < c.final_sinc_prob:
        size = _draw_size(rng, c.kernel_size_range2)
        rec["final_sinc"] = {"size": size, "cutoff": float(rng.uniform(*_FINAL_SINC_CUTOFF))}
    else:
        rec["final_sinc"] = None
    rec["final_order"] = FINAL_ORDERS[0] if rng.random() < FINAL_ORDER_PROB else FINAL_ORDERS[1]
    rec["final_resize_mode"] = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
    rec["jpeg2"] = float(rng.uniform(*c.jpeg_range2))
    return rec


def _draw_size(rng: np.random.Generator, size_range: tuple[int, int]) -> int:
    sizes = np.arange(size_range[0], size_range[1] + 1, 2)
    return int(sizes[int(rng.integers(len(sizes)))])


def _draw_beta(rng: np.random.Generator, beta_range: tuple[float, float]) -> float:
    # basicsr: half the draws from [low, 1), half from [1, high]
    if rng.random() < 0.5:
        return float(rng.uniform(beta_range[0], 1.0))
    return float(rng.uniform(1.0, beta_range[1]))


def _draw_kernel(
    rng: np.random.Generator,
    size_range: tuple[int, int],
    sinc_prob: float,
    kinds: tuple[str, ...],
    probs: tuple[float, ...],
    sigma: tuple[float, float],
    betag: tuple[float, float],
    betap: tuple[float, float],
) -> dict[str, Any]:
    size = _draw_size(rng, size_range)
    if rng.random() < sinc_prob:
        cutoff = _SINC_CUTOFF_SMALL if size < _SINC_LARGE_SIZE else _SINC_CUTOFF_LARGE
        return {"type": "sinc", "size": size, "cutoff": float(rng.uniform(*cutoff))}
    p = np.asarray(probs, dtype=np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    sigma_x = float(rng.uniform(*sigma))
    if kind.endswith("aniso"):
        sigma_y = float(rng.uniform(*sigma))
        angle = float(rng.uniform(*_ROTATION))
    else:
        sigma_y, angle = sigma_x, 0.0
    beta = None
    if kind.startswith("generalized"):
        beta = _draw_beta(rng, betag)
    elif kind.startswith("plateau"):
        beta = _draw_beta(rng, betap)
    return {"type": kind, "size": size, "sigma_x": sigma_x, "sigma_y": sigma_y, "angle": angle, "beta": beta}


def _draw_resize(
    rng: np.random.Generator, probs: tuple[float, float, float], scale_range: tuple[float, float]
) -> dict[str, Any]:
    p = np.asarray(probs, dtype=np.float64)
    direction = ("up", "down", "keep")[int(rng.choice(3, p=p / p.sum()))]
    if direction == "up":
        scale = float(rng.uniform(1.0, scale_range[1]))
    elif direction == "down":
        scale = float(rng.uniform(scale_range[0], 1.0))
    else:
        scale = 1.0
    mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
    return {"direction": direction, "scale": scale, "mode": mode}


def _draw_noise(
    rng: np.random.Generator,
    gaussian_prob: float,
    sigma_range: tuple[float, float],
    poisson_range: tuple[float, float],
    gray_prob: float,
) -> dict[str, Any]:
    if rng.random() < gaussian_prob:
        rec: dict[str, Any] = {"kind": "gaussian", "sigma": float(rng.uniform(*sigma_range))}
    else:
        rec = {"kind": "poisson", "scale": float(rng.uniform(*poisson_range))}
    rec["gray"] = bool(rng.random() < gray_prob)
    return rec


# ------------------------------------------------------------------------------------------- kernels


def import_basicsr() -> ModuleType:
    """Import ``basicsr`` (once), undoing the global numpy error-state change (``np.seterr``) of its import."""
    saved = np.geterr()
    try:
        import basicsr
    finally:
        np.seterr(**saved)
    return basicsr


def basicsr_degradations() -> ModuleType:
    """``basicsr.data.degradations`` (imported through ``import_basicsr``)."""
    import_basicsr()
    from basicsr.data import degradations

    return degradations


def build_kernel(spec: dict[str, Any], pad_to: int | None = None) -> np.ndarray:
    """Float64 kernel (sum 1) of a kernel1/kernel2/final_sinc record: (size,size) or zero-padded to pad_to."""
    deg = basicsr_degradations()
    size = int(spec["size"])
    kind = spec.get("type", "sinc")
    with np.errstate(divide="ignore", invalid="ignore"):  # the sinc formula divides 0/0 at the centre
        if kind == "sinc":
            kernel = deg.circular_lowpass_kernel(float(spec["cutoff"]), size, pad_to=0)
        elif kind in KERNEL_TYPES:
            iso = not kind.endswith("aniso")
            args = (size, float(spec["sigma_x"]), float(spec["sigma_y"]), float(spec["angle"]))
            if kind in ("iso", "aniso"):
                kernel = deg.bivariate_Gaussian(*args, isotropic=iso)
            elif kind.startswith("generalized"):
                kernel = deg.bivariate_generalized_Gaussian(*args, float(spec["beta"]), isotropic=iso)
            else:
                kernel = deg.bivariate_plateau(*args, float(spec["beta"]), isotropic=iso)
        else:
            raise ValueError(
                f"kernel record has unknown type {kind!r}; expected 'sinc' or one of {KERNEL_TYPES}"
            )
    kernel = np.asarray(kernel, dtype=np.float64)
    if pad_to is None:
        return kernel
    if size > pad_to:
        raise ValueError(f"kernel size {size} exceeds the padded size {pad_to}")
    pad = (pad_to - size) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad)))
