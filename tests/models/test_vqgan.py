"""VQGAN f4: released layout (x4 on the meta device), attention equal to the naive softmax, shapes, quantiser."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from difiisr.config import ConfigError, from_mapping, load_yaml, preset_path
from difiisr.models.vqgan import AttnBlock, VectorQuantizer, VQGANConfig, VQGANf4

SMALL = VQGANConfig(
    n_embed=64, ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(16,), resolution=32
)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module


def test_x4_autoencoder_layout_is_the_released_one() -> None:
    cfg = from_mapping(VQGANConfig, load_yaml(preset_path("x4"))["autoencoder"], "x4.yaml:autoencoder")
    assert cfg == VQGANConfig()  # the defaults are the released f4 model
    with torch.device("meta"):
        net = VQGANf4(cfg)
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 55_322_782
    assert len(state) == 205
    expected = {
        "quantize.embedding.weight": (8192, 3),
        "quant_conv.weight": (3, 3, 1, 1),
        "post_quant_conv.weight": (3, 3, 1, 1),
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.mid.attn_1.norm.weight": (512,),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "encoder.conv_out.weight": (3, 512, 3, 3),
        "decoder.conv_in.weight": (512, 3, 3, 3),
        "decoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
        "decoder.up.2.block.2.conv1.weight": (512, 512, 3, 3),
        "decoder.up.2.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    # attn_resolutions: [] -> attention only in the middle blocks
    assert not any(".attn." in k for k in state)
    assert (
        "decoder.up.0.upsample.conv.weight" not in state
        and "encoder.down.2.downsample.conv.weight" not in state
    )
    assert net.downsample_factor == 4


def naive_attention(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """x + proj_out(v softmax(q^T k / sqrt(C))^T), with the (HW x HW) weight matrix written out."""
    b, c, h, w = x.shape
    hn = block.norm(x)
    q = block.q(hn).reshape(b, c, h * w)
    k = block.k(hn).reshape(b, c, h * w)
    v = block.v(hn).reshape(b, c, h * w)
    weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c**-0.5, dim=2)  # (b, HW_q, HW_k)
    out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
    return x + block.proj_out(out)


def test_attention_equals_naive_softmax() -> None:
    block = randomize(AttnBlock(64), seed=3)
    x = torch.randn(2, 64, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(block(x), naive_attention(block, x), rtol=1e-5, atol=1e-5)


def test_encode_decode_shapes() -> None:
    net = randomize(VQGANf4(SMALL)).eval()
    assert sum(".attn." in k for k in net.state_dict()) > 0  # level attention at 16 is built and runs
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        z = net.encode(x)
        assert z.shape == (2, 3, 8, 12)
        y = net.decode(z)
    assert y.shape == (2, 3, 32, 48)
    assert torch.isfinite(y).all()


def test_encode_is_continuous_and_decode_quantises() -> None:
    net = randomize(VQGANf4(SMALL)).eval()
    with torch.no_grad():
        z = net.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
        codes = net.quantize.embedding.weight
        # the latent is not snapped to the codebook ...
        assert not any(torch.allclose(z[0, :, 0, 0], c) for c in codes)
        # ... but decode only sees codebook vectors: decoding z and its quantised version agree exactly
        assert torch.equal(net.decode(z), net.decode(net.quantize(z)))


def test_encode_refuses_sizes_not_multiple_of_4() -> None:
    net = VQGANf4(SMALL)
    with pytest.raises(ValueError, match=r"VQGAN input is 30x32; height and width must be multiples of 4"):
        net.encode(torch.zeros(1, 3, 30, 32))


def test_quantiser_picks_nearest_code_in_chunks() -> None:
    torch.manual_seed(0)
    quant = VectorQuantizer(n_embed=50, embed_dim=3)
    torch.nn.init.normal_(quant.embedding.weight)
    z = torch.randn(2, 3, 5, 7)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    expected = torch.cdist(flat, quant.embedding.weight).argmin(dim=1).view(2, 5, 7)
    assert torch.equal(quant.indices(z), expected)
    assert torch.equal(quant.indices(z, chunk=4), expected)  # 70 positions in 18 chunks
    snapped = quant(z)
    assert snapped.shape == z.shape
    assert torch.equal(snapped.permute(0, 2, 3, 1), quant.embedding.weight[expected])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match=r"double_z: true describes the KL autoencoder"):
        VQGANConfig(double_z=True)
    with pytest.raises(ConfigError, match=r"ae\.yaml\.padding_mode: 'reflect' is not one of \['zeros'\]"):
        from_mapping(VQGANConfig, {"padding_mode": "reflect"}, "ae.yaml")
    assert VQGANConfig(num_res_blocks=[1, 2, 3]).num_res_blocks == (1, 2, 3)


def test_attention_runs_on_the_fused_kernel() -> None:
    # Only the fused (flash) CPU kernel is allowed here: the math fallback, which would materialise the
    # (HW x HW) score matrix, raises "No available kernel" (it does for non-contiguous q/k/v).
    block = randomize(AttnBlock(64), seed=4)
    x = torch.randn(1, 64, 6, 10)
    with torch.no_grad():
        expected = naive_attention(block, x)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            out = block(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
