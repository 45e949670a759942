"""Seeded synthetic thermal (LWIR, white-hot) frames: the stand-in for real IR data in the demo and tests.

A scene is built in apparent temperature (degrees C): a cold sky warming towards a (slightly tilted) horizon,
warmer textured ground, an optional warm asphalt road, cool buildings with leaking windows, cool tree
canopies, and warm bodies (people: upright ellipse + hot head; vehicles: rounded body, hot engine and
wheels, cool windows) sized by perspective and drawn far to near. Optics (Gaussian blur) and the sensor
(automatic gain to 8 bit, or a radiometric count mapping to 16 bit; vignetting; fixed-pattern column and
row offsets; temporal noise) follow. Everything random comes from one ``numpy.random.Generator(seed)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "difiisr.data.synthetic/1"
FILE_PATTERN = "synth_{index:06d}.png"

Range = tuple[float, float]


@dataclass(frozen=True)
class SyntheticSceneConfig:
    """Ranges that each frame draws from (temperatures in degrees C, sizes as fractions of the frame)."""

    horizon: Range = (0.28, 0.55)  # horizon row / height
    horizon_tilt_deg: float = 2.5  # max |tilt|
    sky_top_temp: Range = (-25.0, -5.0)
    sky_horizon_temp: Range = (0.0, 12.0)
    cloud_cover: Range = (0.0, 0.8)
    ground_temp: Range = (4.0, 20.0)  # at the horizon
    ground_near_delta: Range = (-3.0, 5.0)  # bottom row minus horizon
    ground_texture: Range = (1.2, 3.0)  # std of the multi-scale texture
    road_prob: float = 0.5
    road_delta: Range = (2.0, 7.0)  # asphalt over ground
    people: tuple[int, int] = (1, 6)
    vehicles: tuple[int, int] = (0, 3)
    buildings: tuple[int, int] = (0, 4)
    trees: tuple[int, int] = (1, 6)
    treeline_prob: float = 0.5
    person_height: Range = (0.22, 0.45)  # of frame height, for a person standing on the bottom row
    vehicle_length: Range = (0.3, 0.6)  # of frame height, on the bottom row
    skin_temp: Range = (31.0, 35.0)
    clothing_temp: Range = (26.0, 31.0)
    engine_delta: Range = (12.0, 30.0)  # over ambient ground
    wheel_delta: Range = (6.0, 18.0)
    vehicle_body_delta: Range = (2.0, 8.0)
    optical_blur_px: Range = (0.5, 1.1)  # Gaussian sigma
    vignetting: Range = (0.02, 0.08)  # signal drop at the corners (fraction of span)
    column_noise: Range = (0.002, 0.008)  # std of per-column offsets (fraction of span)
    temporal_noise: Range = (0.002, 0.006)  # std of per-pixel noise (fraction of span)
    agc8_low: Range = (0.0, 20.0)  # 8-bit code of the 0.5th percentile
    agc8_high: Range = (225.0, 250.0)  # 8-bit code of the 99.5th percentile
    counts16_low: Range = (3000.0, 9000.0)  # 16-bit count of the 0.05th percentile
    counts16_high: Range = (44000.0, 62000.0)  # 16-bit count of the 99.95th percentile

    def __post_init__(self) -> None:
        for f in self.__dataclass_fields__:
            value = getattr(self, f)
            if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
                raise ValueError(
                    f"SyntheticSceneConfig.{f}: range {value} has low > high; write it as (low, high)"
                )
        if not 0.05 <= self.horizon[0] <= self.horizon[1] <= 0.9:
            raise ValueError(f"SyntheticSceneConfig.horizon: {self.horizon} must lie within (0.05, 0.9)")


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: ``kind`` (person, vehicle, building, tree) and its box ``(x0, y0, x1, y1)`` in pixels."""

    kind: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A rendered frame: ``pixels`` (H,W) uint8|uint16, ``temperature`` (H,W) float32 deg C before the sensor,
    ``warm_mask`` (H,W) bool where people/vehicles are, the ``horizon_row`` at the centre column, the objects."""

    pixels: np.ndarray
    temperature: np.ndarray
    warm_mask: np.ndarray
    horizon_row: int
    seed: int
    objects: tuple[SceneObject, ...] = field(default=())


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _smooth_noise(
    rng: np.random.Generator, h: int, w: int, feature_px: float, aspect: float = 1.0
) -> np.ndarray:
    """(h,w) float32 noise with unit std and features about ``feature_px`` wide (``aspect`` stretches x)."""
    import cv2

    fx = max(feature_px * aspect, 1.0)
    fy = max(feature_px, 1.0)
    gh, gw = int(math.ceil(h / fy)) + 3, int(math.ceil(w / fx)) + 3
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    up = cv2.resize(grid, (int(gw * fx), int(gh * fy)), interpolation=cv2.INTER_CUBIC)
    oy, ox = int(fy), int(fx)
    out = up[oy : oy + h, ox : ox + w]
    std = float(out.std())
    return (out - out.mean()) / (std if std > 1e-6 else 1.0)


def _fractal(
    rng: np.random.Generator, h: int, w: int, scales: tuple[float, ...], aspect: float = 1.0
) -> np.ndarray:
    """Sum of smooth-noise octaves, amplitude proportional to feature size**0.6, normalised to unit std."""
    out = np.zeros((h, w), np.float32)
    for s in scales:
        out += (s**0.6) * _smooth_noise(rng, h, w, s, aspect)
    return out / max(float(out.std()), 1e-6)


def _box(cx: float, cy: float, rx: float, ry: float, h: int, w: int) -> tuple[int, int, int, int] | None:
    x0, x1 = max(int(math.floor(cx - rx - 2)), 0), min(int(math.ceil(cx + rx + 2)), w)
    y0, y1 = max(int(math.floor(cy - ry - 2)), 0), min(int(math.ceil(cy + ry + 2)), h)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def _ellipse_cover(
    cx: float, cy: float, rx: float, ry: float, h: int, w: int, edge: float = 0.8
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """Anti-aliased ellipse: (box, coverage in [0,1], r^2 in [0,1+] for radial profiles) inside the box."""
    box = _box(cx, cy, rx, ry, h, w)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = (xx + 0.5 - cx) / max(rx, 0.5), (yy + 0.5 - cy) / max(ry, 0.5)
    r2 = dx * dx + dy * dy
    dist = (np.sqrt(r2) - 1.0) * min(rx, ry)  # approximate signed distance in pixels
    return box, np.clip(0.5 - dist / edge, 0.0, 1.0), r2


def _rounded_rect_cover(
    x0f: float, y0f: float, x1f: float, y1f: float, radius: float, h: int, w: int, edge: float = 0.8
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Anti-aliased rounded rectangle coverage in its clipped bounding box."""
    cx, cy, hx, hy = (x0f + x1f) / 2, (y0f + y1f) / 2, (x1f - x0f) / 2, (y1f - y0f) / 2
    box = _box(cx, cy, hx, hy, h, w)
    if box is None:
        return None
    bx0, by0, bx1, by1 = box
    yy, xx = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
    r = min(radius, hx, hy)
    qx = np.abs(xx + 0.5 - cx) - (hx - r)
    qy = np.abs(yy + 0.5 - cy) - (hy - r)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    dist = outside + np.minimum(np.maximum(qx, qy), 0) - r
    return box, np.clip(0.5 - dist / edge, 0.0, 1.0)


