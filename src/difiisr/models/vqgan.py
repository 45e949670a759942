"""VQGAN f4 autoencoder (``VQModelTorch`` of the ldm code shipped with ResShift / SinSR / DifIISR).

Encoder and decoder are the latent-diffusion conv nets: ResnetBlocks (GroupNorm(32, eps 1e-6), SiLU, 3x3 convs),
a stride-2 ``Downsample`` / nearest-x2 ``Upsample`` between levels and a middle block with one full self-attention.
Around them sit a 1x1 ``quant_conv`` / ``post_quant_conv`` and the codebook ``quantize.embedding``. The state_dict
layout equals the released ``autoencoder_vq_f4.pth`` (``encoder.*``, ``decoder.*``, ``quantize.embedding.weight``,
``quant_conv.*``, ``post_quant_conv.*``).

Shapes for the f4 model: image (B,3,H,W) in [-1,1], H and W multiples of 4 <-> latent (B,3,H/4,W/4).
``encode`` is continuous (no quantisation); ``decode`` snaps the latent to the codebook, then decodes.

Memory: the middle-block attention spans every latent position (H/4 * W/4 of them). It runs through
``scaled_dot_product_attention`` (fused kernels), so the N x N score matrix is never stored; the nearest-codebook
search works on chunks of positions.

This file is the plain network: what training, autograd, autocast and accelerators run. CPU inference with
autograd off goes through ``difiisr.models.vqgan_lean`` instead, which walks these same modules in place and in
row strips (the same numbers at a lower peak memory); ``VQGANf4.encode``/``decode`` are the one place that chooses.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from difiisr.models import vqgan_lean

NORM_GROUPS = 32
#: Latent positions per nearest-codebook distance block: 1024 x n_embed floats (32 MiB) on CPU, 4096 elsewhere.
QUANTIZE_CHUNK = 1024
QUANTIZE_CHUNK_ACCELERATOR = 4096


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
        """(B,C_in,H,W) -> (B,C_out,H,W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


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
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest x2, then 3x3 conv (``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> (B,C,2H,2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


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
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


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
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation with codebook ``embedding`` (n_embed, embed_dim)."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def indices(self, z: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """(B,D,h,w) latent -> (B,h,w) int64 index of the nearest code (squared L2, float32, first on ties).

        The distances are computed in float32 with autocast off whatever the caller's autocast (in bf16 many
        choices would change); ``chunk`` positions at a time, ``|z|^2 + |e|^2 - 2 z.e`` in place.
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
        """(B,D,h,w) latent -> (B,D,h,w) nearest codebook vectors, dtype of z (a channels-last strided view)."""
        idx = self.indices(z)
        return self.embedding(idx).permute(0, 3, 1, 2).to(z.dtype)


class VQGANf4(nn.Module):
    """VQ autoencoder: ``encode`` is continuous (no quantisation), ``decode`` quantises then decodes.

    ``encode``/``decode`` are where the inference path is chosen: when ``vqgan_lean.applies`` (a CPU tensor,
    autograd off, no CPU autocast) they hand the call to ``vqgan_lean.encode``/``decode``, which give the same
    numbers (bit-identical in fp32) at a lower peak memory; otherwise they run the plain modules below. Calling
    ``encoder``/``decoder`` directly always runs the plain modules.
    """

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
        if vqgan_lean.applies(x):
            return vqgan_lean.encode(self, x)
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B,embed_dim,h,w) latent -> (B,3,4h,4w) image, about [-1,1], not clamped (quantised first)."""
        if vqgan_lean.applies(z):
            return vqgan_lean.decode(self, z)
        return self.decoder(self.post_quant_conv(self.quantize(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1] -> reconstruction (B,3,H,W) = decode(encode(x))."""
        return self.decode(self.encode(x))
