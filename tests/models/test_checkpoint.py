"""Checkpoint reading/loading: every accepted wrapping round-trips, mismatches are readable, pickles stay inert."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from difiisr.config import from_mapping, load_yaml, preset_path
from difiisr.models import CheckpointError, SwinUNet, SwinUNetConfig, VQGANConfig, VQGANf4
from difiisr.models.checkpoint import (
    load_checkpoint,
    matching_presets,
    mismatch_report,
    read_state_dict,
    save_safetensors,
)

SMALL = SwinUNetConfig(
    image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(8,),
    channel_mult=(1, 2), num_head_channels=16, swin_embed_dim=32, window_size=4, use_scale_shift_norm=True,
    lq_size=16,
)  # fmt: skip


def small_net(seed: int) -> SwinUNet:
    torch.manual_seed(seed)
    net = SwinUNet(SMALL).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


def run(net: SwinUNet) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, 16, 16, generator=gen)
    with torch.no_grad():
        return net(x, torch.tensor([2]), x * 0.5)


def prefixed(prefix: str) -> Callable[[dict], dict]:
    return lambda sd: {prefix + k: v for k, v in sd.items()}


WRAPPINGS: dict[str, tuple[str, Callable[[dict], object]]] = {
    "bare": (".pth", lambda sd: sd),
    "state_dict": (".pth", lambda sd: {"state_dict": sd, "iters_start": 5000}),
    "module_prefix": (".pth", prefixed("module.")),
    "ddp_in_wrapper": (".ckpt", lambda sd: {"state_dict": prefixed("module.")(sd), "log_step": {}}),
    "torch_compile": (".pt", prefixed("_orig_mod.")),
    "params_ema": (".pth", lambda sd: {"params": {}, "params_ema": sd}),
}


@pytest.mark.parametrize("wrapping", [*WRAPPINGS, "safetensors"])
def test_each_accepted_wrapping_loads_strictly_with_identical_outputs(tmp_path: Path, wrapping: str) -> None:
    source = small_net(seed=1)
    if wrapping == "safetensors":
        path = save_safetensors(source, tmp_path / "unet.safetensors", {"step": 12})
    else:
        suffix, wrap = WRAPPINGS[wrapping]
        path = tmp_path / f"unet{suffix}"
        torch.save(wrap(source.state_dict()), path)
    target = small_net(seed=2)
    assert not torch.equal(run(target), run(source))
    load_checkpoint(target, path)
    assert torch.equal(run(target), run(source))
    assert read_state_dict(path).keys() == source.state_dict().keys()


def test_save_safetensors_is_atomic_and_keeps_metadata(tmp_path: Path) -> None:
    net = small_net(seed=1)
    path = save_safetensors(
        net.state_dict(), tmp_path / "w" / "unet.safetensors", {"step": 12, "preset": "tiny"}
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["unet.safetensors"]  # no temp file left
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"step": "12", "preset": "tiny"}
        assert set(fh.keys()) == set(net.state_dict())


def test_mismatch_lists_keys_and_names_the_fitting_preset(tmp_path: Path) -> None:
    tiny_cfg = from_mapping(SwinUNetConfig, load_yaml(preset_path("tiny"))["unet"], "tiny")
    path = tmp_path / "tiny_unet.pth"
    torch.save({"state_dict": SwinUNet(tiny_cfg).state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small_net(seed=0), path)
    msg = str(info.value)
    assert msg.startswith(f"{path} does not fit SwinUNet; ")
    assert "it fits the unet of the shipped preset tiny: use --preset tiny" in msg
    # tiny has 4 levels, SMALL 2 (and other window/MLP sizes): every kind of difference is listed with counts
    assert "; 35 missing keys: input_blocks.3.1.patch_embed.proj.weight, " in msg
    assert "; 174 unexpected keys: input_blocks.4.0.op.weight, " in msg
    assert (
        "; 48 shape mismatches: middle_block.1.blocks.0.attn.relative_position_bias_table "
        "(file (225, 2) vs network (49, 2)), "
    ) in msg
    assert ", ... (25 more); " in msg and ", ... (164 more); " in msg  # lists are cut after 10 names


def test_missing_keys_are_listed_with_counts(tmp_path: Path) -> None:
    state = small_net(seed=0).state_dict()
    dropped = ["out.2.weight", "out.2.bias"]
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if k not in dropped}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small_net(seed=0), path)
    msg = str(info.value)
    assert "2 missing keys: out.2.weight, out.2.bias;" in msg
    assert "unexpected" not in msg and "shape mismatches" not in msg
    assert "no shipped preset (tiny, x4) fits it either" in msg


def test_strict_false_loads_the_matching_part(tmp_path: Path) -> None:
    source = small_net(seed=1)
    state = source.state_dict()
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("out.")}, path)
    target = small_net(seed=2)
    load_checkpoint(target, path, strict=False)
    assert torch.equal(target.state_dict()["time_embed.0.weight"], state["time_embed.0.weight"])
    assert not torch.equal(target.state_dict()["out.2.weight"], state["out.2.weight"])


def test_autoencoder_file_given_as_unet_is_recognised() -> None:
    # x4 networks are built on the meta device: shapes without memory, enough to identify a file
    ae_cfg = from_mapping(VQGANConfig, load_yaml(preset_path("x4"))["autoencoder"], "x4")
    unet_cfg = from_mapping(SwinUNetConfig, load_yaml(preset_path("x4"))["unet"], "x4")
    with torch.device("meta"):
        ae_state = VQGANf4(ae_cfg).state_dict()
        unet_state = SwinUNet(unet_cfg).state_dict()
    assert matching_presets(ae_state) == ["x4 autoencoder"]
    assert matching_presets(unet_state) == ["x4 unet"]
    msg = mismatch_report(small_net(seed=0), ae_state, "autoencoder_vq_f4.pth")
    assert msg is not None
    assert "205 unexpected keys: encoder.conv_in.weight" in msg
    assert msg.endswith("it is the x4 autoencoder checkpoint, not a unet one: pass it with --vae-ckpt")


class _Payload:
    """A pickle that would create a file when unpickled by a plain (unsafe) loader."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("writer", ["torch_save", "raw_pickle"])
