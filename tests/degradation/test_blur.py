"""Per-image blur grouped by kernel size: equal to basicsr ``filter2D``, independent of the other images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from difiisr.degradation import build_kernel
from difiisr.degradation.blur import depthwise_filter, filter_per_image, group_by_size
from difiisr.degradation.params import import_basicsr


@pytest.fixture(scope="module")
def filter2d():
    """basicsr's ``filter2D`` (the reference: one kernel per image, all of one size)."""
    import_basicsr()
    from basicsr.utils.img_process_util import filter2D

    return filter2D


def _kernels(sizes: list[int | None], seed: int = 0) -> list[torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor | None] = []
    for k in sizes:
        if k is None:
            out.append(None)
            continue
        kernel = torch.rand(k, k, generator=gen)
        out.append(kernel / kernel.sum())
    return out


def test_group_by_size_sorts_sizes_and_skips_none() -> None:
    groups = group_by_size(_kernels([7, 3, None, 7, 21, 3]))
    assert list(groups) == [3, 7, 21]
    assert groups == {3: [1, 5], 7: [0, 3], 21: [4]}
    assert group_by_size([None, None]) == {}


def test_group_by_size_rejects_even_or_non_square_kernels() -> None:
    with pytest.raises(
        ValueError, match=r"blur kernel 1 must be square with an odd side, got shape \(4, 4\)"
    ):
        group_by_size([torch.ones(3, 3), torch.ones(4, 4)])
    with pytest.raises(
        ValueError, match=r"blur kernel 0 must be square with an odd side, got shape \(3, 5\)"
    ):
        group_by_size([np.ones((3, 5))])


@pytest.mark.parametrize("side", [64, 37])
def test_mixed_sizes_equal_filter2d_on_each_image_alone_exactly(filter2d, side: int) -> None:
    sizes = [3, 5, 13, 3, None, 21, 5, 9]
    kernels = _kernels(sizes, seed=side)
    x = torch.rand(len(sizes), 3, side, side, generator=torch.Generator().manual_seed(1))
    out = filter_per_image(x, kernels)
    for i, kernel in enumerate(kernels):
        if kernel is None:
            assert torch.equal(out[i], x[i])
            continue
        # filter2D's single-kernel branch (a plain conv) and its batch branch (a grouped conv) both
        alone = filter2d(x[i : i + 1].contiguous(), kernel[None])
        pair = filter2d(x[[i, i]].contiguous(), torch.stack([kernel, kernel]))
        assert torch.equal(out[i], alone[0]), (i, float((out[i] - alone[0]).abs().max()))
        assert torch.equal(out[i], pair[0])


def test_actual_size_equals_the_reference_padding_to_21(filter2d) -> None:
    """The reference zero-pads every kernel to 21x21; filtering at the kernel's own size gives the same."""
    specs = [
        {"type": "aniso", "size": 7, "sigma_x": 1.3, "sigma_y": 0.6, "angle": 0.4, "beta": None},
        {"type": "sinc", "size": 11, "cutoff": 1.2},
        {"type": "plateau_iso", "size": 3, "sigma_x": 0.8, "sigma_y": 0.8, "angle": 0.0, "beta": 1.5},
    ]
    x = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    ours = filter_per_image(x, [build_kernel(s) for s in specs])
    padded = torch.from_numpy(np.stack([build_kernel(s, 21) for s in specs]).astype(np.float32))
    reference = filter2d(x, padded)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-6)


def test_result_does_not_depend_on_batch_companions_or_position() -> None:
    kernels = _kernels([5, 5, 11, 5, 3, 11], seed=3)
    x = torch.rand(6, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    full = filter_per_image(x, kernels)
    perm = [4, 2, 0, 5, 1, 3]
    permuted = filter_per_image(x[perm], [kernels[i] for i in perm])
    assert torch.equal(permuted, full[perm])
    for i in range(6):
        assert torch.equal(filter_per_image(x[i : i + 1], [kernels[i]])[0], full[i])


def test_channels_last_path_equals_planar_path() -> None:
    """One image with a small kernel runs channels-last on CPU; the pixels equal the planar grouped conv."""
    kernel = _kernels([5])[0]
    assert kernel is not None
    x = torch.rand(1, 3, 50, 50, generator=torch.Generator().manual_seed(5))
    single = depthwise_filter(x, kernel[None])  # 3 channels: channels-last
    in_group = depthwise_filter(torch.cat([x, x, x]), kernel[None].expand(3, -1, -1))  # 9 channels: planar
    assert torch.equal(single[0], in_group[0]) and single.is_contiguous()


def test_identity_and_constant_images() -> None:
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(6))
    assert filter_per_image(x, [None, None]) is x
    pulse = torch.zeros(5, 5)
    pulse[2, 2] = 1.0
    assert torch.equal(filter_per_image(x, [pulse, None]), x)
    flat = torch.full((1, 3, 20, 20), 0.25)
    box = torch.full((9, 9), 1 / 81)
    assert torch.allclose(filter_per_image(flat, [box]), flat, atol=1e-6)


def test_kernel_count_must_match_batch() -> None:
    with pytest.raises(ValueError, match="got 1 kernels for a batch of 2 images"):
        filter_per_image(torch.zeros(2, 3, 8, 8), [torch.ones(3, 3)])


def test_reflect_padding_matches_numpy_reference() -> None:
    """Closed form: a 3x3 kernel with one tap at the top-left reads the reflected pixel (i-1, j-1)."""
    x = torch.arange(36, dtype=torch.float32).view(1, 1, 6, 6).expand(1, 3, 6, 6).contiguous()
    kernel = torch.zeros(3, 3)
    kernel[0, 0] = 1.0
    out = filter_per_image(x, [kernel])
    padded = np.pad(x[0, 0].numpy(), 1, mode="reflect")
    np.testing.assert_array_equal(out[0, 1].numpy(), padded[:6, :6])
    assert torch.equal(
        out, F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel.expand(3, 1, 3, 3), groups=3)
    )
