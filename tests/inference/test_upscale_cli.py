"""``difiisr upscale`` end to end on CPU with the tiny preset (model folder from a random net, and --random-init)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difiisr.cli.main import main
from difiisr.inference.settings import InferenceSettings
from difiisr.inference.upscaler import Upscaler
from difiisr.io import read_image, write_image
from difiisr.models.bundle import save_model_folder
from difiisr.models.preset import load_preset

TILE_ARGS = ["--tile", "16", "--tile-overlap", "4", "--batch", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # random weights whose output depends on the seed (the shipped tiny preset starts exactly at bicubic)
    preset = load_preset("tiny", ["unet.zero_init_output=false"])
    ups = Upscaler.from_random(preset, seed=1, device="cpu")
    return save_model_folder(
        tmp_path_factory.mktemp("model"), preset, ups.unet.state_dict(), meta={"step": 0}
    )


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A folder with grey 8-bit PNG, grey 16-bit TIFF and RGB JPEG, plus one PNG given as a file elsewhere."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    write_image(folder / "grey8.png", rng.integers(0, 256, (20, 24), dtype=np.uint8))
    write_image(folder / "grey16.tif", rng.integers(0, 65536, (16, 16), dtype=np.uint16))
    write_image(folder / "rgb.jpg", rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "other" / "single.png"
    write_image(single, rng.integers(0, 256, (8, 40), dtype=np.uint8))
    return folder, single


def _outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def test_model_folder_run_writes_every_output_then_skips_them(
    model_dir: Path, inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, single = inputs
    out = tmp_path / "out"
    argv = [
        "upscale",
        str(folder),
        str(single),
        "--out",
        str(out),
        "--model-dir",
        str(model_dir),
        "--seed",
        "5",
    ]
    assert main(argv + TILE_ARGS) == 0
    assert "upscaled 4 image(s), skipped 0 existing, 0 failed" in capsys.readouterr().out
    # no temp files left behind; JPEG input becomes PNG, TIFF stays TIFF
    assert _outputs(out) == ["grey16.tif", "grey8.png", "rgb.png", "single.png"]

    ups = Upscaler.from_folder(model_dir, device="cpu")
    for src, name, shape, dtype in [
        (folder / "grey8.png", "grey8.png", (80, 96), np.uint8),
        (folder / "grey16.tif", "grey16.tif", (64, 64), np.uint16),
        (folder / "rgb.jpg", "rgb.png", (48, 80, 3), np.uint8),
        (single, "single.png", (32, 160), np.uint8),
    ]:
        got = read_image(out / name)
        assert got.pixels.shape == shape and got.pixels.dtype == dtype, name
        expected = ups.upscale_array(
            read_image(src).pixels, InferenceSettings(seed=5, tile=16, tile_overlap=4, batch=2)
        )
        assert np.array_equal(got.pixels, expected), name
    text = Image.open(out / "grey8.png").text
    assert (
        text["inference.seed"] == "5" and text["inference.sampler"] == "onestep" and text["preset"] == "tiny"
    )
    assert text["model.digest"] == Upscaler.from_folder(model_dir, device="cpu").digest

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(argv + TILE_ARGS) == 0
    assert "upscaled 0 image(s), skipped 4 existing, 0 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_overwrite_redoes_existing_outputs(
    model_dir: Path, inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, single = inputs
    out = tmp_path / "out"
    write_image(out / "single.png", np.zeros((2, 2), np.uint8))  # a stale output (no difiisr record)
    base = ["upscale", str(single), "--out", str(out), "--model-dir", str(model_dir), *TILE_ARGS]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "1 existing output(s) were made differently" in err and "Pass --overwrite" in err
    assert read_image(out / "single.png").pixels.shape == (2, 2)
    assert main([*base, "--overwrite"]) == 0
    assert read_image(out / "single.png").pixels.shape == (32, 160)
    assert "upscaled 1 image(s), skipped 0 existing" in capsys.readouterr().out


def test_unreadable_input_fails_alone_and_leaves_no_partial_file(
    model_dir: Path, inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = inputs
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "out"
    assert main(["upscale", str(folder), "--out", str(out), "--model-dir", str(model_dir), *TILE_ARGS]) == 1
    assert "upscaled 3 image(s), skipped 0 existing, 1 failed" in capsys.readouterr().out
    assert _outputs(out) == ["grey16.tif", "grey8.png", "rgb.png"]


def test_released_style_checkpoint_loads_through_unet_ckpt(
    model_dir: Path, inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``{'state_dict': {'module.' + key: ...}}`` .pth (the DDP-wrapped release format) gives the same output."""
    import torch

    _, single = inputs
    state = Upscaler.from_folder(model_dir, device="cpu").unet.state_dict()
    ckpt = tmp_path / "unet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, ckpt)
    out_ckpt, out_dir = tmp_path / "a", tmp_path / "b"
    common = [str(single), *TILE_ARGS]
    assert (
        main(["upscale", *common, "--out", str(out_ckpt), "--preset", "tiny", "--unet-ckpt", str(ckpt)]) == 0
    )
    assert main(["upscale", *common, "--out", str(out_dir), "--model-dir", str(model_dir)]) == 0
    assert np.array_equal(
        read_image(out_ckpt / "single.png").pixels, read_image(out_dir / "single.png").pixels
    )
    bad = ["upscale", *common, "--out", str(out_ckpt), "--overwrite", "--preset", "tiny"]
    assert main([*bad, "--unet-ckpt", str(ckpt), "--vae-ckpt", str(ckpt)]) == 2
    assert "works in pixel space and has no autoencoder; drop --vae-ckpt" in capsys.readouterr().err


def test_weights_must_be_chosen_explicitly(inputs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    _, single = inputs
    out = tmp_path / "out"
    assert main(["upscale", str(single), "--out", str(out), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "no model weights given" in err and "--random-init" in err and "--model DIR|URI" in err
    assert (
        main(["upscale", str(single), "--out", str(out), "--model-dir", str(tmp_path), "--random-init"]) == 2
    )
    assert "--model and --random-init both choose the weights" in capsys.readouterr().err
    assert main(["upscale", str(single), "--out", str(out), "--model-dir", str(tmp_path)]) == 2
    assert "neither a model folder" in capsys.readouterr().err
    assert not out.exists()


def test_missing_input_and_name_clash_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["upscale", str(tmp_path / "nope.png"), "--out", str(out), "--random-init"]) == 2
    assert f"input {tmp_path / 'nope.png'} does not exist" in capsys.readouterr().err
    write_image(tmp_path / "a" / "x.png", np.zeros((4, 4), np.uint8))
    write_image(tmp_path / "b" / "x.jpg", np.zeros((4, 4), np.uint8))
    assert (
        main(["upscale", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--random-init"]) == 2
    )
    assert f"would both be written to {out / 'x.png'}" in capsys.readouterr().err


def test_random_init_through_the_console_script(
    inputs: tuple[Path, Path], tmp_path: Path, repo_root: Path
) -> None:
    _, single = inputs
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("difiisr")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [
        str(exe),
        "upscale",
        str(single),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--random-init",
        "--sampler",
        "ddim",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=repo_root, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "upscaled 1 image(s), skipped 0 existing, 0 failed" in proc.stdout
    assert "RANDOM weights" in proc.stderr
    assert read_image(out / "single.png").pixels.shape == (32, 160)
