"""Tile plans, reflect padding and Gaussian blending (pure geometry, no networks)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from difiisr.inference.tiling import (
    Tile,
    TileBlender,
    TilingError,
    batched,
    ceil_to_multiple,
    gaussian_weights,
    lr_size_multiple,
    plan_tiles,
    reflect_pad,
    round_to_multiple,
    stack_crops,
)


def test_rounding_to_multiples() -> None:
    assert round_to_multiple(256, 64) == 256
    assert round_to_multiple(100, 64) == 128
    assert round_to_multiple(90, 64) == 64
    assert round_to_multiple(40, 16) == 48  # halves round up
    assert round_to_multiple(10, 64) == 64  # never below one multiple
    assert ceil_to_multiple(65, 64) == 128
    assert ceil_to_multiple(64, 64) == 64
    assert ceil_to_multiple(1, 16) == 16
    assert lr_size_multiple(64, 1) == 64  # x4 latent: latent side = LR side
    assert lr_size_multiple(16, 4) == 4  # pixel space: net side = 4 x LR side
    assert lr_size_multiple(8, 4) == 2


def test_plan_covers_image_with_overlap_and_flush_last_tile() -> None:
    tiles = plan_tiles(100, 70, tile=32, overlap=8)
    assert {(t.height, t.width) for t in tiles} == {(32, 32)}
    tops = sorted({t.top for t in tiles})
    lefts = sorted({t.left for t in tiles})
    assert tops == [0, 24, 48, 68]  # stride 24, last flush with 100
    assert lefts == [0, 24, 38]
    cover = torch.zeros(100, 70)
    for t in tiles:
        rows, cols = t.slices()
        cover[rows, cols] += 1
    assert bool((cover >= 1).all())
    # neighbours overlap by at least `overlap`
    for a, b in zip(tops, tops[1:], strict=False):
        assert a + 32 - b >= 8


def test_plan_small_image_is_one_tile_and_narrow_axis_not_split() -> None:
    assert plan_tiles(20, 30, tile=64, overlap=16) == [Tile(0, 0, 20, 30)]
    tiles = plan_tiles(16, 100, tile=32, overlap=0)
    assert [t.left for t in tiles] == [0, 32, 64, 68]
    assert {t.height for t in tiles} == {16}


def test_plan_rejects_bad_overlap() -> None:
    with pytest.raises(TilingError, match=r"tile overlap must be in \[0, tile=32\) LR pixels, got 32"):
        plan_tiles(100, 100, tile=32, overlap=32)
    with pytest.raises(TilingError, match="tile size must be >= 1"):
        plan_tiles(100, 100, tile=0, overlap=0)


def test_tile_slices_scale() -> None:
    rows, cols = Tile(2, 3, 4, 5).slices(4)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (8, 24, 12, 32)


def test_reflect_pad_matches_torch_for_small_pads_and_mirrors_large_ones() -> None:
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    assert torch.equal(reflect_pad(x, 8, 9), F.pad(x, (0, 2, 0, 3), mode="reflect"))
    y = reflect_pad(x, 20, 21)  # pads larger than the side need several rounds
    assert y.shape == (2, 3, 20, 21)
    assert torch.equal(y[..., :5, :7], x)
    # the mirror of row 4 about the last row: row 5 == row 3, row 6 == row 2
    assert torch.equal(y[..., 5, :7], x[..., 3, :])
    assert torch.equal(y[..., 6, :7], x[..., 2, :])
    one = torch.tensor([[[[3.0]]]])
    assert torch.equal(reflect_pad(one, 4, 2), torch.full((1, 1, 4, 2), 3.0))
    with pytest.raises(TilingError, match="cannot pad a 5x7 image to the smaller size 4x7"):
        reflect_pad(x, 4, 7)


def test_gaussian_weights_shape_peak_and_edges() -> None:
    w = gaussian_weights(40, 20)
    assert w.shape == (1, 1, 40, 20)
    assert bool((w > 0).all())
    assert float(w.max()) <= 1.0
    # centre pixels (distance 0.5 from the centre) are the maximum; symmetric
    assert torch.allclose(w, w.flip(-1)) and torch.allclose(w, w.flip(-2))
    edge = math.exp(-0.5 * ((20 - 0.5) / 4.0) ** 2) * math.exp(-0.5 * (0.5 / 2.0) ** 2)
    assert float(w[0, 0, 0, 10]) == pytest.approx(edge, rel=1e-5)


def test_blender_reproduces_a_constant_and_an_identity_split() -> None:
    full = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    tiles = plan_tiles(6, 10, tile=4, overlap=1)  # LR units; scale 4 to output
    blender = TileBlender(2, 3, 24, 40)
    for index in range(2):
        for tile in tiles:
            rows, cols = tile.slices(4)
            blender.add(index, rows, cols, full[index, :, rows, cols])
    assert torch.allclose(blender.result(), full, atol=1e-6)


def test_blender_refuses_uncovered_pixels() -> None:
    blender = TileBlender(1, 1, 4, 4)
    blender.add(0, slice(0, 2), slice(0, 4), torch.ones(1, 2, 4))
    with pytest.raises(TilingError, match="covered by no tile"):
        blender.result()


def test_batched_and_stack_crops() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(TilingError, match="batch size must be >= 1"):
        list(batched([1], 0))
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    crops = stack_crops(x, [(1, Tile(1, 2, 2, 2)), (0, Tile(0, 0, 2, 2))], scale=2)
    assert crops.shape == (2, 1, 4, 4)
    assert torch.equal(crops[0], x[1, :, 2:6, 4:8])
    assert torch.equal(crops[1], x[0, :, 0:4, 0:4])
