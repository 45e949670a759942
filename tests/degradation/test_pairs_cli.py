"""Pairs writer and ``difiisr degrade``: layout, manifest, 8/16-bit, grey, reruns, resume, reproducibility."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from difiisr.cli.main import main
from difiisr.degradation import (
    PairsError,
    RealESRGANConfig,
    RealESRGANDegradation,
    bicubic_downsample,
    degrade_folder,
)
from difiisr.io import image_to_tensor, read_image, write_image


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth gradient with a warm blob and texture, float in [0,1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    blob = np.exp(-((xx - 0.5) ** 2 + (yy - 0.4) ** 2) / 0.02)
    return np.clip(0.3 + 0.3 * yy + 0.4 * blob + 0.05 * rng.standard_normal((h, w)), 0, 1)


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three HR images (HxW): 8-bit grey 72x80, 8-bit RGB 70x90, 16-bit grey TIFF 66x75 (odd sizes)."""
    root = tmp_path_factory.mktemp("hr")
    write_image(root / "grey8.png", (_scene(72, 80, 1) * 255).round().astype(np.uint8))
    rgb = np.stack([_scene(70, 90, s) for s in (2, 3, 4)], axis=-1)
    write_image(root / "rgb8.png", (rgb * 255).round().astype(np.uint8))
    write_image(root / "grey16.tif", (_scene(66, 75, 5) * 65535).round().astype(np.uint16))
    return root