def _blend(
    img: np.ndarray, box: tuple[int, int, int, int], cover: np.ndarray, value: np.ndarray | float
) -> None:
    """img[box] <- img*(1-cover) + value*cover, in place."""
    x0, y0, x1, y1 = box
    region = img[y0:y1, x0:x1]
    region += cover * (value - region)


class _Painter:
    """Draws scene elements into a temperature map, recording objects and the warm-body mask."""

    def __init__(self, temp: np.ndarray, rng: np.random.Generator, texture: np.ndarray) -> None:
        self.temp = temp
        self.rng = rng
        self.texture = texture  # (H,W) unit-std fine noise, added to warm bodies (folds, wear)
        self.h, self.w = temp.shape
        self.warm = np.zeros(temp.shape, np.float32)
        self.objects: list[SceneObject] = []

    def ellipse(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        value: float,
        *,
        warm: bool,
        profile: float = 0.0,
        edge: float = 0.8,
        texture: float = 0.0,
    ):
        """Ellipse at ``value`` deg C, ``profile`` deg C hotter at its centre than at its rim."""
        got = _ellipse_cover(cx, cy, rx, ry, self.h, self.w, edge=edge)
        if got is None:
            return None
        box, cover, r2 = got
        x0, y0, x1, y1 = box
        inside = value + profile * np.clip(1.0 - r2, 0.0, 1.0)
        if texture:
            inside = inside + texture * self.texture[y0:y1, x0:x1]
        _blend(self.temp, box, cover, inside)
        if warm:
            np.maximum(self.warm[y0:y1, x0:x1], cover, out=self.warm[y0:y1, x0:x1])
        return box

    def rect(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        radius: float,
        value: np.ndarray | float,
        *,
        warm: bool,
    ):
        """Rounded rectangle at ``value`` (a scalar, or an array the size of the clipped box)."""
        got = _rounded_rect_cover(x0, y0, x1, y1, radius, self.h, self.w)
        if got is None:
            return None
        box, cover = got
        _blend(self.temp, box, cover, value)
        if warm:
            bx0, by0, bx1, by1 = box
            np.maximum(self.warm[by0:by1, bx0:bx1], cover, out=self.warm[by0:by1, bx0:bx1])
        return box

    def person(self, cx: float, feet: float, height: float, cfg: SyntheticSceneConfig) -> None:
        rng = self.rng
        cloth, skin = _u(rng, cfg.clothing_temp), _u(rng, cfg.skin_temp)
        stride = rng.uniform(0.0, 0.05) * height
        for side in (-1, 1):  # legs, possibly mid-stride
            self.ellipse(
                cx + side * (0.045 * height + stride),
                feet - 0.23 * height,
                0.05 * height,
                0.24 * height,
                cloth - rng.uniform(0.5, 2.5),
                warm=True,
                texture=0.6,
            )
        for side in (-1, 1):  # arms hang beside the torso, bare hands warmer
            ax = cx + side * 0.15 * height
            self.ellipse(
                ax, feet - 0.58 * height, 0.035 * height, 0.17 * height, cloth - 0.5, warm=True, texture=0.5
            )
            self.ellipse(ax, feet - 0.42 * height, 0.03 * height, 0.035 * height, skin - 1.5, warm=True)
        torso = self.ellipse(
            cx, feet - 0.62 * height, 0.12 * height, 0.2 * height, cloth, warm=True, profile=1.5, texture=0.6
        )
        self.ellipse(cx, feet - 0.9 * height, 0.06 * height, 0.075 * height, skin, warm=True, profile=1.0)
        if torso is not None:
            x0, x1 = int(cx - 0.15 * height), int(cx + 0.15 * height)
            self.objects.append(
                SceneObject("person", (max(x0, 0), max(int(feet - height), 0), min(x1, self.w), int(feet)))
            )

    def vehicle(
        self, cx: float, ground: float, length: float, ambient: float, cfg: SyntheticSceneConfig
    ) -> None:
        rng = self.rng
        height = length * rng.uniform(0.38, 0.5)
        x0, x1 = cx - length / 2, cx + length / 2
        body_top, body_bottom = ground - height, ground - 0.12 * height
        body = ambient + _u(rng, cfg.vehicle_body_delta)
        if self.rect(x0, body_top + 0.35 * height, x1, body_bottom, 0.12 * height, body, warm=True) is None:
            return
        cabin_x0, cabin_x1 = x0 + 0.22 * length, x1 - 0.22 * length
        self.rect(
            cabin_x0, body_top, cabin_x1, body_top + 0.45 * height, 0.15 * height, body - 1.0, warm=True
        )
        sky_reflection = body - rng.uniform(4.0, 10.0)  # glass reflects the cold sky
        self.rect(
            cabin_x0 + 0.04 * length,
            body_top + 0.07 * height,
            cabin_x1 - 0.04 * length,
            body_top + 0.38 * height,
            0.05 * height,
            sky_reflection,
            warm=False,
        )
        front_left = bool(rng.integers(0, 2))
        ex = x0 + 0.17 * length if front_left else x1 - 0.17 * length
        # engine heat diffuses through the hood: a soft blob, hottest inside
        engine = _u(rng, cfg.engine_delta)
        self.ellipse(
            ex,
            body_top + 0.62 * height,
            0.15 * length,
            0.2 * height,
            body + 0.3 * engine,
            warm=True,
            profile=0.7 * engine,
            edge=max(0.03 * length, 1.0),
        )
        exhaust_x = x1 - 0.02 * length if front_left else x0 + 0.02 * length
        self.ellipse(
            exhaust_x,
            body_bottom - 0.08 * height,
            0.03 * length,
            0.04 * length,
            body + 8.0,
            warm=True,
            profile=6.0,
            edge=1.5,
        )
        wheel_r = 0.16 * height + 0.02 * length
        for fx in (0.2, 0.8):
            self.ellipse(
                x0 + fx * length,
                ground - wheel_r,
                wheel_r,
                wheel_r,
                ambient + _u(rng, cfg.wheel_delta),
                warm=True,
                profile=3.0,
            )
        self.objects.append(
            SceneObject(
                "vehicle", (max(int(x0), 0), max(int(body_top), 0), min(int(x1) + 1, self.w), int(ground))
            )
        )

    def building(self, x0: float, width: float, base: float, height: float, value: float) -> None:
        rng = self.rng
        top = base - height
        box = self.rect(x0, top, x0 + width, base, 0.0, value, warm=False)
        if box is None:
            return
        floors = max(int(height / max(self.h * 0.035, 3.0)), 1)
        cols = max(int(width / max(self.h * 0.03, 3.0)), 1)
        leak = rng.uniform(1.0, 4.0)
        lit = rng.random((floors, cols)) < rng.uniform(0.2, 0.8)
        cell_h, cell_w = height / floors, width / cols
        for i, j in zip(*np.nonzero(lit), strict=True):
            wy, wx = top + (i + 0.3) * cell_h, x0 + (j + 0.25) * cell_w
            self.rect(
                wx,
                wy,
                wx + 0.5 * cell_w,
                wy + 0.4 * cell_h,
                0.0,
                value + leak * rng.uniform(0.5, 1.0),
                warm=False,
            )
        self.objects.append(SceneObject("building", box))

    def tree(self, cx: float, base: float, size: float, value: float, texture: np.ndarray) -> None:
        rng = self.rng
        trunk_w = max(size * 0.12, 1.0)
        self.rect(cx - trunk_w / 2, base - size * 0.9, cx + trunk_w / 2, base, 0.0, value + 1.5, warm=False)
        boxes = []
        for _ in range(int(rng.integers(4, 10))):
            r = size * rng.uniform(0.25, 0.45)
            bx, by = cx + rng.normal(0, size * 0.3), base - size * 1.1 + rng.normal(0, size * 0.25)
            got = _ellipse_cover(bx, by, r, r * rng.uniform(0.8, 1.1), self.h, self.w, edge=1.2)
            if got is None:
                continue
            box, cover, _ = got
            x0, y0, x1, y1 = box
            _blend(self.temp, box, cover, value + texture[y0:y1, x0:x1])
            boxes.append(box)
        if boxes:
            xs0, ys0, xs1, ys1 = zip(*boxes, strict=True)
            self.objects.append(SceneObject("tree", (min(xs0), min(ys0), max(xs1), int(min(base, self.h)))))


