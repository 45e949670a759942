"""Swin-UNet: exact reference layout (x4 on the meta device), forward shapes, attention and mask values."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from difiisr.config import ConfigError, from_mapping, load_yaml, preset_path
from difiisr.models.swin_unet import (
    MASK_VALUE,
    SwinBlock,
    SwinUNet,
    SwinUNetConfig,
    WindowAttention,
    reference_shift_mask,
    relative_position_index,
    timestep_embedding,
    window_partition,
    window_reverse,
)


def preset_unet(name: str) -> SwinUNetConfig:
    return from_mapping(SwinUNetConfig, load_yaml(preset_path(name))["unet"], f"{name}.yaml:unet")


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (the reference zero-initialises the last conv of each ResBlock)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return module


def test_x4_layout_is_the_released_one() -> None:
    cfg = preset_unet("x4")
    with torch.device("meta"):
        net = SwinUNet(cfg)
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 118_593_583
    assert len(state) == 564
    buffers = dict(net.named_buffers())
    assert len(buffers) == 24
    assert sum(k.endswith("relative_position_index") for k in buffers) == 18
    assert sum(k.endswith("attn_mask") for k in buffers) == 6
    assert {k.split(".")[0] for k in state} == {
        "time_embed",
        "input_blocks",
        "middle_block",
        "output_blocks",
        "out",
    }
    expected = {
        "time_embed.0.weight": (640, 160),
        "time_embed.2.weight": (640, 640),
        "input_blocks.0.0.weight": (160, 6, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (320, 640),
        "input_blocks.1.0.out_layers.3.weight": (160, 160, 3, 3),
        "input_blocks.1.1.patch_embed.proj.weight": (192, 160, 1, 1),
        "input_blocks.1.1.patch_unembed.proj.weight": (160, 192, 1, 1),
        "input_blocks.1.1.blocks.0.attn.relative_position_bias_table": (225, 6),
        "input_blocks.1.1.blocks.0.attn.relative_position_index": (64, 64),
        "input_blocks.1.1.blocks.0.attn.qkv.weight": (576, 192),
        "input_blocks.1.1.blocks.0.mlp.fc1.weight": (768, 192, 1, 1),
        "input_blocks.1.1.blocks.1.attn_mask": (64, 64, 64),
        "input_blocks.3.0.op.weight": (160, 160, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (320, 160, 1, 1),
        "middle_block.1.blocks.1.norm2.weight": (192,),
        "middle_block.2.out_layers.3.weight": (640, 640, 3, 3),
        "output_blocks.2.0.skip_connection.weight": (640, 960, 1, 1),
        "output_blocks.2.1.conv.weight": (640, 640, 3, 3),
        "output_blocks.11.0.skip_connection.weight": (160, 320, 1, 1),
        "out.0.weight": (160,),
        "out.2.weight": (3, 160, 3, 3),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    # the 8x8 level (middle block and the deepest level) uses one window and no shift, hence no mask
    assert "middle_block.1.blocks.1.attn_mask" not in state
    assert net.size_multiple == cfg.size_multiple == 64


def test_difiisr_spelling_builds_the_same_network() -> None:
    x4 = preset_unet("x4")
    difiisr = SwinUNetConfig(
        **{**{f: getattr(x4, f) for f in x4.__dataclass_fields__}, "in_channels": 6, "lq_size": None}
    )
    assert x4.input_conv_channels == difiisr.input_conv_channels == 6
    with torch.device("meta"):
        a, b = SwinUNet(x4).state_dict(), SwinUNet(difiisr).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_resshift_lq_feature_extractor_when_lq_is_larger() -> None:
    cfg = SwinUNetConfig(
        image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
        attention_resolutions=(8,), channel_mult=(1, 2), num_head_channels=16, swin_embed_dim=32,
        window_size=4, use_scale_shift_norm=True, lq_size=64,
    )  # fmt: skip
    assert cfg.lq_downsamplings == 2 and cfg.lq_feature_channels == 64 and cfg.input_conv_channels == 67
    net = randomize(SwinUNet(cfg))
    state = net.state_dict()
    assert tuple(state["feature_extractor.0.weight"].shape) == (16, 3, 3, 3)
    assert tuple(state["feature_extractor.2.op.weight"].shape) == (32, 16, 3, 3)
    assert tuple(state["feature_extractor.3.weight"].shape) == (32, 32, 3, 3)
    assert tuple(state["feature_extractor.5.op.weight"].shape) == (64, 32, 3, 3)
    assert tuple(state["input_blocks.0.0.weight"].shape) == (32, 67, 3, 3)
    out = net(torch.randn(1, 3, 16, 16), torch.tensor([2]), torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("size", [(64, 64), (64, 128), (128, 64)])
def test_tiny_forward_shapes(size: tuple[int, int]) -> None:
    net = randomize(SwinUNet(preset_unet("tiny"))).eval()
    h, w = size
    with torch.no_grad():
        out = net(torch.randn(2, 3, h, w), torch.tensor([0, 3]), torch.randn(2, 3, h, w))
    assert out.shape == (2, 3, h, w)
    assert torch.isfinite(out).all()


def test_forward_depends_on_t_and_lq() -> None:
    net = randomize(SwinUNet(preset_unet("tiny"))).eval()
    x, lq = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base = net(x, torch.tensor([1]), lq)
        assert not torch.allclose(base, net(x, torch.tensor([2]), lq))
        assert not torch.allclose(base, net(x, torch.tensor([1]), torch.zeros_like(lq)))
        assert torch.equal(base, net(x, torch.tensor([1]), lq))


def test_forward_refuses_bad_inputs() -> None:
    net = SwinUNet(preset_unet("tiny"))
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(
        ValueError, match=r"SwinUNet input is 48x64; height and width must be multiples of 64"
    ):
        net(torch.randn(1, 3, 48, 64), torch.tensor([0]), torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match=r"conditioned on the LR image \(cond_lq: true\); pass lq"):
        net(x, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"lq gives a \(32, 32\) map but x is 64x64"):
        net(x, torch.tensor([0]), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"t must have shape \(1,\)"):
        net(x, torch.tensor([0, 1]), x)


def test_timestep_embedding_closed_form() -> None:
    emb = timestep_embedding(torch.tensor([0, 1]), 4)
    f = math.exp(-math.log(10000.0) / 2)  # frequencies [1, 1e-2]
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(1.0), math.cos(f), math.sin(1.0), math.sin(f)]])
    torch.testing.assert_close(emb, expected)
    assert timestep_embedding(torch.tensor([5]), 5).shape == (1, 5)


def test_relative_position_index_closed_form() -> None:
    # tokens (0,0),(0,1),(1,0),(1,1); index = (dr + 1) * 3 + (dc + 1) with (dr, dc) = p_i - p_j
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index(2), expected)
    assert relative_position_index(8).max() == 15**2 - 1


def test_reference_shift_mask_closed_form() -> None:
    # 16x16 map, window 8, shift 4: 2x2 windows. The reference masks only the last window row, between tokens
    # whose in-window column is < 4 and those whose column is >= 4.
    mask = reference_shift_mask(16, 16, 8, 4)
    assert mask.shape == (4, 64, 64)
    assert torch.equal(mask[:2], torch.zeros(2, 64, 64))
    col = torch.arange(64) % 8
    group = col >= 4
    expected = torch.where(group[:, None] != group[None, :], MASK_VALUE, 0.0)
    assert torch.equal(mask[2], expected) and torch.equal(mask[3], expected)
    # the pattern depends on the height only; windows along the width repeat it
    wide = reference_shift_mask(16, 32, 8, 4)
    assert torch.equal(wide[4], expected) and torch.equal(wide[:4], torch.zeros(4, 64, 64))


def test_registered_mask_equals_the_forward_mask_at_reference_size() -> None:
    net = SwinUNet(preset_unet("tiny"))
    shifted = [m for m in net.modules() if isinstance(m, SwinBlock) and m.shift]
    assert len(shifted) == 2  # the 16x16 level, down and up path; the 8x8 levels use one unshifted window
    for block in shifted:
        assert block.resolution == 16 and block.window == 8 and block.shift == 4
        assert torch.equal(block.attn_mask, block.shift_mask(16, 16, torch.device("cpu")))
        assert torch.equal(block.attn_mask, reference_shift_mask(16, 16, 8, 4))


def naive_window_attention(attn: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T * d^-1/2 + bias + mask) v written out with explicit matrices."""
    bw, n, c = x.shape
    heads = attn.num_heads
    qkv = x @ attn.qkv.weight.t() + attn.qkv.bias
    q, k, v = qkv.view(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    scores = (q * (c // heads) ** -0.5) @ k.transpose(-1, -2)
    table = attn.relative_position_bias_table
    bias = table[attn.relative_position_index.reshape(-1)].view(n, n, heads).permute(2, 0, 1)
    scores = scores + bias[None]
    if mask is not None:
        nw = mask.shape[0]
        scores = (scores.view(bw // nw, nw, heads, n, n) + mask[None, :, None]).view(bw, heads, n, n)
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(bw, n, c) @ attn.proj.weight.t() + attn.proj.bias


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_sdpa_equals_naive(shifted: bool) -> None:
    torch.manual_seed(0)
    attn = WindowAttention(dim=32, window=4, num_heads=2)
    torch.nn.init.normal_(attn.relative_position_bias_table, std=1.0)
    mask = reference_shift_mask(8, 12, 4, 2) if shifted else None  # 2x3 windows
    x = torch.randn(2 * 6, 16, 32)
    torch.testing.assert_close(attn(x, mask), naive_window_attention(attn, x, mask), rtol=1e-5, atol=1e-5)


def test_window_partition_round_trip() -> None:
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    windows = window_partition(x, 4)
    assert windows.shape == (12, 16, 3)
    assert torch.equal(windows[1, :4, 0], x[0, 0, 0, 4:8])  # 2nd window of image 0, first row, channel 0
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)


def test_size_multiple_follows_windows_and_depth() -> None:
    base = dict(in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1, swin_embed_dim=32)
    # 4 levels at 32: resolutions 32,16,8,4 -> windows 8,8,8,4; 2**3 * 4 = 32 for the middle block
    cfg = SwinUNetConfig(image_size=32, attention_resolutions=(32,), window_size=8, **base)
    assert cfg.size_multiple == 32
    assert cfg.swin_window(4) == (4, 0) and cfg.swin_window(16) == (8, 4)
    assert preset_unet("tiny").size_multiple == 64


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"x\.yaml: num_head_channels=24 must divide swin_embed_dim=32"):
        from_mapping(
            SwinUNetConfig,
            dict(image_size=64, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                 attention_resolutions=[8], swin_embed_dim=32, num_head_channels=24),
            "x.yaml",
        )  # fmt: skip
    with pytest.raises(ConfigError, match=r"unknown key\(s\) cond_mask for SwinUNetConfig"):
        from_mapping(SwinUNetConfig, {**load_yaml(preset_path("x4"))["unet"], "cond_mask": False}, "x.yaml")
    with pytest.raises(ValueError, match=r"model_channels\*channel_mult = 48\*1 is not a multiple of 32"):
        SwinUNetConfig(image_size=64, in_channels=3, model_channels=48, out_channels=3, num_res_blocks=1,
                       attention_resolutions=())  # fmt: skip
    with pytest.raises(
        ValueError, match=r"image_size=48 gives a 12x12 map at level 2, which window_size=8 does"
    ):
        SwinUNetConfig(image_size=48, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                       attention_resolutions=(12,), channel_mult=(1, 2, 2), swin_embed_dim=32)  # fmt: skip
    with pytest.raises(ValueError, match=r"lq_size=96 must be image_size=64 times a power of two"):
        SwinUNetConfig(image_size=64, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                       attention_resolutions=(), swin_embed_dim=32, lq_size=96)  # fmt: skip


def test_int_num_res_blocks_is_expanded_per_level() -> None:
    cfg = SwinUNetConfig(image_size=64, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=2,
                         attention_resolutions=(), channel_mult=(1, 2, 2), swin_embed_dim=32)  # fmt: skip
    assert cfg.num_res_blocks == (2, 2, 2)


def test_training_step_reaches_every_parameter() -> None:
    # the reference initialisation (the shipped tiny preset also zeroes the output conv: tested below)
    net = SwinUNet(dataclasses.replace(preset_unet("tiny"), zero_init_output=False))
    x = torch.randn(2, 3, 64, 64)
    loss = F.mse_loss(net(x, torch.tensor([0, 3]), x), torch.zeros_like(x))
    loss.backward()
    # ResBlock output convs start at zero, so only they and what lies behind them have gradients at step 0;
    # after one update every parameter must receive a gradient
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    net.zero_grad()
    F.mse_loss(net(x, torch.tensor([0, 3]), x), torch.zeros_like(x)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_shifted_swin_block_equals_explicit_window_loop() -> None:
    torch.manual_seed(1)
    block = randomize(SwinBlock(dim=32, resolution=8, num_heads=2, window=4, shift=2, mlp_ratio=2.0), seed=1)
    x = torch.randn(2, 32, 8, 12)  # not the 8x8 reference size: the mask is computed for 8x12
    ws, s = 4, 2
    h = block.norm1(x)
    h = torch.roll(h, shifts=(-s, -s), dims=(2, 3))
    mask = reference_shift_mask(8, 12, ws, s)
    out = torch.empty_like(h)
    for b in range(2):
        for wi in range(2):
            for wj in range(3):
                patch = h[b, :, wi * ws : (wi + 1) * ws, wj * ws : (wj + 1) * ws]
                tokens = patch.reshape(32, ws * ws).t()[None]  # row-major tokens
                res = naive_window_attention(block.attn, tokens, mask[wi * 3 + wj][None])
                out[b, :, wi * ws : (wi + 1) * ws, wj * ws : (wj + 1) * ws] = res[0].t().reshape(32, ws, ws)
    y = x + torch.roll(out, shifts=(s, s), dims=(2, 3))
    expected = y + block.mlp(block.norm2(y))
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_window_attention_inference_runs_on_the_fused_kernel() -> None:
    # with the math fallback disabled, a layout the fused CPU kernel cannot take would raise "No available kernel"
    attn = WindowAttention(dim=32, window=4, num_heads=2)
    mask = reference_shift_mask(8, 12, 4, 2)
    x = torch.randn(12, 16, 32)
    with torch.no_grad():
        expected = naive_window_attention(attn, x, mask)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            out = attn(x, mask)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_zero_init_output_residual_model_starts_exactly_at_bicubic() -> None:
    from difiisr.diffusion import (
        DiffusionConfig,
        ResShiftDiffusion,
        sample_ancestral,
        sample_ddim,
        sample_onestep,
    )

    cfg = dataclasses.replace(preset_unet("tiny"), zero_init_output=True)
    torch.manual_seed(0)
    net = SwinUNet(cfg).eval()
    assert torch.count_nonzero(net.out[2].weight) == 0 and torch.count_nonzero(net.out[2].bias) == 0
    gen = torch.Generator().manual_seed(3)
    lr = torch.rand(2, 3, 16, 16, generator=gen) * 1.6 - 0.8
    zy = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    diffusion = ResShiftDiffusion(
        DiffusionConfig(
            steps=4, min_noise_level=0.2, predict_type="residual", latent=False, cap_sqrt_eta=False
        )
    )
    with torch.no_grad():
        assert torch.equal(
            net(torch.randn(2, 3, 64, 64), torch.tensor([0, 3]), zy), torch.zeros(2, 3, 64, 64)
        )
        for sampler in (sample_onestep, sample_ddim, sample_ancestral):
            x0 = sampler(net, diffusion, zy, zy, generator=torch.Generator().manual_seed(1), clip_x0=False)
            assert torch.equal(x0, zy), sampler.__name__


def test_zero_init_output_keeps_the_layout_and_still_trains() -> None:
    # off by default and in the x4 preset (the reference initialisation); on in the tiny preset
    assert SwinUNetConfig.__dataclass_fields__["zero_init_output"].default is False
    assert preset_unet("x4").zero_init_output is False and preset_unet("tiny").zero_init_output is True
    base = dataclasses.replace(preset_unet("tiny"), zero_init_output=False)
    torch.manual_seed(0)
    plain = SwinUNet(base)
    assert torch.count_nonzero(plain.out[2].weight) > 0
    net = SwinUNet(dataclasses.replace(base, zero_init_output=True))
    assert {k: v.shape for k, v in net.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    x = torch.randn(2, 3, 64, 64)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):  # the zero output conv first, then the ResBlock output convs behind it, then the rest
        opt.zero_grad()
        F.mse_loss(net(x, torch.tensor([0, 3]), x), x).backward()
        opt.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert torch.count_nonzero(net.out[2].weight) > 0
