"""``difiisr upscale`` through the real console script: data safety and up-front refusals (issue 9 items 3, 4, 9,
12) -- each of these was seen through the CLI, so each runs it in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from difiisr.errors import ExitCode
from difiisr.inference.upscaler import Upscaler
from difiisr.io import read_image, write_image
from difiisr.io.metadata import read_text_record
from difiisr.models.bundle import save_model_folder
from difiisr.models.preset import load_preset

EXE = str(Path(sys.executable).with_name("difiisr"))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [EXE, "upscale", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different tiny model folders (random weights, seeds 1 and 2)."""
    preset = load_preset("tiny")
    out = []
    for seed in (1, 2):
        ups = Upscaler.from_random(preset, seed=seed, device="cpu")
        out.append(save_model_folder(tmp_path_factory.mktemp(f"model{seed}"), preset, ups.unet.state_dict()))
    return out[0], out[1]


@pytest.fixture()
def lr_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "lr"
    for i in range(2):
        write_image(folder / f"f{i}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_output_folder_overlapping_an_input_is_refused(models, lr_dir: Path, tmp_path: Path) -> None:
    before = _snapshot(lr_dir)
    for out in (lr_dir, lr_dir / "sr"):
        proc = _cli(str(lr_dir), "--out", str(out), "--model", str(models[0]), "--overwrite", cwd=tmp_path)
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        assert "input folder" in proc.stderr and "choose an output folder outside" in proc.stderr
    # an input file named directly, with --out its own folder: its output would have the same name
    proc = _cli(
        str(lr_dir / "f0.png"), "--out", str(lr_dir), "--model", str(models[0]), "--overwrite", cwd=tmp_path
    )
    assert proc.returncode == ExitCode.USAGE and "holds the input file" in proc.stderr
    assert _snapshot(lr_dir) == before  # the sources were never touched


def test_reruns_skip_only_outputs_made_with_the_same_model_and_settings(
    models, lr_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sr"
    first = _cli(
        str(lr_dir),
        "--out",
        str(out),
        "--model",
        str(models[0]),
        "--seed",
        "0",
        "--no-progress",
        cwd=tmp_path,
    )
    assert first.returncode == ExitCode.OK, first.stderr
    made = _snapshot(out)
    # same model and settings: skipped
    again = _cli(
        str(lr_dir),
        "--out",
        str(out),
        "--model",
        str(models[0]),
        "--seed",
        "0",
        "--no-progress",
        cwd=tmp_path,
    )
    assert again.returncode == ExitCode.OK and "upscaled 0 image(s), skipped 2 existing" in again.stdout
    # another seed, another model: refused, naming --overwrite, nothing changed
    for extra in (["--model", str(models[0]), "--seed", "1"], ["--model", str(models[1]), "--seed", "0"]):
        proc = _cli(str(lr_dir), "--out", str(out), *extra, "--no-progress", cwd=tmp_path)
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        assert "2 existing output(s) were made differently" in proc.stderr and "--overwrite" in proc.stderr
        assert _snapshot(out) == made
    # --overwrite redoes them with the new settings, and the files say so
    redo = _cli(
        str(lr_dir),
        "--out",
        str(out),
        "--model",
        str(models[0]),
        "--seed",
        "1",
        "--overwrite",
        "--no-progress",
        cwd=tmp_path,
    )
    assert redo.returncode == ExitCode.OK and "upscaled 2 image(s)" in redo.stdout
    record = read_text_record(out / "f0.png")
    assert record is not None and record["inference.seed"] == "1"
    assert _snapshot(out) != made


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sampler", "ddim", "--steps", "0"], "--steps 0: must be >= 1; leave --steps out"),
        (["--sampler", "ddim", "--steps", "-3"], "--steps -3: must be >= 1"),
        (["--sampler", "ddim", "--steps", "99"], "steps=99: this model's schedule has 4 steps; use 1..4"),
        (["--steps", "2"], "steps=2 with sampler onestep: one-step sampling always runs at the trained"),
    ],
)
def test_bad_steps_are_refused_once_before_any_image(
    models, lr_dir: Path, tmp_path: Path, flags, message
) -> None:
    out = tmp_path / "sr"
    proc = _cli(str(lr_dir), "--out", str(out), "--model", str(models[0]), *flags, cwd=tmp_path)
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr.count(message) == 1, proc.stderr
    assert "failed" not in proc.stdout and not out.exists()


def test_no_progress_hides_the_bars(models, lr_dir: Path, tmp_path: Path) -> None:
    quiet = _cli(
        str(lr_dir), "--out", str(tmp_path / "a"), "--model", str(models[0]), "--no-progress", cwd=tmp_path
    )
    loud = _cli(str(lr_dir), "--out", str(tmp_path / "b"), "--model", str(models[0]), cwd=tmp_path)
    assert quiet.returncode == loud.returncode == ExitCode.OK
    assert "img/s" in loud.stderr or "s/img" in loud.stderr  # the bar is there without the flag
    assert "img/s" not in quiet.stderr and "s/img" not in quiet.stderr
    assert read_image(tmp_path / "a" / "f0.png").pixels.shape == (64, 64)