def render_scene(
    width: int, height: int, *, seed: int, bit_depth: int = 8, config: SyntheticSceneConfig | None = None
) -> SyntheticScene:
    """Render one seeded thermal frame with its ground truth (temperature map, warm-body mask, objects)."""
    import cv2

    if width < 8 or height < 8:
        raise ValueError(f"render_scene: size {width}x{height} is too small; use at least 8x8 pixels")
    if bit_depth not in (8, 16):
        raise ValueError(f"render_scene: bit_depth must be 8 or 16, got {bit_depth}")
    if seed < 0:
        raise ValueError(f"render_scene: seed must be >= 0, got {seed}")
    cfg = config or SyntheticSceneConfig()
    rng = np.random.default_rng(seed)
    h, w = height, width
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]

    # --- sky and ground, split by a tilted horizon
    horizon = _u(rng, cfg.horizon) * h
    tilt = math.tan(math.radians(rng.uniform(-cfg.horizon_tilt_deg, cfg.horizon_tilt_deg)))
    horizon_at = horizon + tilt * (xx - w / 2)  # (1,w)
    sky_top, sky_h = _u(rng, cfg.sky_top_temp), _u(rng, cfg.sky_horizon_temp)
    elevation = np.clip((horizon_at - yy) / max(horizon, 1.0), 0.0, 1.0)
    sky = sky_h - (sky_h - sky_top) * elevation**0.55
    cover = _u(rng, cfg.cloud_cover)
    clouds = _fractal(rng, h, w, (h / 3, h / 10, h / 30), aspect=2.5)
    sky = sky + np.maximum(clouds - (1.2 - 1.6 * cover), 0.0) * (sky_h - sky_top) * 0.35
    ground_h = _u(rng, cfg.ground_temp)
    depth = np.clip((yy - horizon_at) / max(h - horizon, 1.0), 0.0, 1.0)  # 0 at horizon, 1 at the bottom row
    ground = ground_h + _u(rng, cfg.ground_near_delta) * depth
    texture = _fractal(rng, h, w, (h / 4, h / 12, h / 32, 4.0, 1.5), aspect=2.0)
    ground = ground + _u(rng, cfg.ground_texture) * texture * (0.4 + 0.6 * depth)
    sky_mask = np.clip(horizon_at - yy + 0.5, 0.0, 1.0)
    temp = (sky * sky_mask + ground * (1.0 - sky_mask)).astype(np.float32)

    # --- road: a perspective trapezoid to a vanishing point on the horizon
    if rng.random() < cfg.road_prob:
        vx = rng.uniform(0.2, 0.8) * w
        half_bottom = rng.uniform(0.15, 0.4) * w
        bottom_x = vx + rng.uniform(-0.3, 0.3) * w
        frac = np.clip((yy - (horizon + tilt * (vx - w / 2))) / max(h - horizon, 1.0), 0.0, 1.0)
        centre = vx + (bottom_x - vx) * frac
        half = half_bottom * frac
        road = np.clip(half - np.abs(xx - centre) + 0.5, 0.0, 1.0) * (frac > 0)
        delta = _u(rng, cfg.road_delta) + 0.4 * _smooth_noise(rng, h, w, 2.0)
        dash = (np.abs(xx - centre) < np.maximum(half * 0.02, 0.6)) & (np.sin(frac * 60.0 / (0.2 + frac)) > 0)
        temp += road * (ground_h + delta - temp) - 1.5 * dash * road

    painter = _Painter(temp, rng, _smooth_noise(rng, h, w, 2.5))
    horizon_px = lambda x: horizon + tilt * (x - w / 2)  # noqa: E731 - horizon row at column x

    # --- far background: treeline, buildings, trees standing on the horizon
    canopy_texture = 0.9 * _smooth_noise(rng, h, w, 1.5) + 0.6 * _smooth_noise(rng, h, w, 5.0)
    if rng.random() < cfg.treeline_prob:
        ragged = np.abs(_smooth_noise(rng, 1, w, w / 12)[0]) + 0.35 * np.abs(_smooth_noise(rng, 1, w, 3.0)[0])
        profile = ragged * rng.uniform(0.02, 0.07) * h + 0.01 * h
        top = horizon_at[0] - profile
        line = np.clip(yy - top[None, :] + 0.5, 0.0, 1.0) * np.clip(horizon_at + 1.5 - yy, 0.0, 1.0)
        tl_temp = ground_h - rng.uniform(2.0, 6.0) + canopy_texture
        temp += line * (tl_temp - temp)
    for _ in range(int(rng.integers(cfg.buildings[0], cfg.buildings[1] + 1))):
        bw, bh = rng.uniform(0.06, 0.25) * w, rng.uniform(0.08, 0.35) * h
        bx = rng.uniform(-0.05, 1.0) * w - bw / 2
        painter.building(bx, bw, horizon_px(bx + bw / 2) + 1.0, bh, ground_h + rng.uniform(-6.0, 1.5))
    for _ in range(int(rng.integers(cfg.trees[0], cfg.trees[1] + 1))):
        tx = rng.uniform(0, w)
        base = horizon_px(tx) + rng.uniform(0.0, 0.1) * (h - horizon)
        size = rng.uniform(0.04, 0.12) * h * (1.0 + 2.0 * (base - horizon) / max(h - horizon, 1.0))
        painter.tree(tx, base, size, ground_h - rng.uniform(2.0, 7.0), canopy_texture)

    # --- warm bodies on the ground plane, drawn far to near
    bodies: list[tuple[float, str, float]] = []
    for _ in range(int(rng.integers(cfg.people[0], cfg.people[1] + 1))):
        bodies.append((rng.uniform(0.12, 1.0), "person", rng.uniform(0.03, 0.97) * w))
    for _ in range(int(rng.integers(cfg.vehicles[0], cfg.vehicles[1] + 1))):
        bodies.append((rng.uniform(0.15, 1.0), "vehicle", rng.uniform(0.05, 0.95) * w))
    halo = np.zeros((h, w), np.float32)
    for depth_frac, kind, x in sorted(bodies):
        feet = horizon_px(x) + depth_frac * (h - horizon_px(x)) * 0.98
        ambient = float(temp[min(max(int(feet), 0), h - 1), min(max(int(x), 0), w - 1)])  # local ground
        if kind == "person":
            painter.person(x, feet, depth_frac * h * _u(rng, cfg.person_height), cfg)
        else:
            painter.vehicle(x, feet, depth_frac * h * _u(rng, cfg.vehicle_length), ambient, cfg)
    if painter.objects:
        # faint warm reflection/heat around bodies
        halo = cv2.GaussianBlur(painter.warm, (0, 0), sigmaX=max(h / 60.0, 1.0))
        temp += 2.0 * halo * (1.0 - painter.warm)

    # --- optics
    temp = cv2.GaussianBlur(temp, (0, 0), sigmaX=_u(rng, cfg.optical_blur_px))

    # --- sensor: gain, vignetting, fixed-pattern and temporal noise, quantisation
    lo_pct, hi_pct = (0.5, 99.5) if bit_depth == 8 else (0.05, 99.95)
    t_lo, t_hi = np.percentile(temp, [lo_pct, hi_pct])
    span = max(float(t_hi - t_lo), 1e-3)
    signal = (temp - float(t_lo)) / span
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    # at IR wavelengths the scene's contrast is small next to the total flux, so the optics' fall-off
    # shows up after gain as an offset that darkens the corners by a fraction of the span
    signal -= _u(rng, cfg.vignetting) * (r2 / 2.0)
    col_sigma = _u(rng, cfg.column_noise)
    signal += rng.normal(0.0, col_sigma, size=(1, w)).astype(np.float32)
    signal += rng.normal(0.0, col_sigma / 3.0, size=(h, 1)).astype(np.float32)
    signal += rng.normal(0.0, _u(rng, cfg.temporal_noise), size=(h, w)).astype(np.float32)
    if bit_depth == 8:
        lo, hi, top, dtype = _u(rng, cfg.agc8_low), _u(rng, cfg.agc8_high), 255.0, np.uint8
    else:
        lo, hi, top, dtype = _u(rng, cfg.counts16_low), _u(rng, cfg.counts16_high), 65535.0, np.uint16
    pixels = np.clip(np.rint(lo + signal * (hi - lo)), 0.0, top).astype(dtype)
    centre_horizon = int(round(horizon))
    return SyntheticScene(
        pixels=pixels,
        temperature=temp.astype(np.float32),
        warm_mask=painter.warm > 0.5,
        horizon_row=centre_horizon,
        seed=seed,
        objects=tuple(painter.objects),
    )


