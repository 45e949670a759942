"""VQGAN f4 autoencoder (``VQModelTorch`` of the ldm code shipped with ResShift / SinSR / DifIISR).

Encoder and decoder are the latent-diffusion conv nets (ResnetBlocks with GroupNorm(32, eps 1e-6) and SiLU, a
middle block with one full self-attention), plus a 1x1 ``quant_conv``/``post_quant_conv`` and a codebook
``quantize.embedding``. The state_dict layout equals the released ``autoencoder_vq_f4.pth``.

Memory: the middle-block attention spans every latent position (49,152 for a 1024x768 image). It runs through
``scaled_dot_product_attention`` (flash / memory-efficient kernels), so the N x N score matrix is never stored;
nearest-codebook search is done in chunks of positions.

Inference path. On CPU, with autograd off (``torch.no_grad``/``torch.inference_mode``), no autocast and a dense
NCHW or channels-last input, every module takes a lean path that computes the same numbers as the
plain one (the same kernels on the same values: fp32 CPU outputs are bit-identical) at a much lower peak memory;
with grad enabled (training), under autocast or on an accelerator the plain code runs unchanged. The lean path

* applies SiLU, GroupNorm (a chunk of groups at a time: a group's statistics and output depend on its own
  channels only), residual adds (``a + b == b + a`` exactly) and the quantiser's distance algebra in place, and
  drops every intermediate as soon as the next one exists;
* on CPU, for inputs of ``STRIP_MIN_BYTES`` or more, runs each 3x3 convolution (with the nearest-x2 upsample in
  front of it, and the stride-2 downsample) in row strips of ``STRIP_BYTES`` or a little more input, with a
  1-row halo: a strip's output rows see the same input rows, weights and kernel as in the whole-image call. A
  3x3 conv whose output fits into its input (same or fewer channels) writes it over the input, strip by strip;
* keeps every tensor in the layout the plain path gives it. The decoder runs channels-last (the quantiser returns
  a permuted view and each conv keeps its input's layout), the encoder NCHW; CPU kernels, and so the rounding,
  depend on the layout. The 1x1 ``nin_shortcut`` always runs on the whole map: oneDNN splits a 1x1 conv's
  channel sum across threads by a shape-dependent rule, so NCHW row strips would round differently.

The decoder's peak is its first full-resolution block (256->128 channels): its 256-channel input and the 1x1
shortcut (0.75 + 0.375 GiB at 1024x768). Measured with ``benchmarks/vqgan_memory.py`` (x4 config, fp32, 2-thread
AMD EPYC): encode 1x3x1024x768 adds 2.25 GiB to the process at its peak with the plain path and 0.80 GiB with the
lean one; decode to 1024x768 adds 2.29 GiB and 1.28 GiB.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import sys
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

NORM_GROUPS = 32
#: Latent positions per nearest-codebook distance block: 1024 x n_embed floats (32 MiB) on CPU, 4096 elsewhere.
QUANTIZE_CHUNK = 1024
QUANTIZE_CHUNK_ACCELERATOR = 4096
#: Lean path, CPU only: a 3x3 conv (resample included) whose input has at least this many bytes runs in row strips
STRIP_MIN_BYTES = 64 * 2**20
#: ... of STRIP_BYTES to 2*STRIP_BYTES of input each; also the size of the in-place GroupNorm's chunk temporaries.
STRIP_BYTES = 8 * 2**20
#: In-place GroupNorm chunks hold a multiple of this many channels: the channels-last CPU kernel vectorises over
#: channels and rounds a 4-channel slice differently from the same channels inside the whole tensor.
NORM_CHUNK_CHANNELS = 16


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    """Hyper-parameters of ``VQGANf4``: ``embed_dim``/``n_embed`` of the VQ model plus the ldm ``ddconfig`` keys.

    ``padding_mode`` is accepted for YAML compatibility (the reference ignores it; only ``zeros`` exists).
    """

    embed_dim: int = 3
    n_embed: int = 8192
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int | tuple[int, ...] = 2
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = 3
    double_z: bool = False
    dropout: float = 0.0
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    padding_mode: Literal["zeros"] = "zeros"

    def __post_init__(self) -> None:
        if isinstance(self.num_res_blocks, int):
            object.__setattr__(self, "num_res_blocks", (self.num_res_blocks,) * len(self.ch_mult))
        for name in ("ch_mult", "num_res_blocks", "attn_resolutions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.double_z:
            raise ValueError(
                "double_z: true describes the KL autoencoder; a VQ autoencoder needs double_z: false"
            )
        if len(self.num_res_blocks) != len(self.ch_mult):
            raise ValueError(
                f"num_res_blocks has {len(self.num_res_blocks)} entries but ch_mult has {len(self.ch_mult)}; "
                "give one count per level (or a single integer)"
            )
        for mult in self.ch_mult:
            if (self.ch * mult) % NORM_GROUPS:
                raise ValueError(
                    f"ch*ch_mult = {self.ch}*{mult} is not a multiple of {NORM_GROUPS} (GroupNorm groups)"
                )

    @property
    def downsample_factor(self) -> int:
        """Image size / latent size (4 for the f4 model)."""
        return 2 ** (len(self.ch_mult) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6, affine=True)


# ---------------------------------------------------------------------------------------------- lean-path helpers
# They work on NCHW tensors and on channels-last ones (the decoder runs channels-last: the quantiser's output is a
# permuted view, and every conv keeps its input's layout) and keep each tensor in the layout the plain path gives
# it, since the CPU kernels (and their rounding) depend on the layout.


def _lean(x: torch.Tensor) -> bool:
    """True when ``x`` takes the in-place / strip-wise inference path: a CPU tensor, dense in NCHW or channels-last
    layout, with autograd off and no CPU autocast."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
    )


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


