"""VQGAN f4: released layout (x4 on the meta device), attention equal to the naive softmax, shapes, quantiser,
and the lean inference path (`vqgan_lean`: in place, strip-wise) equal bit for bit to the plain forward."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import difiisr.models.vqgan_lean as vqgan_lean
from difiisr.config import ConfigError, from_mapping, load_yaml, preset_path
from difiisr.models.vqgan import AttnBlock, ResnetBlock, VectorQuantizer, VQGANConfig, VQGANf4

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


# ---------------------------------------------------------------------------------------------------------------
# Lean inference path. The reference below is a copy of the plain forward as it was before the lean path existed
# (out-of-place ops, whole-image convolutions, codebook distances in chunks of 4096); the lean path must give
# exactly its numbers in fp32 on CPU.

CL = torch.channels_last


def ref_resnet(block: ResnetBlock, x: torch.Tensor) -> torch.Tensor:
    h = block.conv1(F.silu(block.norm1(x)))
    h = block.conv2(block.dropout(F.silu(block.norm2(h))))
    return (x if block.nin_shortcut is None else block.nin_shortcut(x)) + h


def ref_attn(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    hn = block.norm(x)

    def tokens(conv: torch.nn.Module) -> torch.Tensor:
        return conv(hn).reshape(b, 1, c, h * w).transpose(-1, -2).contiguous()

    out = F.scaled_dot_product_attention(tokens(block.q), tokens(block.k), tokens(block.v))
    return x + block.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


def ref_levels(levels: list, h: torch.Tensor, resample: str) -> torch.Tensor:
    for level in levels:
        for i, block in enumerate(level.block):
            h = ref_resnet(block, h)
            if len(level.attn):
                h = ref_attn(level.attn[i], h)
        if resample == "down" and hasattr(level, "downsample"):
            h = level.downsample.conv(F.pad(h, (0, 1, 0, 1)))
        if resample == "up" and hasattr(level, "upsample"):
            h = level.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return h


def ref_mid(mid: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    return ref_resnet(mid.block_2, ref_attn(mid.attn_1, ref_resnet(mid.block_1, h)))


def ref_encoder(enc: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = ref_mid(enc.mid, ref_levels(list(enc.down), enc.conv_in(x), "down"))
    return enc.conv_out(F.silu(enc.norm_out(h)))


def ref_decoder(dec: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    h = ref_levels(list(reversed(dec.up)), ref_mid(dec.mid, dec.conv_in(z)), "up")
    return dec.conv_out(F.silu(dec.norm_out(h)))


def ref_quantize(quant: VectorQuantizer, z: torch.Tensor) -> torch.Tensor:
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
    codes = quant.embedding.weight.float()
    code_sq = codes.pow(2).sum(dim=1)
    idx = torch.empty(flat.shape[0], dtype=torch.long)
    for start in range(0, flat.shape[0], 4096):
        part = flat[start : start + 4096]
        dist = part.pow(2).sum(dim=1, keepdim=True) + code_sq - 2.0 * part @ codes.t()
        idx[start : start + 4096] = dist.argmin(dim=1)
    return quant.embedding(idx.view(b, h, w)).permute(0, 3, 1, 2).to(z.dtype)


def ref_encode(net: VQGANf4, x: torch.Tensor) -> torch.Tensor:
    return net.quant_conv(ref_encoder(net.encoder, x))


def ref_decode(net: VQGANf4, z: torch.Tensor) -> torch.Tensor:
    return ref_decoder(net.decoder, net.post_quant_conv(ref_quantize(net.quantize, z)))


TWO_BLOCKS = VQGANConfig(n_embed=64, ch=32, ch_mult=(1, 2, 4), num_res_blocks=2, resolution=32)


@pytest.fixture
def small_strips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Force the strip-wise code on test-sized tensors; returns the strip counts of every strip loop run.

    96 KiB strips keep every strip above ~20k elements, where PyTorch's CPU conv picks the same (oneDNN) kernel
    as for the whole image; smaller inputs go to another kernel that rounds differently.
    """
    monkeypatch.setattr(vqgan_lean, "STRIP_MIN_BYTES", 0)
    monkeypatch.setattr(vqgan_lean, "STRIP_BYTES", 96 * 1024)
    counts: list[int] = []
    strips = vqgan_lean._strips

    def counting(rows: int, row_bytes: int) -> list[tuple[int, int]]:
        out = strips(rows, row_bytes)
        counts.append(len(out))
        return out

    monkeypatch.setattr(vqgan_lean, "_strips", counting)
    return counts


