"""``difiisr synth-data`` and ``difiisr validate-data``: outputs, rerun skips, summaries, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difiisr.cli.main import main
from difiisr.io import read_image, write_image


def test_synth_data_writes_then_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    args = ["synth-data", "--out", str(out), "--n", "3", "--size", "40x32", "--seed", "5", "--no-progress"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == f"wrote 3 images (0 skipped) to {out} [40x32, 8-bit, seed 5]"
    assert sorted(p.name for p in out.iterdir()) == [
        "synth_000000.png",
        "synth_000001.png",
        "synth_000002.png",
    ]
    first = read_image(out / "synth_000000.png")
    assert (first.width, first.height, first.bit_depth) == (40, 32, 8)
    assert main([*args[:4], "5", *args[5:]]) == 0  # --n 5: two new, three kept
    assert capsys.readouterr().out.strip() == f"wrote 2 images (3 skipped) to {out} [40x32, 8-bit, seed 5]"
    np.testing.assert_array_equal(read_image(out / "synth_000000.png").pixels, first.pixels)


def test_synth_data_16bit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s16"
    assert (
        main(
            [
                "synth-data",
                "--out",
                str(out),
                "--n",
                "1",
                "--size",
                "24",
                "--bit-depth",
                "16",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "1 images (0 skipped)" in capsys.readouterr().out
    img = read_image(out / "synth_000000.png")
    assert (img.width, img.height, img.bit_depth) == (24, 24, 16)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--size", "12by4", "argument --size: size '12by4': expected WIDTHxHEIGHT in pixels"),
        ("--size", "4x4", "argument --size: size '4x4': width and height must each be at least 8 pixels"),
        ("--n", "-2", "argument --n: -2 must be >= 0"),
        ("--bit-depth", "12", "argument --bit-depth: invalid choice: 12"),
    ],
)
def test_synth_data_bad_flags_are_argparse_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["synth-data", "--out", str(tmp_path), flag, value])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_console_script_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("difiisr")
    done = subprocess.run(
        [
            str(exe),
            "synth-data",
            "--out",
            str(tmp_path / "o"),
            "--n",
            "1",
            "--size",
            "16x16",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote 1 images (0 skipped) to {tmp_path / 'o'}")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "frames"
    assert main(["synth-data", "--out", str(out), "--n", "3", "--size", "48x40", "--no-progress"]) == 0
    return out


def test_validate_data_exit_codes_and_reports(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    capsys.readouterr()
    # default reports: reports/validate-data/<DIR path> under the current directory
    monkeypatch.chdir(tmp_path)
    assert main(["validate-data", str(synth_dir), "--min-side", "40", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"PASS: all 7 rules hold for 3 image(s) in {synth_dir}")
    default = tmp_path / "reports" / "validate-data" / synth_dir.resolve().relative_to("/")
    assert json.loads((default / "report.json").read_text())["success"] is True
    assert not (synth_dir / "_validation").exists()

    # default --min-side 256 (the training crop): 48x40 frames fail and are named
    report_dir = tmp_path / "reports"
    assert main(["validate-data", str(synth_dir), "--report-dir", str(report_dir), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL: 1 of 7 rules broken for 3 image(s) in {synth_dir}")
    assert (
        f"min_side [min(width, height) >= 256 px (the training crop)]: {synth_dir / 'synth_000000.png'}"
        in out
    )
    assert (
        f"reports: {report_dir / 'report.json'}, {report_dir / 'report.md'}, {report_dir / 'report.html'}"
        in out
    )
    assert json.loads((report_dir / "report.json").read_text())["failures"][0]["rule"] == "min_side"


def test_validate_data_pairs(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # default reports go under the current directory
    pairs = tmp_path / "pairs"
    for path in sorted(synth_dir.glob("*.png")):
        hr = read_image(path).pixels
        write_image(pairs / "hr" / path.name, hr)
        write_image(pairs / "lr" / path.name, np.asarray(Image.fromarray(hr).resize((12, 10), Image.BICUBIC)))
    capsys.readouterr()
    assert main(["validate-data", str(pairs), "--pairs", "--min-side", "40", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("PASS: all 11 rules hold for 6 image(s) in 3 pair name(s)")
    assert (
        main(["validate-data", str(pairs), "--pairs", "--min-side", "40", "--sf", "2", "--no-progress"]) == 1
    )
    out = capsys.readouterr().out
    assert (
        "pair_width_sf [HR width = 2 x LR width]" in out
        and "pair_height_sf [HR height = 2 x LR height]" in out
    )
    assert str(pairs / "lr" / "synth_000002.png") in out


def test_validate_data_missing_folder_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-data", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert f"validate-data: {tmp_path / 'nope'}: not a folder of images" in capsys.readouterr().err
    assert main(["validate-data", str(tmp_path), "--pairs", "--no-progress"]) == 2
    assert "no hr/ folder" in capsys.readouterr().err