def _group_norm_(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
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


def _release_free_heap(x: torch.Tensor) -> None:
    """On Linux/glibc CPU runs, hand freed heap pages back to the OS (``malloc_trim``); changes no values.

    glibc serves allocations below its dynamic mmap threshold (up to 32 MiB: the strip temporaries here, most UNet
    activations at 256x192) from its heap and keeps their pages resident after they are freed. The decoder calls
    this before its peak stages, so those pages (0.15-0.4 GiB after a UNet step at 1024x768) do not add to it.
    """
    if x.device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # another C library
        return
    trim(0)


def _norm_silu_(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``silu(norm(x))`` written over ``x`` (B,C,H,W); returns ``x``."""
    return F.silu(_group_norm_(norm, x), inplace=True)


def _conv3x3(conv: nn.Conv2d, x: torch.Tensor, *, overwrite: bool = False) -> torch.Tensor:
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


class ResnetBlock(nn.Module):
    """Residual block GN-SiLU-conv-GN-SiLU-dropout-conv, 1x1 ``nin_shortcut`` when channels change."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C_in,H,W) -> (B,C_out,H,W); ``x`` is left unchanged."""
        if _lean(x):
            return self.forward_lean(x, consume=False)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h

    def forward_lean(self, x: torch.Tensor, *, consume: bool) -> torch.Tensor:
        """Inference form of ``forward`` (autograd off): the same numbers, in place, strip-wise on large inputs.

        ``consume=True`` lets a block with ``nin_shortcut`` normalise ``x`` in place and write ``conv1`` over it
        (``x`` is destroyed); an identity block always keeps ``x``, its residual.
        """
        skip = None if self.nin_shortcut is None else self.nin_shortcut(x)
        t = (
            _norm_silu_(self.norm1, x)
            if consume and skip is not None
            else F.silu(self.norm1(x), inplace=True)
        )
        h = _conv3x3(self.conv1, t, overwrite=True)
        del t
        h = _norm_silu_(self.norm2, h)
        if self.dropout.training and self.dropout.p > 0:
            h = self.dropout(h)
        h = _conv3x3(self.conv2, h, overwrite=True)
        return h.add_(x) if skip is None else skip.add_(h)  # x + h, skip + h: addition commutes exactly


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions (GroupNorm, 1x1 ``q``/``k``/``v``/``proj_out``), residual.

    Equals ``x + proj_out(softmax(q^T k / sqrt(C)) v)`` of the reference; computed with
    ``scaled_dot_product_attention`` so no (HW x HW) matrix is materialised.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> (B,C,H,W)."""
        b, c, h, w = x.shape
        hn = self.norm(x)

        def tokens(conv: nn.Module, t: torch.Tensor) -> torch.Tensor:
            # (B, 1, HW, C) contiguous: the fused kernels need unit stride on the last dimension, otherwise
            # SDPA falls back to the math path, which materialises the (HW x HW) scores
            return conv(t).reshape(b, 1, c, h * w).transpose(-1, -2).contiguous()

        q, k, v = tokens(self.q, hn), tokens(self.k, hn), tokens(self.v, hn)
        del hn
        out = F.scaled_dot_product_attention(q, k, v)
        del q, k, v
        # proj_out's input is channels-last strided, so is its output; x + out is contiguous like x (the order of
        # the operands picks the layout, which the convolutions after this block depend on)
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Halve H and W: zero-pad right/bottom by 1, 3x3 stride-2 conv (``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> (B,C,H/2,W/2)."""
        if not (_lean(x) and _use_strips(x)):
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        # row strips: output rows [o0, o1) read input rows [2 o0, 2 o1 + 1), the last one being the zero pad row
        b, c, h, w = x.shape
        h_out, w_out = (h - 2) // 2 + 1, (w - 2) // 2 + 1
        layout = _layout(x)
        out = torch.empty(
            (b, self.conv.out_channels, h_out, w_out), dtype=x.dtype, device=x.device, memory_format=layout
        )
        for o0, o1 in _strips(h_out, 2 * _nbytes(x) // h):
            rows = min(h, 2 * o1 + 1) - 2 * o0
            shape = (b, c, 2 * (o1 - o0) + 1, w + 1)
            strip = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout).zero_()
            strip[:, :, :rows, :w] = x[:, :, 2 * o0 : 2 * o0 + rows]
            out[:, :, o0:o1] = self.conv(strip)
            del strip
        return out


class Upsample(nn.Module):
    """Double H and W: nearest x2, then 3x3 conv (``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> (B,C,2H,2W)."""
        b, c, h, w = x.shape
        if not (_lean(x) and 4 * _nbytes(x) >= STRIP_MIN_BYTES):  # the upsampled map is 4x the input
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        # row strips of the x2 image: output rows [r0, r1) need upsampled rows [r0-1, r1+1), i.e. input rows
        # [(r0-1)//2, r1//2]; each strip is upsampled on its own (nearest x2 only copies) with zero rows at the edges
        h2, w2, layout = 2 * h, 2 * w, _layout(x)
        out = torch.empty(
            (b, self.conv.out_channels, h2, w2), dtype=x.dtype, device=x.device, memory_format=layout
        )
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
            out[:, :, r0:r1] = F.conv2d(strip, self.conv.weight, self.conv.bias, padding=(0, 1))
            del strip
        return out


class _Level(nn.Module):
    """One resolution level: ``block.N`` ResnetBlocks, ``attn.N`` attentions (may be empty), a resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def run(self, h: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> (B,C',H,W): the blocks, each followed by its attention when the level has them."""
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    """ResnetBlock - full attention - ResnetBlock (``block_1``, ``attn_1``, ``block_2``)."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> (B,C,H,W)."""
        if _lean(x):
            return self.block_2.forward_lean(
                self.attn_1(self.block_1.forward_lean(x, consume=False)), consume=True
            )
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image (B,in_channels,H,W) -> (B,z_channels,H/f,W/f), f = 2**(levels-1)."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        res = cfg.resolution
        block_in = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = _Level()
            block_out = cfg.ch * mult
            for _ in range(cfg.num_res_blocks[i]):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _Middle(block_in, cfg.dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,in_channels,H,W) -> (B,z_channels,H/f,W/f)."""
        if _lean(x):
            return self._forward_lean(x)
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _forward_lean(self, x: torch.Tensor) -> torch.Tensor:
        # the same steps; each intermediate is owned here and dropped as soon as the next one exists
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block.forward_lean(h, consume=True)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return _conv3x3(self.conv_out, _norm_silu_(self.norm_out, h))


class Decoder(nn.Module):
    """Latent (B,z_channels,h,w) -> image (B,out_ch,h*f,w*f)."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Middle(block_in, cfg.dropout)
        ups: list[_Level] = []
        for i in reversed(range(levels)):
            level = _Level()
            block_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks[i] + 1):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B,z_channels,h,w) -> (B,out_ch,h*f,w*f)."""
        if _lean(z):
            return self._forward_lean(z)
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _forward_lean(self, z: torch.Tensor) -> torch.Tensor:
        # the same steps; each intermediate is owned here and dropped as soon as the next one exists. The peak
        # memory is in the block after an upsample: free heap pages go back to the OS first
        _release_free_heap(z)
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block.forward_lean(h, consume=True)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
                _release_free_heap(h)
        return _conv3x3(self.conv_out, _norm_silu_(self.norm_out, h))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation with codebook ``embedding`` (n_embed, embed_dim)."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def indices(self, z: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """(B,D,h,w) latent -> (B,h,w) int64 index of the nearest code (squared L2, float32, first on ties).

        The distances are computed in float32 with autocast off whatever the caller's autocast (in bf16 a third
        of the choices would change); ``chunk`` positions at a time, ``|z|^2 + |e|^2 - 2 z.e`` in place.
        """
        b, d, h, w = z.shape
        if chunk is None:
            chunk = QUANTIZE_CHUNK if z.device.type == "cpu" else QUANTIZE_CHUNK_ACCELERATOR
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
            codes = self.embedding.weight.float()
            code_sq = codes.pow(2).sum(dim=1)
            out = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
            for start in range(0, flat.shape[0], chunk):
                part = flat[start : start + chunk]
                dot2 = (part @ codes.t()).mul_(2.0)
                dist = (part.pow(2).sum(dim=1, keepdim=True) + code_sq).sub_(dot2)
                del dot2
                out[start : start + chunk] = dist.argmin(dim=1)
                del dist
        return out.view(b, h, w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B,D,h,w) latent -> (B,D,h,w) nearest codebook vectors, dtype of z."""
        idx = self.indices(z)
        return self.embedding(idx).permute(0, 3, 1, 2).to(z.dtype)


class VQGANf4(nn.Module):
    """VQ autoencoder: ``encode`` is continuous (no quantisation), ``decode`` quantises then decodes."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @property
    def downsample_factor(self) -> int:
        """Image size / latent size (4)."""
        return self.config.downsample_factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1], H and W multiples of 4 -> (B,embed_dim,H/4,W/4) continuous latent."""
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"VQGAN input is {x.shape[-2]}x{x.shape[-1]}; height and width must be multiples of {f} (pad it)"
            )
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B,embed_dim,h,w) latent -> (B,3,4h,4w) image, about [-1,1], not clamped (quantised first)."""
        return self.decoder(self.post_quant_conv(self.quantize(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1] -> reconstruction (B,3,H,W) = decode(encode(x))."""
        return self.decode(self.encode(x))