def _manifest(out: Path) -> dict[str, dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {e["name"]: e for e in map(json.loads, lines)}


def _bytes(out: Path) -> dict[str, bytes]:
    return {f"{d}/{p.name}": p.read_bytes() for d in ("hr", "lr") for p in sorted((out / d).glob("*.png"))}


@pytest.fixture(scope="module")
def realesrgan_out(hr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pairs") / "out"
    summary = degrade_folder(hr_dir, out, variants=2, crop=64, seed=7, batch_size=4, progress=False)
    assert (summary.written, summary.skipped, summary.sources) == (6, 0, 3)
    return out


def test_layout_manifest_and_sizes(realesrgan_out: Path) -> None:
    out = realesrgan_out
    names = {"grey8_v00", "grey8_v01", "rgb8_v00", "rgb8_v01", "grey16_v00", "grey16_v01"}
    assert {p.stem for p in (out / "hr").glob("*.png")} == names
    assert {p.stem for p in (out / "lr").glob("*.png")} == names
    entries = _manifest(out)
    assert set(entries) == names
    for name, e in entries.items():
        assert set(e) == {"name", "hr", "lr", "protocol", "seed", "params"}
        assert (e["hr"], e["lr"], e["protocol"]) == (f"hr/{name}.png", f"lr/{name}.png", "realesrgan")
        hr, lr = read_image(out / e["hr"]), read_image(out / e["lr"])
        assert (hr.height, hr.width) == (64, 64) and (lr.height, lr.width) == (16, 16)
        assert hr.bit_depth == lr.bit_depth == (16 if name.startswith("grey16") else 8)
        assert hr.channels == lr.channels == (3 if name.startswith("rgb") else 1)
        p = e["params"]
        assert p["source"] == {"grey8": "grey8.png", "rgb8": "rgb8.png", "grey16": "grey16.tif"}[name[:-4]]
        assert p["variant"] == int(name[-2:]) and p["base_seed"] == 7
        for key in (
            "kernel1",
            "resize1",
            "noise1",
            "jpeg1",
            "second_order",
            "final_order",
            "final_sinc",
            "crop",
        ):
            assert key in p
    settings = json.loads((out / "degradation.json").read_text())
    assert settings["config"]["resize_scope"] == "image" and settings["seed"] == 7


def test_recorded_seed_reproduces_the_written_lr(realesrgan_out: Path) -> None:
    """The manifest seed + the written HR give back the LR exactly (grey: the written LR is the RGB mean)."""
    pipe = RealESRGANDegradation(RealESRGANConfig(resize_scope="image"))
    for e in _manifest(realesrgan_out).values():
        hr = read_image(realesrgan_out / e["hr"])
        lr_file = read_image(realesrgan_out / e["lr"]).pixels.astype(np.float64)
        levels = hr.max_value
        lr, (rec,) = pipe((image_to_tensor(hr.pixels) + 1) / 2, [e["seed"]], levels=levels)
        assert rec["kernel1"] == e["params"]["kernel1"] and rec["noise1"] == e["params"]["noise1"]
        expect = (lr[0] * levels).double().permute(1, 2, 0).numpy()
        if hr.channels == 1:
            expect = np.round(expect.mean(axis=2))
        np.testing.assert_array_equal(lr_file, np.round(expect))


def test_rerun_skips_everything(realesrgan_out: Path, hr_dir: Path) -> None:
    before = _bytes(realesrgan_out)
    mtimes = {p: p.stat().st_mtime_ns for p in (realesrgan_out / "lr").glob("*.png")}
    summary = degrade_folder(
        hr_dir, realesrgan_out, variants=2, crop=64, seed=7, batch_size=4, progress=False
    )
    assert (summary.written, summary.skipped) == (0, 6)
    assert _bytes(realesrgan_out) == before
    assert mtimes == {p: p.stat().st_mtime_ns for p in (realesrgan_out / "lr").glob("*.png")}


def test_resume_redoes_only_missing_pairs_identically(
    realesrgan_out: Path, hr_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(realesrgan_out, out)
    before = _bytes(out)
    (out / "lr" / "rgb8_v01.png").unlink()  # interrupted after the HR write
    lines = (out / "manifest.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if '"name": "grey16_v00"' not in ln]
    (out / "manifest.jsonl").write_text(
        "\n".join(kept) + '\n{"name": "torn li'
    )  # interrupted manifest append
    summary = degrade_folder(hr_dir, out, variants=2, crop=64, seed=7, batch_size=4, progress=False)
    assert (summary.written, summary.skipped) == (2, 4)
    assert _bytes(out) == before
    assert _manifest(out) == _manifest(realesrgan_out)


def test_output_is_independent_of_batch_size_and_of_other_images(
    realesrgan_out: Path, hr_dir: Path, tmp_path: Path
) -> None:
    one_by_one = tmp_path / "b1"
    degrade_folder(hr_dir, one_by_one, variants=2, crop=64, seed=7, batch_size=1, progress=False)
    assert _bytes(one_by_one) == _bytes(realesrgan_out)
    alone_dir = tmp_path / "alone_hr"
    alone_dir.mkdir()
    shutil.copy(hr_dir / "rgb8.png", alone_dir / "rgb8.png")
    alone = tmp_path / "alone"
    degrade_folder(alone_dir, alone, variants=2, crop=64, seed=7, progress=False)
    full = _bytes(realesrgan_out)
    assert _bytes(alone) == {k: v for k, v in full.items() if "rgb8" in k}


def test_different_seed_gives_different_lr(hr_dir: Path, tmp_path: Path, realesrgan_out: Path) -> None:
    out = tmp_path / "seed8"
    degrade_folder(hr_dir, out, variants=2, crop=64, seed=8, progress=False)
    a, b = _bytes(out), _bytes(realesrgan_out)
    assert all(a[k] != b[k] for k in a if k.startswith("lr/"))


def test_whole_images_cut_to_multiple_of_sf(hr_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "whole"
    degrade_folder(hr_dir, out, crop=None, seed=1, progress=False)
    src = read_image(hr_dir / "grey16.tif").pixels  # 66x75
    hr, lr = read_image(out / "hr" / "grey16.png"), read_image(out / "lr" / "grey16.png")
    assert (hr.height, hr.width, lr.height, lr.width) == (64, 72, 16, 18)
    crop = _manifest(out)["grey16"]["params"]["crop"]
    window = src[:64, :72]
    expected = window[:, ::-1] if crop["hflip"] else window
    np.testing.assert_array_equal(hr.pixels, expected)


def test_bicubic_protocol_is_pil_bicubic_of_the_written_hr(hr_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bic"
    summary = degrade_folder(hr_dir, out, protocol="bicubic", crop=None, progress=False)
    assert summary.written == 3
    for name, src_name in (("grey8", "grey8.png"), ("rgb8", "rgb8.png"), ("grey16", "grey16.tif")):
        src = read_image(hr_dir / src_name).pixels
        hr = read_image(out / "hr" / f"{name}.png").pixels
        h, w = src.shape[0] // 4 * 4, src.shape[1] // 4 * 4
        np.testing.assert_array_equal(hr, src[:h, :w])  # no flips in the test protocol
        np.testing.assert_array_equal(read_image(out / "lr" / f"{name}.png").pixels, bicubic_downsample(hr))
        assert _manifest(out)[name]["protocol"] == "bicubic"


def test_other_settings_into_same_folder_are_refused(realesrgan_out: Path, hr_dir: Path) -> None:
    with pytest.raises(PairsError, match=r"holds pairs made with other settings \(seed differ"):
        degrade_folder(hr_dir, realesrgan_out, variants=2, crop=64, seed=99, progress=False)


def test_identical_bicubic_variants_are_refused(hr_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        PairsError, match=r"variants=2 with the bicubic protocol and no crop would write 2 identical"
    ):
        degrade_folder(hr_dir, tmp_path / "out", protocol="bicubic", crop=None, variants=2, progress=False)


def test_colliding_names_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_image(src / "a.png", np.zeros((64, 64), np.uint8))
    write_image(src / "a.tif", np.zeros((64, 64), np.uint8))
    with pytest.raises(PairsError, match=r"would both be written as a.png; rename one"):
        degrade_folder(src, tmp_path / "out", progress=False)


def test_cli_writes_pairs_and_prints_summary(
    hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cli"
    args = ["degrade", "--hr", str(hr_dir), "--out", str(out), "--crop", "64", "--seed", "3", "--no-progress"]
    assert main([*args, "--set", "gray_noise_prob=1.0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("degrade: 3 pairs written, 0 already there (realesrgan, 3 HR images x 1 variant)")
    assert str(out) in line and "manifest.jsonl" in line
    assert json.loads((out / "degradation.json").read_text())["config"]["gray_noise_prob"] == 1.0
    assert main([*args, "--set", "gray_noise_prob=1.0"]) == 0
    assert "0 pairs written, 3 already there" in capsys.readouterr().out


def test_cli_bicubic_default_is_whole_image(
    hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "bic"
    assert (
        main(["degrade", "--hr", str(hr_dir), "--out", str(out), "--protocol", "bicubic", "--no-progress"])
        == 0
    )
    assert read_image(out / "hr" / "rgb8.png").pixels.shape == (68, 88, 3)


def test_cli_cuda_without_gpu_is_a_clear_error(
    hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # simulate a machine without CUDA, so the test means the same on GPU hosts (CI has none anyway)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(
        ["degrade", "--hr", str(hr_dir), "--out", str(tmp_path / "x"), "--device", "cuda", "--no-progress"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "device 'cuda' asked for, but torch sees no CUDA GPU" in err and "use --device cpu" in err
    assert not (tmp_path / "x").exists()


def test_cli_bad_config_key_is_a_clear_error(
    hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = main(["degrade", "--hr", str(hr_dir), "--out", str(tmp_path / "y"), "--set", "gray_noise=1"])
    assert rc == 2
    assert "unknown key(s) gray_noise for RealESRGANConfig" in capsys.readouterr().err


@pytest.mark.gpu
def test_cuda_pairs_are_reproducible(hr_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    degrade_folder(hr_dir, a, variants=2, crop=64, seed=7, device="cuda", progress=False)
    degrade_folder(hr_dir, b, variants=2, crop=64, seed=7, device="cuda", batch_size=1, progress=False)
    assert _bytes(a) == _bytes(b)
