"""Memory-lean CPU inference for a plain ``VQGANf4``: the same numbers as its forward, at a lower peak memory.

``encode(vqgan, x)`` and ``decode(vqgan, z)`` walk the modules of a plain ``difiisr.models.vqgan.VQGANf4`` (they own
no weights and change none) and compute what its plain forward computes, with the same kernels on the same values
in the same memory layouts, so fp32 CPU outputs are bit-identical. ``VQGANf4.encode``/``decode`` call them when
``applies(x)``: a CPU tensor with autograd off (``torch.no_grad``/``torch.inference_mode``) and no CPU autocast.
Training, autograd, autocast (activations change dtype between ops) and accelerators run the plain forward.

What differs from the plain forward:

* SiLU, GroupNorm (a chunk of groups at a time: a group's statistics and output depend on its own channels
  only), residual adds (``a + b == b + a`` exactly) run in place, and every intermediate is dropped as soon as the
  next one exists;
* for inputs of ``STRIP_MIN_BYTES`` or more, each 3x3 convolution (with the nearest-x2 upsample in front of it, and
  the stride-2 downsample) runs in row strips of ``STRIP_BYTES`` or a little more input, with a 1-row halo: a
  strip's output rows see the same input rows, weights and kernel as in the whole-image call. A 3x3 conv whose
  output fits into its input (same or fewer channels) writes it over the input, strip by strip;
* every tensor keeps the layout the plain path gives it, since CPU kernels (and so their rounding) depend on it.
  The decoder runs channels-last (the quantiser returns a permuted view and each conv keeps its input's layout),
  the encoder NCHW. The 1x1 ``nin_shortcut`` always runs on the whole map: oneDNN splits a 1x1 conv's channel sum
  across threads by a shape-dependent rule, so NCHW row strips would round differently;
* on Linux/glibc, freed heap pages go back to the OS before the decoder's peak stages (``release_free_heap``).

The decoder's peak is its first full-resolution block (256 -> 128 channels): its 256-channel input plus the 1x1
shortcut's 128-channel output. ``benchmarks/vqgan_memory.py`` measures both paths.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from difiisr.models.vqgan import (
        Decoder,
        Downsample,
        Encoder,
        ResnetBlock,
        Upsample,
        VQGANf4,
        _Level,
        _Middle,
    )

#: A 3x3 conv (resample included) whose input has at least this many bytes runs in row strips ...
STRIP_MIN_BYTES = 64 * 2**20
#: ... of STRIP_BYTES to 2*STRIP_BYTES of input each; also the size of the in-place GroupNorm's chunk temporaries.
STRIP_BYTES = 8 * 2**20
#: In-place GroupNorm chunks hold a multiple of this many channels: the channels-last CPU kernel vectorises over
#: channels and rounds a 4-channel slice differently from the same channels inside the whole tensor.
NORM_CHUNK_CHANNELS = 16


def applies(x: torch.Tensor) -> bool:
    """True when a ``VQGANf4.encode``/``decode`` call on ``x`` takes the lean path: CPU, autograd off, no autocast.

    Any input layout qualifies: the lean path starts with a plain conv (``conv_in``; the quantiser and
    ``post_quant_conv`` in ``decode``), whose output is dense NCHW or channels-last.
    """
    return x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")


def encode(vqgan: VQGANf4, x: torch.Tensor) -> torch.Tensor:
    """``vqgan.quant_conv(vqgan.encoder(x))`` lean: (B,3,H,W) in [-1,1] -> (B,embed_dim,H/4,W/4); ``x`` is kept."""
    return vqgan.quant_conv(encoder(vqgan.encoder, x))


def decode(vqgan: VQGANf4, z: torch.Tensor) -> torch.Tensor:
    """``vqgan.decoder(vqgan.post_quant_conv(vqgan.quantize(z)))`` lean: (B,embed_dim,h,w) -> (B,3,4h,4w)."""
    return decoder(vqgan.decoder, vqgan.post_quant_conv(vqgan.quantize(z)))


def encoder(enc: Encoder, x: torch.Tensor) -> torch.Tensor:
    """``enc(x)`` lean: (B,in_channels,H,W) -> (B,z_channels,H/f,W/f); ``x`` is kept."""
    h = enc.conv_in(x)
    for step in _level_steps(enc.down):
        h = step(h)  # the step's input is dropped here, as soon as its output exists
    h = middle(enc.mid, h)
    return conv3x3(enc.conv_out, _norm_silu_(enc.norm_out, h))


def decoder(dec: Decoder, z: torch.Tensor) -> torch.Tensor:
    """``dec(z)`` lean: (B,z_channels,h,w) -> (B,out_ch,h*f,w*f); ``z`` is kept.

    The peak memory is in the block after an upsample: free heap pages go back to the OS before each of them
    (here and at the end of ``upsample``).
    """
    release_free_heap()
    h = middle(dec.mid, dec.conv_in(z))
    for step in _level_steps(reversed(dec.up)):
        h = step(h)
    return conv3x3(dec.conv_out, _norm_silu_(dec.norm_out, h))


def _level_steps(levels: Iterable[_Level]) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """The lean steps of ``levels`` in order: each block (consuming its input), its attention, the resampler.

    The caller runs ``h = step(h)`` in its own loop, so it alone owns each intermediate (a helper that took ``h``
    as an argument and ran a whole level would keep the level's input alive to its end).
    """
    for level in levels:
        for i, block in enumerate(level.block):
            yield functools.partial(resnet_block, block, consume=True)
            if len(level.attn):
                yield level.attn[i]
        if hasattr(level, "downsample"):
            yield functools.partial(downsample, level.downsample)
        if hasattr(level, "upsample"):
            yield functools.partial(upsample, level.upsample)


def middle(mid: _Middle, x: torch.Tensor) -> torch.Tensor:
    """``mid(x)`` lean: (B,C,H,W) -> (B,C,H,W); ``x`` is kept (``block_1`` has no shortcut, its input is its
    residual)."""
    return resnet_block(mid.block_2, mid.attn_1(resnet_block(mid.block_1, x, consume=False)), consume=True)


def resnet_block(block: ResnetBlock, x: torch.Tensor, *, consume: bool) -> torch.Tensor:
    """``block(x)`` lean: (B,C_in,H,W) -> (B,C_out,H,W), in place, strip-wise on large inputs.

    ``consume=True`` lets a block with ``nin_shortcut`` normalise ``x`` in place and write ``conv1`` over it
    (``x`` is destroyed); an identity block always keeps ``x``, its residual.
    """
    skip = None if block.nin_shortcut is None else block.nin_shortcut(x)
    t = _norm_silu_(block.norm1, x) if consume and skip is not None else F.silu(block.norm1(x), inplace=True)
    h = conv3x3(block.conv1, t, overwrite=True)
    del t
    h = _norm_silu_(block.norm2, h)
    if block.dropout.training and block.dropout.p > 0:
        h = block.dropout(h)
    h = conv3x3(block.conv2, h, overwrite=True)
    return h.add_(x) if skip is None else skip.add_(h)  # x + h, skip + h: addition commutes exactly


def downsample(ds: Downsample, x: torch.Tensor) -> torch.Tensor:
    """``ds(x)`` lean: (B,C,H,W) -> (B,C,H/2,W/2), in row strips when ``x`` is large; ``x`` is kept.

    Output rows [o0, o1) read input rows [2 o0, 2 o1 + 1), the last one being the zero pad row.
    """
    if not _use_strips(x):
        return ds(x)
    b, c, h, w = x.shape
    h_out, w_out = (h - 2) // 2 + 1, (w - 2) // 2 + 1
    layout = _layout(x)
    out = torch.empty(
        (b, ds.conv.out_channels, h_out, w_out), dtype=x.dtype, device=x.device, memory_format=layout
    )
    for o0, o1 in _strips(h_out, 2 * _nbytes(x) // h):
        rows = min(h, 2 * o1 + 1) - 2 * o0
        shape = (b, c, 2 * (o1 - o0) + 1, w + 1)
        strip = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout).zero_()
        strip[:, :, :rows, :w] = x[:, :, 2 * o0 : 2 * o0 + rows]
        out[:, :, o0:o1] = ds.conv(strip)
        del strip
    return out


def upsample(us: Upsample, x: torch.Tensor) -> torch.Tensor:
    """``us(x)`` lean: (B,C,H,W) -> (B,C,2H,2W), in row strips of the x2 image when it is large; ``x`` is kept.

    Returns after ``release_free_heap`` (the block after an upsample is where the decoder peaks).

    Output rows [r0, r1) need upsampled rows [r0-1, r1+1), i.e. input rows [(r0-1)//2, r1//2]; each strip is
    upsampled on its own (nearest x2 only copies), with zero rows at the image edges.
    """
    b, c, h, w = x.shape
    if not (
        x.device.type == "cpu" and 4 * _nbytes(x) >= STRIP_MIN_BYTES
    ):  # the upsampled map is 4x the input
        return us(x)
    h2, w2, layout = 2 * h, 2 * w, _layout(x)
    out = torch.empty((b, us.conv.out_channels, h2, w2), dtype=x.dtype, device=x.device, memory_format=layout)
    for r0, r1 in _strips(h2, 4 * _nbytes(x) // h2):
        a, e = max(0, r0 - 1), min(h2, r1 + 1)  # upsampled rows the strip reads
        up = F.interpolate(x[:, :, a // 2 : (e - 1) // 2 + 1], scale_factor=2.0, mode="nearest")
        strip = torch.empty((b, c, r1 - r0 + 2, w2), dtype=x.dtype, device=x.device, memory_format=layout)
        top = a - (r0 - 1)  # 1 at the top edge (zero row), else 0
        strip[:, :, top : top + e - a] = up[:, :, a - 2 * (a // 2) : a - 2 * (a // 2) + e - a]
        del up
        if top:
            strip[:, :, 0].zero_()
        if e == r1:
            strip[:, :, -1].zero_()
        out[:, :, r0:r1] = F.conv2d(strip, us.conv.weight, us.conv.bias, padding=(0, 1))
        del strip
    release_free_heap()  # the strips' heap pages, before the decoder's next (peak) block
    return out


def conv3x3(conv: nn.Conv2d, x: torch.Tensor, *, overwrite: bool = False) -> torch.Tensor:
    """``conv(x)`` for a 3x3, stride-1, padding-1 conv: (B,C_in,H,W) -> (B,C_out,H,W), in row strips when large.

    A strip of output rows [r0, r1) is computed from input rows [r0-1, r1+1) (zero rows at the image edges) with
    padding only along W, so every output value sees the same inputs and kernel as in the whole-image call. With
    ``overwrite`` (and C_out <= C_in) the result is written over ``x``'s storage (its first C_out channels; ``x`` is
    destroyed, the result may be a view of it): a strip only overwrites rows that no later strip reads, except row
    r1-1, which the next strip reads from a copy.
    """
    if not _use_strips(x):
        return conv(x)
    b, c, h, w = x.shape
    c_out, layout = conv.out_channels, _layout(x)
    if overwrite and c_out <= c:
        out = x[:, :c_out]
    else:
        out = torch.empty((b, c_out, h, w), dtype=x.dtype, device=x.device, memory_format=layout)
    carry = None  # input row r0-1 as it was before the previous strip overwrote it
    for r0, r1 in _strips(h, _nbytes(x) // h):
        strip = torch.empty((b, c, r1 - r0 + 2, w), dtype=x.dtype, device=x.device, memory_format=layout)
        if r0 == 0:
            strip[:, :, 0].zero_()
        else:
            strip[:, :, 0] = x[:, :, r0 - 1] if carry is None else carry
        end = min(h, r1 + 1)
        strip[:, :, 1 : 1 + end - r0] = x[:, :, r0:end]
        if end == r1:
            strip[:, :, -1].zero_()
        if overwrite:
            carry = strip[:, :, r1 - r0].clone()  # original row r1 - 1
        out[:, :, r0:r1] = F.conv2d(strip, conv.weight, conv.bias, padding=(0, 1))
        del strip
    return out


def group_norm_(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """Apply ``norm`` to (B,C,H,W) ``x`` in place, a chunk of groups at a time; returns ``x``.

    Exact: a group's statistics and output depend on its own channels only, and a chunk keeps ``x``'s layout and a
    multiple of NORM_CHUNK_CHANNELS channels, so it runs through the same kernel code as inside the whole tensor.
    """
    groups = norm.num_groups
    per_group = x.shape[1] // groups
    layout = _layout(x)
    step = NORM_CHUNK_CHANNELS // math.gcd(NORM_CHUNK_CHANNELS, per_group)  # groups per chunk, at least
    step *= max(1, STRIP_BYTES // max(1, step * _nbytes(x) // groups))
    for g0 in range(0, groups, step):
        g1 = min(groups, g0 + step)
        c = slice(g0 * per_group, g1 * per_group)
        chunk = x[:, c].contiguous(memory_format=layout)
        weight = None if norm.weight is None else norm.weight[c]
        bias = None if norm.bias is None else norm.bias[c]
        x[:, c] = F.group_norm(chunk, g1 - g0, weight, bias, norm.eps)
        del chunk
    return x


def _norm_silu_(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``silu(norm(x))`` written over ``x`` (B,C,H,W); returns ``x``."""
    return F.silu(group_norm_(norm, x), inplace=True)


def release_free_heap() -> None:
    """On Linux/glibc, hand freed heap pages back to the OS (``malloc_trim``); changes no values.

    glibc serves allocations below its dynamic mmap threshold (up to 32 MiB: the strip temporaries here, most UNet
    activations of a tile) from its heap and keeps their pages resident after they are freed; trimming before a
    peak stage keeps those pages from adding to the peak.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # another C library
        return
    trim(0)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` when the channels of (B,C,H,W) ``x`` are adjacent in memory (also for a channel slice
    of a channels-last tensor), else ``torch.contiguous_format``."""
    return torch.channels_last if x.shape[1] > 1 and x.stride(1) == 1 else torch.contiguous_format


def _nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


def _use_strips(x: torch.Tensor) -> bool:
    """Whether a conv reading ``x`` (B,C,H,W) runs in row strips: CPU tensors of STRIP_MIN_BYTES or more."""
    return x.device.type == "cpu" and _nbytes(x) >= STRIP_MIN_BYTES


def _strips(rows: int, row_bytes: int) -> list[tuple[int, int]]:
    """Split ``rows`` output rows into balanced ``[r0, r1)`` strips of STRIP_BYTES to 2*STRIP_BYTES input
    (``row_bytes`` per row) -- never smaller, so that a strip runs on the same conv kernel as the whole image
    (PyTorch picks another CPU kernel for small inputs)."""
    n = max(1, min(rows, rows * row_bytes // max(1, STRIP_BYTES)))
    return [(i * rows // n, (i + 1) * rows // n) for i in range(n)]