def test_malicious_pickle_is_refused_not_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = {"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(marker)}
    if writer == "torch_save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(
        CheckpointError,
        match=rf"^{path}: refused to load: the file needs Python objects other than tensors to unpickle "
        r"\(Unsupported global: GLOBAL [\w.]+\)\. Only weights are read",
    ):
        read_state_dict(path)
    assert not marker.exists()


def test_unreadable_inputs_give_specific_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing\.pth: checkpoint file not found"):
        read_state_dict(tmp_path / "missing.pth")
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(
        CheckpointError, match=r"unknown weights format '\.npz'; use \.safetensors or one of \.pth"
    ):
        read_state_dict(odd)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a readable safetensors file"):
        read_state_dict(junk)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match=r"trunc\.pth: not a readable PyTorch checkpoint"):
        read_state_dict(trunc)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(CheckpointError, match=r"holds a list, not a state_dict"):
        read_state_dict(listing)
    meta_only = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 1e-4}}, meta_only)
    with pytest.raises(
        CheckpointError, match=r"no state_dict found \(top-level keys: 'epoch', 'optimizer'\)"
    ):
        read_state_dict(meta_only)


def test_prefix_collision_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.pth"
    torch.save({"module.out.weight": torch.zeros(1), "out.weight": torch.ones(1)}, path)
    msg = r"keys 'module\.out\.weight' and 'out\.weight' both become 'out\.weight' once the module\. / _orig_mod\."
    with pytest.raises(CheckpointError, match=msg):
        read_state_dict(path)
