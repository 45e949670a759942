"""Swin-UNet denoiser of DifIISR / ResShift / SinSR (``UNetModelSwin`` in the reference code).

A guided-diffusion UNet (ResBlocks with scale-shift time conditioning, stride-2 conv down, nearest x2 + conv up)
whose first ResBlock of every level, and the middle block, is followed by a Swin transformer layer (two blocks,
window attention, the second one with shifted windows). The LR image is concatenated to the input channels.

The module tree, parameter names, shapes and buffers reproduce the released checkpoints exactly, so
``DifIISR.pth``, ``SinSR_v1.pth`` and ``resshift_realsrx4_s15_v1.pth`` load strictly. Two behaviours are kept
from the reference on purpose because the released weights were trained with them:

* the shifted-window mask (``attn_mask`` buffers) is the one the reference computes: it masks only the windows
  of the last window row, splitting their tokens by in-window column (see ``reference_shift_mask``);
* window size and shift of each Swin layer are fixed at construction from ``image_size`` (a layer whose training
  resolution is at most ``window_size`` uses one window of that resolution and no shift).

Input scaling belongs to the diffusion, not to this network; ``t`` is the integer step index.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

MASK_VALUE = -100.0  # additive score of a masked pair in the reference shifted-window attention
NORM_GROUPS = 32


@dataclasses.dataclass(frozen=True)
class SwinUNetConfig:
    """Hyper-parameters of ``SwinUNet``; names and meanings are those of the reference ``UNetModelSwin``.

    LQ conditioning, two spellings of the same network:

    * ResShift/SinSR: ``in_channels: 3, cond_lq: true, lq_size: 64`` -- the LR channels are added to
      ``in_channels`` (``lq_size == image_size``: 3 channels concatenated as they are; ``lq_size`` a power-of-two
      multiple of ``image_size``: a strided conv feature extractor ``feature_extractor.*`` brings the LQ image
      down to the input size first and adds ``16 * 2**k`` channels).
    * DifIISR: ``in_channels: 6, cond_lq: true`` and no ``lq_size`` -- ``in_channels`` already counts them.

    ``cond_lq: false`` gives a first convolution of ``in_channels`` inputs and no LQ input. (ResShift would add
    16 channels there when ``lq_size`` is set, a layout its own forward cannot feed; no released model uses it.)

    Fields without a default are required (as in the reference); defaults are the reference defaults, except
    ``lq_size`` whose absence selects the DifIISR spelling. ``use_fp16`` is accepted for YAML compatibility only:
    precision is chosen at run time (autocast / module dtype).

    ``zero_init_output`` (not in the reference; default false) initialises the last convolution ``out.2`` to zero,
    so a fresh network outputs exactly 0. With ``predict_type: residual`` (x0_hat = z_y - f) a model trained from
    scratch then starts at its bicubic input. It changes the initial values only, never the state_dict layout.
    """

    image_size: int
    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int | tuple[int, ...]
    attention_resolutions: tuple[int, ...]
    dropout: float = 0.0
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    conv_resample: bool = True
    dims: int = 2
    use_fp16: bool = False
    num_heads: int = 1
    num_head_channels: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    swin_depth: int = 2
    swin_embed_dim: int = 96
    window_size: int = 8
    mlp_ratio: float = 2.0
    patch_norm: bool = False
    cond_lq: bool = True
    lq_size: int | None = None
    zero_init_output: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.num_res_blocks, int):
            object.__setattr__(self, "num_res_blocks", (self.num_res_blocks,) * len(self.channel_mult))
        for name in ("channel_mult", "num_res_blocks", "attention_resolutions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.dims != 2:
            raise ValueError(f"dims={self.dims}: only 2-D images are supported; set dims: 2")
        if len(self.num_res_blocks) != len(self.channel_mult):
            raise ValueError(
                f"num_res_blocks has {len(self.num_res_blocks)} entries but channel_mult has "
                f"{len(self.channel_mult)}; give one count per level (or a single integer)"
            )
        for mult in self.channel_mult:
            if (self.model_channels * mult) % NORM_GROUPS:
                raise ValueError(
                    f"model_channels*channel_mult = {self.model_channels}*{mult} is not a multiple of "
                    f"{NORM_GROUPS} (GroupNorm groups); choose model_channels as a multiple of {NORM_GROUPS}"
                )
        if self.swin_embed_dim % NORM_GROUPS:
            raise ValueError(
                f"swin_embed_dim={self.swin_embed_dim} is not a multiple of {NORM_GROUPS} (GroupNorm groups)"
            )
        if self.num_head_channels != -1 and (
            self.num_head_channels <= 0 or self.swin_embed_dim % self.num_head_channels
        ):
            raise ValueError(
                f"num_head_channels={self.num_head_channels} must divide swin_embed_dim={self.swin_embed_dim} "
                "(or be -1 to use num_heads)"
            )
        if self.num_head_channels == -1 and (self.num_heads <= 0 or self.swin_embed_dim % self.num_heads):
            raise ValueError(f"num_heads={self.num_heads} must divide swin_embed_dim={self.swin_embed_dim}")
        levels = len(self.channel_mult)
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2**{levels - 1} ({levels} levels)"
            )
        for level in range(levels):
            ds = self.image_size // 2**level
            has_swin = (
                ds in self.attention_resolutions or level == levels - 1
            )  # the middle block always has one
            if has_swin and ds % self.swin_window(ds)[0]:
                raise ValueError(
                    f"image_size={self.image_size} gives a {ds}x{ds} map at level {level}, which "
                    f"window_size={self.window_size} does not divide; pick sizes that are multiples of the window"
                )
        if self.lq_size is not None and self.cond_lq:
            ratio = self.lq_size / self.image_size
            if ratio < 1 or not float(ratio).is_integer() or int(ratio) & (int(ratio) - 1):
                raise ValueError(
                    f"lq_size={self.lq_size} must be image_size={self.image_size} times a power of two "
                    "(equal for the x4 models)"
                )

    @property
    def heads(self) -> int:
        """Number of attention heads of every Swin layer."""
        return (
            self.num_heads if self.num_head_channels == -1 else self.swin_embed_dim // self.num_head_channels
        )

    @property
    def lq_downsamplings(self) -> int:
        """Number of stride-2 stages of the LQ feature extractor (0: the LQ image is concatenated as is)."""
        if not self.cond_lq or self.lq_size is None:
            return 0
        return int(round(math.log2(self.lq_size / self.image_size)))

    @property
    def lq_feature_channels(self) -> int:
        """Channels the LQ branch adds to the first convolution (0 for the DifIISR spelling or no LQ)."""
        if not self.cond_lq or self.lq_size is None:
            return 0
        if self.lq_downsamplings == 0:
            return 3
        return 16 * 2**self.lq_downsamplings

    @property
    def input_conv_channels(self) -> int:
        """Input channels of the first convolution ``input_blocks.0.0`` (x channels + LQ channels)."""
        return self.in_channels + self.lq_feature_channels

    def swin_window(self, resolution: int) -> tuple[int, int]:
        """(window, shift) of the second block of a Swin layer built for ``resolution`` (first block: shift 0)."""
        if resolution <= self.window_size:
            return resolution, 0
        return self.window_size, self.window_size // 2

    @property
    def size_multiple(self) -> int:
        """H and W of ``x`` must be multiples of this (64 for x4: 3 downsamplings times window 8)."""
        levels = len(self.channel_mult)
        multiple = 2 ** (levels - 1)
        ds = self.image_size
        for level in range(levels):
            if ds in self.attention_resolutions:
                multiple = math.lcm(multiple, 2**level * self.swin_window(ds)[0])
            if level != levels - 1:
                ds //= 2
        return math.lcm(multiple, 2 ** (levels - 1) * self.swin_window(ds)[0])  # the middle block


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups computed in float32 and cast back (as the reference ``normalization``)."""

    def __init__(self, channels: int) -> None:
        super().__init__(NORM_GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) any float dtype -> same shape and dtype."""
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of step indices: (B,) int/float -> (B,dim) float32, [cos, sin] halves."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class EmbedSequential(nn.Sequential):
    """Sequential container that hands the time embedding to the children that take one (ResBlocks)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x (B,C,H,W), emb (B,E) -> (B,C',H',W')."""
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Halve H and W: stride-2 3x3 conv (``op``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        elif out_channels != channels:
            raise ValueError("Downsample without conv cannot change the channel count")
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> (B,C',H/2,W/2)."""
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W: nearest x2, then an optional 3x3 conv (``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        if use_conv:
            self.conv: nn.Module | None = nn.Conv2d(channels, out_channels or channels, 3, padding=1)
        else:
            self.conv = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> (B,C',2H,2W)."""
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class ResBlock(nn.Module):
    """Residual block with time conditioning (scale-shift on the second norm, or additive)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B,C,H,W), emb (B,E) -> (B,C_out,H',W') (H' = H, 2H or H/2)."""
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2, window^2) int64 index into the ((2*window-1)^2, heads) relative position bias table."""
    grid = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack(grid).flatten(1)  # (2, N): row, col of each token
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N) in [0, 2*window-2]
    return rel[0] * (2 * window - 1) + rel[1]


def reference_shift_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """Additive shifted-window mask of the reference: (nW, window^2, window^2) float32 with values 0 or -100.

    Windows are ordered row-major over the (height/window, width/window) grid, tokens row-major inside a window.
    The reference intends the Swin mask (tokens that came from different image regions after the cyclic shift
    must not attend to each other) but, because of how it indexes its (1,1,H,W) label image, it labels only
    three row bands (``< height-window``, ``< height-shift``, rest) and reads a token's label at the row given
    by its *column* inside the window. So only windows of the last window row are masked, between tokens whose
    in-window column is ``< window-shift`` and those whose column is not. The released checkpoints were trained
    with, and store, exactly this mask; it is reproduced here so their outputs are unchanged.
    """
    rows = torch.arange(height)
    band = (rows >= height - window).long() + (rows >= height - shift).long()  # (height,) in {0,1,2}
    n_h, n_w, n_tok = height // window, width // window, window * window
    token_col = torch.arange(n_tok) % window
    labels = band[torch.arange(n_h)[:, None] * window + token_col[None, :]]  # (n_h, N)
    labels = labels[:, None, :].expand(n_h, n_w, n_tok).reshape(n_h * n_w, n_tok)
    differs = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differs.shape, dtype=torch.float32).masked_fill(differs, MASK_VALUE)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B,C,H,W) -> (B*nW, window^2, C): windows row-major per image, tokens row-major per window."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of ``window_partition``: (B*nW, window^2, C) -> (B,C,height,width)."""
    c = windows.shape[-1]
    n_h, n_w = height // window, width // window
    x = windows.view(-1, n_h, n_w, window, window, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, c, height, width)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    Uses ``scaled_dot_product_attention`` with (bias + shift mask) as the additive ``attn_mask``; equal to the
    reference ``softmax(q k^T / sqrt(d) + bias + mask) v``.
    """

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) relative position bias, N = window^2."""
        n = self.window * self.window
        index: torch.Tensor = self.relative_position_index  # type: ignore[assignment]
        bias = self.relative_position_bias_table[index.reshape(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B*nW, N, C) windows of B images, mask (nW, N, N) additive or None -> (B*nW, N, C)."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B*nW, heads, N, head_dim)
        bias = self.position_bias().to(q.dtype)[None]  # (1, heads, N, N)
        if mask is not None:
            nw = mask.shape[0]
            bias = bias + mask.to(q.dtype)[:, None]  # (nW, heads, N, N)
            bias = bias[None].expand(bw // nw, -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    """Per-pixel MLP as two 1x1 convolutions with GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> (B,C,H,W)."""
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """One Swin transformer block on (B,C,H,W) maps: (shifted) window attention + MLP, both residual.

    A shifted block registers the mask for its training resolution as the ``attn_mask`` buffer (checkpoints hold
    it), but, like the reference (whose size check compares a list with a tuple and never matches), it uses a mask
    computed for the actual input size at every call; it is cached per size and equals the buffer at that size.
    """

    def __init__(
        self, dim: int, resolution: int, num_heads: int, window: int, shift: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.resolution = resolution
        self.norm1 = GroupNorm32(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = GroupNorm32(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift > 0:
            self.register_buffer("attn_mask", reference_shift_mask(resolution, resolution, window, shift))
        else:
            self.attn_mask = None
        self._masks: dict[tuple[int, int, str], torch.Tensor] = {}

    def shift_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(nW, N, N) float32 reference shift mask for a (height, width) map, cached per size and device."""
        key = (height, width, str(device))
        mask = self._masks.get(key)
        if mask is None:
            mask = reference_shift_mask(height, width, self.window, self.shift).to(device)
            self._masks[key] = mask
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) with H, W multiples of the window -> (B,C,H,W)."""
        _, _, h, w = x.shape
        shortcut = x
        x = self.norm1(x)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(2, 3))
        mask = self.shift_mask(h, w, x.device) if self.shift else None
        x = window_reverse(self.attn(window_partition(x, self.window), mask), self.window, h, w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(2, 3))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchProjection(nn.Module):
    """1x1 conv channel projection (``proj``) with optional GroupNorm (``norm``): the Swin patch (un)embedding."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.norm: nn.Module = GroupNorm32(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C_in,H,W) -> (B,C_out,H,W)."""
        return self.norm(self.proj(x))


class SwinLayer(nn.Module):
    """C -> embed_dim projection, ``depth`` Swin blocks (odd ones shifted), embed_dim -> C projection."""

    def __init__(self, channels: int, resolution: int, config: SwinUNetConfig) -> None:
        super().__init__()
        window, shift = config.swin_window(resolution)
        dim = config.swin_embed_dim
        self.patch_embed = PatchProjection(channels, dim, config.patch_norm)
        self.patch_unembed = PatchProjection(dim, channels, config.patch_norm)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, config.heads, window, shift if i % 2 else 0, config.mlp_ratio)
            for i in range(config.swin_depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> (B,C,H,W) (no residual around the layer, as in the reference)."""
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.patch_unembed(x)


class SwinUNet(nn.Module):
    """The DifIISR/ResShift/SinSR denoiser; state_dict layout equal to the reference ``UNetModelSwin``."""

    def __init__(self, config: SwinUNetConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        mc = cfg.model_channels
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.feature_extractor = self._lq_feature_extractor(cfg)

        def resblock(ch_in: int, ch_out: int | None = None, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(ch_in, emb_dim, cfg.dropout, ch_out, cfg.use_scale_shift_norm, up=up, down=down)

        ch = input_ch = cfg.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList(
            [EmbedSequential(nn.Conv2d(cfg.input_conv_channels, ch, 3, padding=1))]
        )
        skip_channels = [ch]
        ds = cfg.image_size
        levels = len(cfg.channel_mult)
        for level, mult in enumerate(cfg.channel_mult):
            for j in range(cfg.num_res_blocks[level]):
                layers: list[nn.Module] = [resblock(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions and j == 0:
                    layers.append(SwinLayer(ch, ds, cfg))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != levels - 1:
                down = (
                    resblock(ch, ch, down=True)
                    if cfg.resblock_updown
                    else Downsample(ch, cfg.conv_resample, ch)
                )
                self.input_blocks.append(EmbedSequential(down))
                skip_channels.append(ch)
                ds //= 2

        self.middle_block = EmbedSequential(resblock(ch), SwinLayer(ch, ds, cfg), resblock(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks[level] + 1):
                layers = [resblock(ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions and i == 0:
                    layers.append(SwinLayer(ch, ds, cfg))
                if level and i == cfg.num_res_blocks[level]:
                    layers.append(
                        resblock(ch, ch, up=True)
                        if cfg.resblock_updown
                        else Upsample(ch, cfg.conv_resample, ch)
                    )
                    ds *= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), nn.Conv2d(input_ch, cfg.out_channels, 3, padding=1)
        )
        if cfg.zero_init_output:
            nn.init.zeros_(self.out[2].weight)
            nn.init.zeros_(self.out[2].bias)

    @staticmethod
    def _lq_feature_extractor(cfg: SwinUNetConfig) -> nn.Module:
        if cfg.lq_downsamplings == 0:
            return nn.Identity()
        layers: list[nn.Module] = []
        chn_in, chn = 3, 16
        for _ in range(cfg.lq_downsamplings):
            layers += [nn.Conv2d(chn_in, chn, 3, padding=1), nn.SiLU(), Downsample(chn, True, chn * 2)]
            chn *= 2
            chn_in = chn
        return nn.Sequential(*layers)

    @property
    def size_multiple(self) -> int:
        """H and W of ``x`` must be multiples of this (64 for the x4 preset)."""
        return self.config.size_multiple

    def forward(self, x: torch.Tensor, t: torch.Tensor, lq: torch.Tensor | None = None) -> torch.Tensor:
        """x (B,C,H,W) scaled diffusion state, t (B,) int64 step index, lq (B,3,h,w) LR or None -> (B,out,H,W).

        ``lq`` has the size of ``x`` (``lq_size / image_size`` times larger when a feature extractor is used).
        """
        cfg = self.config
        h_in, w_in = x.shape[-2:]
        m = cfg.size_multiple
        if h_in % m or w_in % m:
            raise ValueError(
                f"SwinUNet input is {h_in}x{w_in}; height and width must be multiples of {m} "
                "(reflect-pad the input, then crop the output)"
            )
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"t must have shape ({x.shape[0]},) (one step index per image), got {tuple(t.shape)}"
            )
        if cfg.cond_lq:
            if lq is None:
                raise ValueError("this network is conditioned on the LR image (cond_lq: true); pass lq")
            lq = self.feature_extractor(lq.to(x.dtype))
            if lq.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"lq gives a {tuple(lq.shape[-2:])} map but x is {h_in}x{w_in}; pass lq at the size the "
                    f"network expects (lq_size/image_size = {cfg.lq_size}/{cfg.image_size} times x)"
                )
            x = torch.cat([x, lq], dim=1)
        elif lq is not None:
            raise ValueError("this network has cond_lq: false; do not pass lq")
        if x.shape[1] != cfg.input_conv_channels:
            raise ValueError(
                f"SwinUNet expects {cfg.input_conv_channels} input channels (x + LQ) but got {x.shape[1]}; "
                "check in_channels/cond_lq/lq_size of the preset"
            )
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels).to(self.time_embed[0].weight.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