@pytest.mark.parametrize("cfg", [SMALL, TWO_BLOCKS], ids=["level-attention", "two-blocks"])
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 48, 40)])
@pytest.mark.parametrize("strips", [False, True], ids=["whole", "strips"])
def test_lean_inference_is_bit_identical_to_the_plain_forward(
    cfg: VQGANConfig, shape: tuple[int, ...], strips: bool, request: pytest.FixtureRequest
) -> None:
    counts = request.getfixturevalue("small_strips") if strips else None
    net = randomize(VQGANf4(cfg), seed=5).eval()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x_copy = x.clone()
    with torch.inference_mode():
        z_ref = ref_encode(net, x)
        y_ref = ref_decode(net, z_ref)
        z = net.encode(x)
        y = net.decode(z_ref)
    assert torch.equal(z, z_ref)
    assert torch.equal(y, y_ref)
    assert torch.equal(x, x_copy)  # the caller's input is left alone
    assert y.is_contiguous(memory_format=CL) == y_ref.is_contiguous(memory_format=CL)
    if counts is not None:  # the strip loops ran, and split the large maps into several strips
        assert max(counts) >= 4, counts


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL], ids=["nchw", "channels-last"])
def test_lean_encoder_and_decoder_in_both_layouts(
    layout: torch.memory_format, small_strips: list[int]
) -> None:
    # the decoder runs channels-last (the quantiser returns a permuted view); either module may get either layout
    net = randomize(VQGANf4(TWO_BLOCKS), seed=6).eval()
    x = (torch.rand(1, 3, 64, 48) * 2 - 1).contiguous(memory_format=layout)
    z = (torch.randn(1, 3, 16, 12) * 0.3).contiguous(memory_format=layout)
    with torch.no_grad():
        assert torch.equal(vqgan_lean.encoder(net.encoder, x), ref_encoder(net.encoder, x))
        assert torch.equal(vqgan_lean.decoder(net.decoder, z), ref_decoder(net.decoder, z))


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL], ids=["nchw", "channels-last"])
@pytest.mark.parametrize("c_out", [24, 48, 96])
def test_conv3x3_strips_overwrite_their_input_exactly(
    layout: torch.memory_format, c_out: int, small_strips: list[int]
) -> None:
    conv = randomize(torch.nn.Conv2d(48, c_out, 3, padding=1), seed=c_out)
    x = torch.randn(2, 48, 37, 29).contiguous(memory_format=layout)
    with torch.no_grad():
        expected = conv(x)
        out = vqgan_lean.conv3x3(conv, x.clone(), overwrite=True)
    assert small_strips and small_strips[-1] >= 4
    assert torch.equal(out, expected)


def test_resnet_block_lean_path_keeps_or_consumes_its_input() -> None:
    block = randomize(ResnetBlock(64, 32, 0.0), seed=7).eval()
    x = torch.randn(1, 64, 9, 11)
    x_copy = x.clone()
    with torch.no_grad():
        expected = ref_resnet(block, x)
        assert torch.equal(block(x), expected)
        assert torch.equal(vqgan_lean.resnet_block(block, x, consume=False), expected)
        assert torch.equal(x, x_copy)  # neither path writes into its argument unless told to
        assert torch.equal(vqgan_lean.resnet_block(block, x, consume=True), expected)
    assert not torch.equal(x, x_copy)  # consume=True reuses the input's memory


def test_training_path_is_the_plain_forward_and_backpropagates() -> None:
    net = randomize(VQGANf4(SMALL), seed=8).train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = net.encode(x)
    assert z.requires_grad
    with torch.no_grad():
        assert torch.equal(z, ref_encode(net, x))
        z_lean = net.encode(x)
    assert torch.equal(z.detach(), z_lean)
    y = net.decode(z.detach())
    (z.square().mean() + y.square().mean()).backward()
    for name, p in net.named_parameters():
        if name.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net.decoder.conv_in.weight.grad.abs().sum() > 0 and net.encoder.conv_in.weight.grad.abs().sum() > 0


def test_quantiser_ignores_the_callers_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(9)
    quant = VectorQuantizer(n_embed=8192, embed_dim=3)
    with torch.no_grad():
        quant.embedding.weight.copy_(torch.randn(8192, 3, generator=gen))
    codes = quant.embedding.weight
    z = torch.randn(1, 3, 16, 16, generator=gen) * 2
    expected = quant.indices(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.equal(expected.flatten(), torch.cdist(flat, codes).argmin(dim=1))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        indices = quant.indices(z)
        snapped = quant(z)
        unguarded = ref_quantize(quant, z)  # distances under the caller's autocast: the matmul runs in bf16
    assert torch.equal(indices, expected)
    assert torch.equal(snapped, codes[expected].permute(0, 3, 1, 2))
    # this data is sensitive to the precision: unguarded, bf16 picks another code for many positions
    changed = (unguarded.permute(0, 2, 3, 1).reshape(-1, 3) != codes[expected.flatten()]).any(dim=1)
    assert changed.float().mean() > 0.1


def test_autocast_takes_the_plain_path() -> None:
    # under autocast the activations change dtype between ops; the in-place lean path would round them
    # differently, so the plain forward runs (encode; decode differs from the old code only by the quantiser fix)
    net = randomize(VQGANf4(SMALL), seed=10).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        z, z_ref = net.encode(x), ref_encode(net, x)
        y = net.decode(z)
    assert z.dtype == torch.bfloat16 and torch.equal(z, z_ref)
    assert y.shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    ("mode", "lean"),
    [("inference_mode", True), ("no_grad", True), ("grad", False), ("no_grad+autocast", False)],
)
def test_encode_and_decode_choose_the_lean_path_only_for_cpu_inference(
    mode: str, lean: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # VQGANf4.encode/decode are the one switch: they hand CPU calls with autograd off and no autocast to
    # vqgan_lean, and run the plain modules otherwise
    calls: list[str] = []
    for name in ("encode", "decode"):
        real = getattr(vqgan_lean, name)

        def spy(net: VQGANf4, t: torch.Tensor, _real=real, _name=name) -> torch.Tensor:  # noqa: ANN001
            calls.append(_name)
            return _real(net, t)

        monkeypatch.setattr(vqgan_lean, name, spy)
    net = randomize(VQGANf4(SMALL), seed=11).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    contexts = {
        "inference_mode": torch.inference_mode,
        "no_grad": torch.no_grad,
        "grad": torch.enable_grad,
        "no_grad+autocast": lambda: torch.autocast(device_type="cpu", dtype=torch.bfloat16),
    }
    with torch.no_grad() if mode == "no_grad+autocast" else contextlib.nullcontext(), contexts[mode]():
        z = net.encode(x)
        y = net.decode(z)
    assert calls == (["encode", "decode"] if lean else [])
    assert z.shape == (1, 3, 8, 8) and y.shape == (1, 3, 32, 32)
    assert z.requires_grad == (mode == "grad")
