"""difiisr.data.synthetic: determinism, sizes/depths, plausible thermal statistics, data set files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difiisr.data.synthetic import (
    FILE_PATTERN,
    SyntheticSceneConfig,
    dataset_paths,
    generate_dataset,
    generate_scene,
    parse_size,
    render_scene,
    scene_seed,
)
from difiisr.io import read_image


def test_same_seed_is_identical_and_different_seed_differs() -> None:
    a = generate_scene(96, 64, seed=7)
    b = generate_scene(96, 64, seed=7)
    c = generate_scene(96, 64, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.5


@pytest.mark.parametrize(("bit_depth", "dtype"), [(8, np.uint8), (16, np.uint16)])
@pytest.mark.parametrize(("width", "height"), [(64, 48), (33, 71)])
def test_size_and_bit_depth(width: int, height: int, bit_depth: int, dtype: type) -> None:
    img = generate_scene(width, height, seed=3, bit_depth=bit_depth)
    assert img.shape == (height, width) and img.dtype == dtype
    assert img.std() > 0


def test_16bit_is_radiometric_not_scaled_8bit() -> None:
    img = generate_scene(256, 192, seed=11, bit_depth=16)
    values = np.unique(img)
    assert len(values) > 5000  # far more levels than 8 bits could hold
    assert np.mean(img % 257 == 0) < 0.05  # not 8-bit codes times 257
    lo, hi = np.percentile(img, [0.05, 99.95])
    assert 0 < lo < 12_000 and 40_000 < hi <= 65_535  # spread over most of the 16-bit range
    assert hi - lo > 30_000


def test_8bit_uses_most_of_the_range_like_an_agc_camera() -> None:
    img = generate_scene(256, 192, seed=5)
    lo, hi = np.percentile(img, [0.5, 99.5])
    assert lo <= 30 and hi >= 215


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_scene_has_thermal_structure(seed: int) -> None:
    scene = render_scene(192, 144, seed=seed)
    px = scene.pixels.astype(np.float64)
    # warm bodies are brighter than the frame (white-hot)
    assert scene.warm_mask.any()
    assert px[scene.warm_mask].mean() > px.mean() + 15
    # the cold sky (top rows) is darker than the ground (bottom rows)
    top, bottom = px[: max(scene.horizon_row // 3, 1)], px[-20:]
    assert top.mean() + 20 < bottom.mean()
    kinds = {o.kind for o in scene.objects}
    assert "person" in kinds  # config draws at least one person per frame
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 144


def test_sensor_noise_and_blur_are_present() -> None:
    px = generate_scene(128, 128, seed=9).astype(np.float64)
    # neighbour differences are neither zero (noise, texture) nor huge everywhere (optical blur)
    d = np.abs(np.diff(px, axis=1))
    assert 0.2 < np.median(d) < 8.0


def test_vignetting_darkens_corners_on_a_flat_scene() -> None:
    flat = SyntheticSceneConfig(
        sky_top_temp=(10.0, 10.0),
        sky_horizon_temp=(10.0, 10.0),
        cloud_cover=(0.0, 0.0),
        ground_temp=(10.0, 10.0),
        ground_near_delta=(0.0, 0.0),
        ground_texture=(0.0, 0.0),
        road_prob=0.0,
        people=(0, 0),
        vehicles=(0, 0),
        buildings=(0, 0),
        trees=(0, 0),
        treeline_prob=0.0,
        vignetting=(0.3, 0.3),
        column_noise=(0.0, 0.0),
        temporal_noise=(0.0, 0.0),
    )
    scene = render_scene(128, 128, seed=0, bit_depth=16, config=flat)
    assert scene.objects == ()
    px = scene.pixels.astype(np.float64)
    centre, corner = px[56:72, 56:72].mean(), px[:8, :8].mean()
    assert corner < centre


def test_config_rejects_inverted_ranges() -> None:
    with pytest.raises(
        ValueError, match=r"SyntheticSceneConfig.skin_temp: range \(35.0, 30.0\) has low > high"
    ):
        SyntheticSceneConfig(skin_temp=(35.0, 30.0))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bit_depth must be 8 or 16, got 12"):
        generate_scene(32, 32, seed=0, bit_depth=12)
    with pytest.raises(ValueError, match="too small"):
        generate_scene(4, 32, seed=0)


def test_scene_seed_depends_on_index_and_base_only() -> None:
    seeds = [scene_seed(5, k) for k in range(50)]
    assert len(set(seeds)) == 50
    assert seeds[3] == scene_seed(5, 3)
    assert scene_seed(6, 3) != seeds[3]
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512x384", (512, 384)), ("64X32", (64, 32)), ("100", (100, 100)), (48, (48, 48)), ((40, 30), (40, 30))],
)
def test_parse_size(text: object, expected: tuple[int, int]) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12x", "axb", "64x32x2", "-5x10", "4x4", ""])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_generate_dataset_files_seeds_and_independence_of_n(tmp_path: Path) -> None:
    small = generate_dataset(tmp_path / "a", 2, (48, 40), 8, seed=21, progress=False)
    large = generate_dataset(tmp_path / "b", 4, (48, 40), 8, seed=21, progress=False)
    assert [p.name for p in small] == ["synth_000000.png", "synth_000001.png"]
    assert [p.name for p in large] == [FILE_PATTERN.format(index=k) for k in range(4)]
    for k in range(2):
        np.testing.assert_array_equal(read_image(small[k]).pixels, read_image(large[k]).pixels)
        np.testing.assert_array_equal(
            read_image(large[k]).pixels, generate_scene(48, 40, seed=scene_seed(21, k))
        )  # image k is scene_seed(base, k), whatever n is
    with Image.open(large[3]) as im:
        im.load()
        assert im.text["difiisr:seed"] == str(scene_seed(21, 3))
        assert im.text["difiisr:base_seed"] == "21" and im.text["difiisr:index"] == "3"
    loaded = read_image(large[0])
    assert (loaded.width, loaded.height, loaded.bit_depth, loaded.channels) == (48, 40, 8, 1)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [p.name for p in large]  # no temp files


def test_generate_dataset_skips_existing_and_16bit(tmp_path: Path) -> None:
    out = tmp_path / "set"
    paths = dataset_paths(out, 3)
    out.mkdir()
    paths[1].write_bytes(b"placeholder")  # an existing output is never regenerated
    got = generate_dataset(out, 3, "40x32", bit_depth=16, seed=2, progress=False)
    assert got == paths
    assert paths[1].read_bytes() == b"placeholder"
    first = read_image(paths[0])
    assert first.bit_depth == 16 and (first.width, first.height) == (40, 32)
    mtime = paths[0].stat().st_mtime_ns
    generate_dataset(out, 3, "40x32", bit_depth=16, seed=2, progress=False)
    assert paths[0].stat().st_mtime_ns == mtime
