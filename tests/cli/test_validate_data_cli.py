"""``difiisr validate-data`` through the real command line: failure reasons on screen, reports never inside the
input folder, exit codes from ``ExitCode``."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

from difiisr.errors import ExitCode
from difiisr.io import write_image

DIFIISR = str(Path(sys.executable).with_name("difiisr"))


def _validate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DIFIISR, "validate-data", *args, "--no-progress"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _images(folder: Path) -> Path:
    """Two good 8-bit 40x40 frames, an empty file and a PNG whose header claims 60000 x 50000 pixels."""
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        write_image(folder / name, rng.integers(0, 256, (40, 40), dtype=np.uint8))
    (folder / "empty.png").write_bytes(b"")
    bomb = bytearray(write_image(folder / "bomb.png", np.zeros((2, 2), np.uint8)).read_bytes())
    ihdr = struct.pack(">IIBBBBB", 60_000, 50_000, 8, 0, 0, 0, 0)
    bomb[16:33] = ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (folder / "bomb.png").write_bytes(bytes(bomb))
    return folder


def test_reasons_on_screen_and_reports_outside_the_input(tmp_path: Path) -> None:
    data = _images(tmp_path / "data" / "frames")
    before = _listing(data)
    work = tmp_path / "work"
    work.mkdir()
    done = _validate(str(data), "--min-side", "32", cwd=work)
    assert done.returncode == ExitCode.FAILURES, done.stderr
    assert done.stdout.startswith(f"FAIL: 1 of 7 rules broken for 4 image(s) in {data}")
    assert f"    {data / 'empty.png'}: empty file (0 bytes)" in done.stdout
    assert f"    {data / 'bomb.png'}: 60000x50000 = 3,000,000,000 pixels" in done.stdout
    assert "(decompression-bomb protection)" in done.stdout
    # the default report folder: reports/validate-data/<DIR path> under the current directory
    default = work / "reports" / "validate-data" / data.resolve().relative_to("/")
    assert _listing(default) == ["report.html", "report.json", "report.md"]
    assert (
        f"reports: {Path('reports/validate-data') / data.resolve().relative_to('/') / 'report.json'}"
        in done.stdout
    )
    assert _listing(data) == before  # nothing written into the input folder

    # run from the parent: the default is reports/validate-data/frames, relative to it
    rel = _validate("frames", "--min-side", "32", cwd=data.parent)
    assert rel.returncode == ExitCode.FAILURES
    assert _listing(data.parent / "reports" / "validate-data" / "frames") == [
        "report.html",
        "report.json",
        "report.md",
    ]


def test_report_folder_inside_the_input_and_missing_folders_are_usage_errors(tmp_path: Path) -> None:
    data = _images(tmp_path / "frames")
    before = _listing(data)
    inside = _validate(str(data), "--report-dir", str(data / "qc"), cwd=tmp_path)
    assert inside.returncode == ExitCode.USAGE
    assert f"report folder {data / 'qc'} is inside the validated folder {data}" in inside.stderr
    assert "pass a --report-dir outside it" in inside.stderr
    from_inside = _validate(".", cwd=data)  # the default would land in frames/reports/...
    assert from_inside.returncode == ExitCode.USAGE
    assert "run from another directory or pass --report-dir outside it" in from_inside.stderr
    assert _listing(data) == before

    missing = _validate(str(tmp_path / "nope"), cwd=tmp_path)
    assert missing.returncode == ExitCode.USAGE
    assert f"{tmp_path / 'nope'}: not a folder of images" in missing.stderr
    no_pairs = _validate(str(data), "--pairs", cwd=tmp_path)
    assert no_pairs.returncode == ExitCode.USAGE
    assert "not a pairs folder (needs hr/ and lr/)" in no_pairs.stderr and "no hr/ folder" in no_pairs.stderr
    assert not (tmp_path / "reports").exists()
