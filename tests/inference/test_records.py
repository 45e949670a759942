"""Output records: written into every SR file, read back without decoding, and the one skip/redo decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from difiisr.inference.records import (
    Action,
    OutputIdentity,
    OutputState,
    StaleOutputError,
    plan_output,
    refuse_stale,
)
from difiisr.inference.settings import InferenceSettings
from difiisr.io import write_image
from difiisr.io.metadata import read_text_record, text_record_of_bytes

IDENTITY = OutputIdentity(
    "models:/m/1", "abc123", InferenceSettings(seed=3), preset="tiny", model_version="m/1"
)


@pytest.mark.parametrize(
    ("name", "pixels"),
    [
        ("a.png", np.arange(64, dtype=np.uint8).reshape(8, 8)),
        ("b.png", np.arange(192, dtype=np.uint16).reshape(8, 8, 3) * 300),
        ("c.tif", np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000),
        ("d.jpg", np.full((8, 8, 3), 100, np.uint8)),
    ],
)
def test_the_record_reads_back_from_every_format(tmp_path: Path, name: str, pixels: np.ndarray) -> None:
    record = IDENTITY.record("src.png")
    path = write_image(tmp_path / name, pixels, text=record)
    assert read_text_record(path) == record
    assert text_record_of_bytes(path.read_bytes()) == record
    assert IDENTITY.state(read_text_record(path)) is OutputState.DONE


def test_files_without_a_record_give_none(tmp_path: Path) -> None:
    plain = write_image(tmp_path / "p.png", np.zeros((4, 4), np.uint8))
    assert read_text_record(plain) is None
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert read_text_record(tmp_path / "junk.png") is None
    assert read_text_record(tmp_path / "missing.png") is None


def test_plan_skips_only_identical_outputs() -> None:
    done = IDENTITY.record("x")
    assert plan_output(IDENTITY, None, exists=False) == (Action.RUN, OutputState.MISSING)
    assert plan_output(IDENTITY, done, exists=True) == (Action.SKIP, OutputState.DONE)
    assert plan_output(IDENTITY, done, exists=True, overwrite=True) == (Action.RUN, OutputState.DONE)
    other_seed = OutputIdentity("models:/m/1", "abc123", InferenceSettings(seed=4)).record("x")
    other_model = OutputIdentity("models:/m/2", "fff000", InferenceSettings(seed=3)).record("x")
    faster = OutputIdentity("models:/m/1", "abc123", InferenceSettings(seed=3, batch=8))
    for record in (other_seed, other_model, None):
        assert plan_output(IDENTITY, record, exists=True) == (Action.RUN, OutputState.STALE)
    assert faster.state(done) is OutputState.DONE  # batch does not change pixels


def test_refusal_names_each_difference_and_overwrite() -> None:
    other = OutputIdentity("models:/m/2", "fff000", InferenceSettings(seed=4)).record("x")
    with pytest.raises(StaleOutputError) as info:
        refuse_stale(IDENTITY, [("out/a.png", other), ("out/b.png", None)])
    text = str(info.value)
    assert "2 existing output(s) were made differently" in text and "Pass --overwrite" in text
    assert "models:/m/2 (digest fff000) instead of models:/m/1 (digest abc123)" in text
    assert "seed=4 (now 3)" in text and "out/b.png: it has no difiisr record" in text
    refuse_stale(IDENTITY, [])  # nothing stale: no error
