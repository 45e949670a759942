"""difiisr.data.pairs, the one owner of the pairs-folder layout: every consumer reads a folder the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import difiisr.degradation
import difiisr.evaluation
from difiisr.data.fingerprint import dataset_md5 as folder_md5
from difiisr.data.pairs import (
    MANIFEST_NAME,
    SETTINGS_NAME,
    Pair,
    PairsError,
    PairsLayoutError,
    dataset_md5,
    list_pairs,
    pair_paths,
    read_manifest,
    read_settings,
    side_images,
)
from difiisr.data.validation import ValidationConfig, validate_pairs
from difiisr.degradation import degrade_folder
from difiisr.errors import DifiisrError
from difiisr.io import list_images, write_image
from difiisr.storage import atomic_path, is_temp_file
from difiisr.training.data import TrainDataError, pair_items


def _pairs(root: Path, hr_names: tuple[str, ...], lr_names: tuple[str, ...]) -> Path:
    rng = np.random.default_rng(0)
    for name in hr_names:
        write_image(root / "hr" / name, rng.integers(0, 256, (32, 32), dtype=np.uint8))
    for name in lr_names:
        write_image(root / "lr" / name, rng.integers(0, 256, (8, 8), dtype=np.uint8))
    return root


def test_one_error_class_for_every_consumer() -> None:
    assert issubclass(PairsError, DifiisrError) and issubclass(PairsError, ValueError)
    assert issubclass(PairsLayoutError, PairsError) and issubclass(PairsLayoutError, NotADirectoryError)
    assert difiisr.degradation.PairsError is PairsError and difiisr.evaluation.PairsError is PairsError
    assert difiisr.evaluation.list_pairs is list_pairs and difiisr.evaluation.dataset_md5 is dataset_md5


def test_training_evaluation_and_validation_agree_on_an_unmatched_lr(tmp_path: Path) -> None:
    """A stray lr/c.png: training used to ignore it while evaluation refused the folder; now all refuse it."""
    root = _pairs(tmp_path / "pairs", ("a.png", "b.png"), ("a.png", "b.png", "c.png"))
    message = r"1 in lr/ only \(e\.g\. c\.png\)\. .*hr/c\.png: missing HR for .*lr/c\.png"
    with pytest.raises(PairsError, match=message):
        list_pairs(root)
    with pytest.raises(TrainDataError, match=message):
        pair_items(root)
    result = validate_pairs(root, ValidationConfig(min_side=8))
    assert [f.rule for f in result.failures] == ["pairs_matched"]
    assert result.failures[0].files == (str(root / "lr" / "c.png"),)


def test_pairs_are_sorted_and_the_layout_is_checked(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "pairs", ("b.png", "a.png"), ("a.png", "b.png"))
    assert list_pairs(root) == [
        Pair("a.png", root / "hr" / "a.png", root / "lr" / "a.png"),
        Pair("b.png", root / "hr" / "b.png", root / "lr" / "b.png"),
    ]
    assert pair_items(root) == [(p.hr, p.lr) for p in list_pairs(root)]
    (tmp_path / "only_hr" / "hr").mkdir(parents=True)
    with pytest.raises(PairsLayoutError, match=r"not a pairs folder \(needs hr/ and lr/\).*no lr/ folder"):
        list_pairs(tmp_path / "only_hr")
    with pytest.raises(PairsLayoutError, match="no hr/ folder"):
        dataset_md5(tmp_path / "nowhere")
    with pytest.raises(TrainDataError, match="not a pairs folder.*or use data.mode=online"):
        pair_items(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    (empty / "hr").mkdir(parents=True)
    (empty / "lr").mkdir()
    with pytest.raises(PairsError, match="hr/ and lr/ hold no images"):
        list_pairs(empty)


def test_temp_files_are_never_listed_or_fingerprinted(tmp_path: Path) -> None:
    """Listings skip temp files; in a difiisr DVC workspace (its .dvcignore lists the temp names) neither DVC nor
    the data identity counts them."""
    from difiisr.data.versioning import init_workspace

    init_workspace(tmp_path)
    root = _pairs(tmp_path / "pairs", ("a.png",), ("a.png",))
    md5 = dataset_md5(root)
    with atomic_path(root / "hr" / "b.png") as hr_tmp, atomic_path(root / "lr" / "b.png") as lr_tmp:
        hr_tmp.write_bytes((root / "hr" / "a.png").read_bytes())  # a complete-looking image under a temp name
        lr_tmp.write_bytes((root / "lr" / "a.png").read_bytes())
        assert is_temp_file(hr_tmp) and hr_tmp.suffix == ".png"
        assert [p.name for p in list_pairs(root)] == ["a.png"]
        assert side_images(root) == ([root / "hr" / "a.png"], [root / "lr" / "a.png"])
        assert list_images(root / "hr") == [root / "hr" / "a.png"]
        assert dataset_md5(root) == md5 == folder_md5(root)
    assert [p.name for p in list_pairs(root)] == ["a.png", "b.png"]


def test_the_writer_and_the_readers_share_the_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for k, name in enumerate(("x.png", "y.png")):
        write_image(src / name, np.random.default_rng(k).integers(0, 256, (24, 20), dtype=np.uint8))
    out = tmp_path / "pairs"
    degrade_folder(src, out, protocol="bicubic", crop=None, progress=False)
    entries = read_manifest(out)
    assert sorted(entries) == ["x", "y"]
    for name, entry in entries.items():
        assert (out / entry["hr"], out / entry["lr"]) == pair_paths(out, name)
    assert [p.name for p in list_pairs(out)] == ["x.png", "y.png"]
    assert read_settings(out) == json.loads((out / SETTINGS_NAME).read_text())
    assert read_settings(out)["protocol"] == "bicubic"
    # a torn last manifest line (interrupted append) counts as not written
    with open(out / MANIFEST_NAME, "a", encoding="utf-8") as fh:
        fh.write('{"name": "z", "hr"')
    assert sorted(read_manifest(out)) == ["x", "y"]
    (out / SETTINGS_NAME).write_text("{not json")
    with pytest.raises(PairsError, match=r"degradation\.json: unreadable"):
        read_settings(out)
