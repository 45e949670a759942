"""difiisr.data.validation: the table, the Great Expectations suite (clean passes, each corruption names its
file), pairs checks, and the reports. Small images keep the whole file to a few seconds after GX's import."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from difiisr.data.synthetic import generate_dataset
from difiisr.data.validation import (
    TABLE_COLUMNS,
    Failure,
    ValidationConfig,
    build_image_table,
    validate_images,
    validate_pairs,
    write_reports,
)
from difiisr.io import read_image, write_image

CFG = ValidationConfig(min_side=32)  # the clean sets are 64x48: every image passes min_side 32
N = 4


@pytest.fixture(scope="module")
def clean_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean folder of N synthetic 8-bit 64x48 frames (built once per module; tests copy it)."""
    root = tmp_path_factory.mktemp("clean") / "images"
    generate_dataset(root, N, (64, 48), 8, seed=4, progress=False)
    return root


@pytest.fixture(scope="module")
def clean_pairs(clean_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hr/NAME (64x48) and lr/NAME (16x12, PIL bicubic) pairs from the clean images."""
    root = tmp_path_factory.mktemp("clean") / "pairs"
    for path in sorted(clean_images.glob("*.png")):
        hr = read_image(path).pixels
        write_image(root / "hr" / path.name, hr)
        write_image(root / "lr" / path.name, np.asarray(Image.fromarray(hr).resize((16, 12), Image.BICUBIC)))
    return root


@pytest.fixture
def images(clean_images: Path, tmp_path: Path) -> Path:
    """A private copy of the clean image folder to corrupt."""
    return Path(shutil.copytree(clean_images, tmp_path / "images"))


@pytest.fixture
def pairs(clean_pairs: Path, tmp_path: Path) -> Path:
    """A private copy of the clean pairs folder to corrupt."""
    return Path(shutil.copytree(clean_pairs, tmp_path / "pairs"))


def test_build_image_table_values(tmp_path: Path) -> None:
    grey = np.array([[0, 255], [255, 0]], np.uint8)
    rgb16 = np.zeros((3, 5, 3), np.uint16)
    rgb16[..., 0] = 65535
    write_image(tmp_path / "grey.png", grey)
    write_image(tmp_path / "rgb16.tif", rgb16)
    (tmp_path / "broken.jpg").write_bytes(b"")
    table = build_image_table([tmp_path / "grey.png", tmp_path / "rgb16.tif", tmp_path / "broken.jpg"])
    assert tuple(table.columns) == TABLE_COLUMNS
    g, c, b = (table.iloc[i] for i in range(3))
    assert (g.readable, g.width, g.height, g.channels, g.bit_depth, g.is_grey) == (True, 2, 2, 1, 8, True)
    assert g["mean"] == pytest.approx(127.5) and g["std"] == pytest.approx(127.5)
    assert (c.width, c.height, c.channels, c.bit_depth, c.is_grey) == (5, 3, 3, 16, False)
    assert c["mean"] == pytest.approx(65535 / 3)
    assert g.sha256 == hashlib.sha256((tmp_path / "grey.png").read_bytes()).hexdigest()
    assert not b.readable and b.error == "empty file (0 bytes); re-export or re-download it"
    assert b.sha256 == hashlib.sha256(b"").hexdigest() and b.width is pd.NA


def test_clean_synthetic_set_passes(clean_images: Path) -> None:
    result = validate_images(clean_images, CFG)
    assert result.success and result.failures == []
    assert [r.rule for r in result.rules] == [
        "not_empty",
        "readable",
        "min_side",
        "channels",
        "bit_depth",
        "unique_sha256",
        "not_constant",
    ]
    assert len(result.table) == N and result.table["readable"].all()
    assert result.summary().startswith(f"PASS: all 7 rules hold for {N} image(s)")


def test_default_min_side_is_the_training_crop(clean_images: Path) -> None:
    result = validate_images(clean_images)  # 64x48 images against the default 256
    assert not result.success
    assert result.failures == [Failure("min_side", tuple(str(p) for p in sorted(clean_images.glob("*.png"))))]


def _corrupt_file(folder: Path) -> str:
    victim = folder / "synth_000001.png"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    return str(victim)


def _duplicate(folder: Path) -> tuple[str, ...]:
    copy = folder / "copy_of_2.png"
    shutil.copy(folder / "synth_000002.png", copy)
    return (str(copy), str(folder / "synth_000002.png"))


def _too_small(folder: Path) -> str:
    path = folder / "tiny.png"
    write_image(path, (np.arange(31 * 40) % 251).astype(np.uint8).reshape(31, 40))
    return str(path)


def _constant(folder: Path) -> str:
    path = folder / "flat.png"
    write_image(path, np.full((40, 40), 9, np.uint8))
    return str(path)


@pytest.mark.parametrize(
    ("corruption", "rule"),
    [
        (_corrupt_file, "readable"),
        (_duplicate, "unique_sha256"),
        (_too_small, "min_side"),
        (_constant, "not_constant"),
    ],
)
def test_each_corruption_fails_its_rule_and_names_the_file(images: Path, corruption, rule: str) -> None:
    expected = corruption(images)
    files = expected if isinstance(expected, tuple) else (expected,)
    result = validate_images(images, CFG)
    assert not result.success
    assert result.failures == [Failure(rule, files)]
    summary = result.summary()
    assert summary.startswith("FAIL: 1 of 7 rules broken")
    assert all(f in summary for f in files)


def test_channel_and_bit_depth_sets(images: Path) -> None:
    colour = images / "colour16.png"
    write_image(colour, (np.arange(40 * 40 * 3) * 37 % 65536).astype(np.uint16).reshape(40, 40, 3))
    result = validate_images(
        images, ValidationConfig(min_side=32, allowed_channels=(1,), allowed_bit_depths=(8,))
    )
    assert result.failures == [Failure("channels", (str(colour),)), Failure("bit_depth", (str(colour),))]


def test_empty_folder_fails(tmp_path: Path) -> None:
    result = validate_images(tmp_path, CFG)
    assert result.failures == [Failure("not_empty", (str(tmp_path),))]


def test_report_folder_is_not_scanned(images: Path) -> None:
    (images / "_validation").mkdir()
    write_image(images / "_validation" / "x.png", np.full((4, 4), 1, np.uint8))  # would fail several rules
    assert validate_images(images, CFG).success


def test_reports_are_written_with_the_failing_files(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = _corrupt_file(images)
    result = validate_images(images, CFG)
    monkeypatch.chdir(tmp_path)  # `images` is tmp_path/images
    written = write_reports(result)
    out = Path("reports") / "validate-data" / "images"  # default: reports/validate-data/<DIR from cwd>
    assert not (images / "_validation").exists()
    assert written == [out / "report.json", out / "report.md", out / "report.html"]
    assert sorted(p.name for p in out.iterdir()) == [
        "report.html",
        "report.json",
        "report.md",
    ]  # no temp files
    report = json.loads((out / "report.json").read_text())
    assert report["success"] is False and report["mode"] == "images"
    assert report["failures"] == [{"rule": "readable", "files": [bad]}]
    assert report["counts"]["images"] == N and report["counts"]["readable"] == N - 1
    assert report["config"]["min_side"] == 32
    rows = {r["path"]: r for r in report["images"]}
    assert rows[bad]["readable"] is False and rows[bad]["width"] is None and "truncated" in rows[bad]["error"]
    md = (out / "report.md").read_text()
    assert md.startswith("# Data validation: FAIL") and f"- `{bad}`" in md
    assert "| readable | every file decodes as an image | FAIL | 1 |" in md
    page = (out / "report.html").read_text()
    assert "<h2>readable</h2>" in page and bad in page and "FAIL" in page
    custom = write_reports(result, images.parent / "elsewhere")
    assert all(p.parent == images.parent / "elsewhere" and p.is_file() for p in custom)


# ------------------------------------------------------------------------------------------------ pairs


def test_clean_pairs_pass(clean_pairs: Path) -> None:
    result = validate_pairs(clean_pairs, CFG)
    assert result.success, result.summary()
    assert result.mode == "pairs" and result.pairs is not None
    assert list(result.pairs["matched"]) == [True] * N
    assert list(result.pairs["sf_lr_width"]) == [64] * N
    assert sorted(set(result.table["role"])) == ["hr", "lr"] and len(result.table) == 2 * N
    assert {r.rule for r in result.rules} >= {
        "pairs_matched",
        "pair_width_sf",
        "pair_height_sf",
        "pair_bit_depth",
    }


def test_pair_size_mismatch_names_both_files(pairs: Path) -> None:
    lr = pairs / "lr" / "synth_000003.png"
    hr = read_image(pairs / "hr" / "synth_000003.png").pixels
    write_image(lr, np.asarray(Image.fromarray(hr).resize((17, 12), Image.BICUBIC)))  # width off by one
    result = validate_pairs(pairs, CFG)
    assert result.failures == [Failure("pair_width_sf", (str(pairs / "hr" / "synth_000003.png"), str(lr)))]


def test_pair_height_mismatch(pairs: Path) -> None:
    lr = pairs / "lr" / "synth_000000.png"
    write_image(lr, (np.arange(13 * 16) % 200).astype(np.uint8).reshape(13, 16))
    result = validate_pairs(pairs, CFG)
    assert result.failures == [Failure("pair_height_sf", (str(pairs / "hr" / "synth_000000.png"), str(lr)))]


def test_unmatched_pairs_in_both_directions(pairs: Path) -> None:
    (pairs / "lr" / "synth_000001.png").unlink()
    extra_lr = pairs / "lr" / "orphan.png"
    write_image(extra_lr, (np.arange(12 * 16) % 200).astype(np.uint8).reshape(12, 16))
    result = validate_pairs(pairs, CFG)
    assert result.failures == [
        Failure("pairs_matched", (str(extra_lr), str(pairs / "hr" / "synth_000001.png")))
    ]


def test_pair_bit_depth_mismatch(pairs: Path) -> None:
    lr = pairs / "lr" / "synth_000002.png"
    write_image(lr, read_image(lr).pixels.astype(np.uint16) * 257)
    result = validate_pairs(pairs, CFG)
    assert result.failures == [Failure("pair_bit_depth", (str(pairs / "hr" / "synth_000002.png"), str(lr)))]


def test_pairs_corrupt_hr_and_small_hr(pairs: Path) -> None:
    bad = pairs / "hr" / "synth_000000.png"
    bad.write_text("not a png")
    small_hr, small_lr = pairs / "hr" / "small.png", pairs / "lr" / "small.png"
    grid = (np.arange(28 * 40) % 97).astype(np.uint8).reshape(28, 40)
    write_image(small_hr, grid)
    write_image(small_lr, np.asarray(Image.fromarray(grid).resize((10, 7), Image.BICUBIC)))
    result = validate_pairs(pairs, CFG)
    assert result.failures == [Failure("readable", (str(bad),)), Failure("min_side", (str(small_hr),))]


def test_pairs_folder_must_have_hr_and_lr(tmp_path: Path) -> None:
    (tmp_path / "hr").mkdir()
    with pytest.raises(NotADirectoryError, match=r"no lr/ folder; a pairs folder holds hr/NAME and lr/NAME"):
        validate_pairs(tmp_path, CFG)


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="ValidationConfig.sf must be >= 1, got 0"):
        ValidationConfig(sf=0)


def test_variants_sharing_an_hr_pass_but_a_duplicated_pair_fails(pairs: Path) -> None:
    hr_src, lr_src = pairs / "hr" / "synth_000002.png", pairs / "lr" / "synth_000002.png"
    # A second LR variant of the same HR (what `difiisr degrade --variants 2` writes): the HR repeats by design.
    shutil.copy(hr_src, pairs / "hr" / "synth_000002_v01.png")
    lr = read_image(lr_src).pixels.copy()
    lr[0, 0] = (int(lr[0, 0]) + 1) % 256
    write_image(pairs / "lr" / "synth_000002_v01.png", lr)
    assert validate_pairs(pairs, CFG).success
    # The same pair twice (HR and LR identical) is a duplicate sample.
    shutil.copy(hr_src, pairs / "hr" / "dup.png")
    shutil.copy(lr_src, pairs / "lr" / "dup.png")
    result = validate_pairs(pairs, CFG)
    assert result.failures == [
        Failure(
            "unique_pairs",
            (str(pairs / "hr" / "dup.png"), str(pairs / "lr" / "dup.png"), str(hr_src), str(lr_src)),
        )
    ]