def generate_scene(width: int, height: int, *, seed: int, bit_depth: int = 8) -> np.ndarray:
    """One seeded thermal frame: ``(height, width)`` uint8 (bit_depth 8) or uint16 (16), white-hot."""
    return render_scene(width, height, seed=seed, bit_depth=bit_depth).pixels


def scene_seed(base_seed: int, index: int) -> int:
    """Seed of image ``index`` in a data set with ``base_seed``: independent of the data set's size."""
    state = np.random.SeedSequence([int(base_seed), int(index)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) | (int(state[1]) >> 1)  # 63-bit, JSON/int64-safe


def dataset_paths(out_dir: str | os.PathLike[str], n: int) -> list[Path]:
    """The ``n`` file paths a synthetic data set uses: ``out_dir/synth_000000.png`` ..."""
    return [Path(out_dir) / FILE_PATTERN.format(index=k) for k in range(n)]


def parse_size(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """``"WxH"`` / ``"N"`` / ``N`` / ``(W, H)`` -> ``(width, height)`` in pixels, each >= 8."""
    if isinstance(text, tuple):
        w, h = text
    elif isinstance(text, int):
        w = h = text
    else:
        parts = str(text).lower().replace(" ", "").split("x")
        if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
            raise ValueError(f"size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 512x384, or one number")
        w, h = (int(parts[0]), int(parts[-1]))
    if w < 8 or h < 8:
        raise ValueError(f"size {text!r}: width and height must each be at least 8 pixels")
    return int(w), int(h)


def _iter_progress(n: int, progress: bool) -> Iterator[int]:
    from tqdm.auto import tqdm

    yield from tqdm(range(n), desc="synth-data", unit="img", disable=not progress, leave=False)


def generate_dataset(
    out_dir: str | os.PathLike[str],
    n: int,
    size: str | int | tuple[int, int] = (256, 256),
    bit_depth: int = 8,
    seed: int = 0,
    progress: bool = True,
    *,
    config: SyntheticSceneConfig | None = None,
) -> list[Path]:
    """Write ``n`` frames as ``out_dir/synth_000000.png``... (size ``(W,H)``), skipping files already there.

    Image k uses ``scene_seed(seed, k)`` whatever ``n`` is; the seeds are stored in each PNG's text chunks.
    Returns every path of the set, written now or before.
    """
    from difiisr.io import write_image

    if n < 0:
        raise ValueError(f"generate_dataset: n must be >= 0, got {n}")
    if bit_depth not in (8, 16):
        raise ValueError(f"generate_dataset: bit_depth must be 8 or 16, got {bit_depth}")
    width, height = parse_size(size)
    paths = dataset_paths(out_dir, n)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = 0
    for k in _iter_progress(n, progress):
        path = paths[k]
        if path.exists():
            continue
        s = scene_seed(seed, k)
        scene = render_scene(width, height, seed=s, bit_depth=bit_depth, config=config)
        text = {
            "Software": GENERATOR_VERSION,
            "difiisr:seed": str(s),
            "difiisr:base_seed": str(seed),
            "difiisr:index": str(k),
            "Description": "synthetic thermal frame (not real data)",
        }
        write_image(path, scene.pixels, text=text)
        written += 1
    logger.debug("synthetic data: wrote %d of %d frames to %s", written, n, out_dir)
    return paths
