"""``difiisr degrade`` through the real command line in a subprocess: bad HR files are reported and skipped, output
files get the umask's mode, and temp files of a SIGKILLed writer are cleaned up and never counted."""

from __future__ import annotations

import json
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difiisr.data.pairs import dataset_md5, list_pairs
from difiisr.errors import ExitCode
from difiisr.io import write_image
from difiisr.storage import is_temp_file

DIFIISR = str(Path(sys.executable).with_name("difiisr"))
GOOD = ("g1", "g2")
# bad HR file -> what the user must be told about it
BAD_REASONS = {
    "zero.png": "empty file (0 bytes)",
    "truncated.png": "truncated or corrupt",
    "text.png": "not a recognised image file",
    "bomb.png": "decompression-bomb protection",
    "cmyk.jpg": "unsupported mode CMYK",
}


def _degrade(hr: Path, out: Path, *extra: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    cmd = [DIFIISR, "degrade", "--hr", str(hr), "--out", str(out), "--protocol", "bicubic", "--no-progress"]
    return subprocess.run(
        [*cmd, *extra], capture_output=True, text=True, timeout=300, check=False, umask=umask
    )


def _grey(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _good_hr(root: Path) -> Path:
    write_image(root / "g1.png", _grey(40, 36, 1))
    write_image(root / "g2.tif", (_grey(32, 44, 2).astype(np.uint16) * 257))
    return root


def _bomb_png(path: Path) -> None:
    """A valid small PNG whose IHDR claims 60000 x 50000 pixels (3e9, over the default limit)."""
    write_image(path, np.zeros((2, 2), np.uint8))
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">IIBBBBB", 60_000, 50_000, 8, 0, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))


def _bad_hr(root: Path) -> None:
    (root / "zero.png").write_bytes(b"")
    full = write_image(root / "truncated.png", _grey(40, 40, 3)).read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "text.png").write_text("not an image\n")
    _bomb_png(root / "bomb.png")
    Image.fromarray(np.dstack([_grey(40, 40, 4)] * 3)).convert("CMYK").save(root / "cmyk.jpg")


def _tree(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow  # several CLI subprocesses, each importing torch
def test_bad_hr_files_are_reported_and_the_rest_is_written(tmp_path: Path) -> None:
    hr = _good_hr(tmp_path / "hr")
    _bad_hr(hr)
    out = tmp_path / "pairs"
    done = _degrade(hr, out)
    assert done.returncode == ExitCode.FAILURES, done.stderr
    assert done.stdout.startswith(
        "degrade: 2 pairs written, 0 already there, 5 HR file(s) failed (bicubic, 7 HR images x 1 variant)"
    )
    assert "5 HR file(s) gave no pairs:" in done.stderr
    failure_lines = [ln.strip() for ln in done.stderr.splitlines() if ln.startswith("  ")]
    for name, reason in BAD_REASONS.items():
        assert any(ln.startswith(f"{hr / name}: ") and reason in ln for ln in failure_lines), (
            name,
            done.stderr,
        )
    # the good files' pairs and a manifest for exactly them, byte-identical to a run without the bad files
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [e["name"] for e in manifest] == list(GOOD)
    assert [p.name for p in list_pairs(out)] == ["g1.png", "g2.png"]
    clean_hr = _good_hr(tmp_path / "clean_hr")
    clean = tmp_path / "clean_pairs"
    assert _degrade(clean_hr, clean).returncode == ExitCode.OK
    assert _tree(out) == _tree(clean)

    again = _degrade(hr, out)
    assert again.returncode == ExitCode.FAILURES
    assert again.stdout.startswith("degrade: 0 pairs written, 2 already there, 5 HR file(s) failed")
    assert _tree(out) == _tree(clean)


def test_only_bad_files_write_nothing_and_usage_errors_stay_exit_2(tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    _bad_hr(hr)
    out = tmp_path / "pairs"
    done = _degrade(hr, out)
    assert done.returncode == ExitCode.FAILURES
    assert done.stdout.startswith("degrade: 0 pairs written, 0 already there, 5 HR file(s) failed")
    assert not out.exists()  # no empty manifest, settings or folders
    missing = _degrade(tmp_path / "nowhere", out)
    assert missing.returncode == ExitCode.USAGE
    assert f"{tmp_path / 'nowhere'}: HR folder not found" in missing.stderr


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_outputs_get_the_mode_of_the_umask(tmp_path: Path, mask: int, file_mode: int, dir_mode: int) -> None:
    out = tmp_path / "pairs"
    done = _degrade(_good_hr(tmp_path / "hr"), out, umask=mask)
    assert done.returncode == ExitCode.OK, done.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.relative_to(out).as_posix() for p in files} == {
        "degradation.json",
        "manifest.jsonl",
        "hr/g1.png",
        "hr/g2.png",
        "lr/g1.png",
        "lr/g2.png",
    }
    assert {p.relative_to(out).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        p.relative_to(out).as_posix(): oct(file_mode) for p in files
    }
    for folder in (out, out / "hr", out / "lr"):
        assert stat.S_IMODE(folder.stat().st_mode) == dir_mode


# A writer that goes through difiisr's atomic writes and blocks mid-write (as a degrade, report or model write
# does while it encodes or streams), until it is killed.
_BLOCKED_WRITER = """
import sys, time
from pathlib import Path
from difiisr.storage import atomic_path

targets = [Path(p) for p in sys.argv[1:]]
paths = [atomic_path(t) for t in targets]
for cm in paths:
    tmp = cm.__enter__()
    tmp.write_bytes(b"half a file")
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.slow  # several CLI subprocesses, each importing torch
def test_temp_files_of_a_killed_writer_are_removed_and_never_counted(tmp_path: Path) -> None:
    hr = _good_hr(tmp_path / "hr")
    out = tmp_path / "pairs"
    assert _degrade(hr, out).returncode == ExitCode.OK
    before, md5 = _tree(out), dataset_md5(out)
    reports = tmp_path / "reports"
    targets = [out / "hr" / "g3.png", out / "lr" / "g1.png", out / "manifest.jsonl", reports / "report.json"]
    writer = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED_WRITER, *map(str, targets)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        writer.kill()  # SIGKILL: no cleanup handler runs
        assert writer.wait(timeout=30) == -9
    finally:
        if writer.poll() is None:
            writer.kill()
    temps = [p for p in tmp_path.rglob(".*") if is_temp_file(p)]
    assert sorted((p.parent, p.suffix) for p in temps) == sorted((t.parent, t.suffix) for t in targets)
    # listings never count them, even before the clean-up
    assert [p.name for p in list_pairs(out)] == ["g1.png", "g2.png"] and dataset_md5(out) == md5

    again = _degrade(hr, out)
    assert again.returncode == ExitCode.OK, again.stderr
    assert again.stdout.startswith("degrade: 0 pairs written, 2 already there (bicubic, 2 HR images")
    assert _tree(out) == before  # the killed writes left nothing behind in the pairs folder
    checked = subprocess.run(
        [DIFIISR, "validate-data", str(out), "--pairs", "--min-side", "8", "--report-dir", str(reports)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert checked.returncode == ExitCode.OK, checked.stdout + checked.stderr
    assert checked.stdout.startswith("PASS: all 11 rules hold for 4 image(s) in 2 pair name(s)")
    assert sorted(p.name for p in reports.iterdir()) == ["report.html", "report.json", "report.md"]
    assert [p for p in tmp_path.rglob(".*") if is_temp_file(p)] == []
