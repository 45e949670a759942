"""Training data: aligned crops, flips, the resumable sharded sampler, worker-independent content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difiisr.training.data import (
    MicroBatchStream,
    PatchDataset,
    ResumableBatchSampler,
    TrainDataError,
    hr_items,
    pair_items,
)


def _nearest_pairs(root: Path, n: int, size: int) -> Path:
    """Pairs whose LR is HR[::4, ::4]: an aligned crop must satisfy lr_crop == hr_crop[::4, ::4] exactly."""
    rng = np.random.default_rng(0)
    for side in ("hr", "lr"):
        (root / side).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        hr = rng.integers(0, 256, (size, size), dtype=np.uint8)
        Image.fromarray(hr).save(root / "hr" / f"{k}.png")
        Image.fromarray(np.ascontiguousarray(hr[::4, ::4])).save(root / "lr" / f"{k}.png")
    return root


def _to_u8(t: torch.Tensor) -> np.ndarray:
    return np.rint((t[0].numpy() + 1) * 127.5).astype(np.uint8)


def test_paired_crops_are_aligned_and_flip_is_seeded(tmp_path: Path) -> None:
    items = pair_items(_nearest_pairs(tmp_path, 2, 48))
    ds = PatchDataset(items, gt_size=16, sf=4, hflip=True, seed=3)
    flips = set()
    for position in range(12):
        sample = ds[(position % 2, position)]
        assert sample["hr"].shape == (3, 16, 16) and sample["lr"].shape == (3, 4, 4)
        assert int(sample["position"]) == position
        hr, lr = _to_u8(sample["hr"]), _to_u8(sample["lr"])
        # a horizontal flip keeps the alignment only if both were flipped: HR[::4] of a flipped crop
        # starts at column 3 of the flipped crop.
        if np.array_equal(lr, hr[::4, ::4]):
            flips.add(False)
        else:
            assert np.array_equal(lr, hr[::4, 3::4])
            flips.add(True)
        again = ds[(position % 2, position)]
        assert torch.equal(again["hr"], sample["hr"])
    assert flips == {False, True}


def test_online_mode_crops_hr_only(tmp_path: Path) -> None:
    root = _nearest_pairs(tmp_path, 1, 32) / "hr"
    ds = PatchDataset(hr_items(root), gt_size=16, seed=0)
    sample = ds[(0, 5)]
    assert set(sample) == {"hr", "position", "levels"} and int(sample["levels"]) == 255
    assert sample["hr"].dtype == torch.float32 and -1 <= sample["hr"].min() <= sample["hr"].max() <= 1


def test_too_small_image_names_file_and_fix(tmp_path: Path) -> None:
    items = pair_items(_nearest_pairs(tmp_path, 1, 32))
    ds = PatchDataset(items, gt_size=64)
    with pytest.raises(
        TrainDataError, match=r"lr/0\.png is 8x8, smaller than the 16x16 crop; lower data.gt_size"
    ):
        ds[(0, 0)]


def test_missing_lr_and_not_a_pairs_folder(tmp_path: Path) -> None:
    root = _nearest_pairs(tmp_path, 2, 32)
    (root / "lr" / "1.png").unlink()
    with pytest.raises(TrainDataError, match=r"lr/1\.png: missing LR for .*re-run 'difiisr degrade'"):
        pair_items(root)
    with pytest.raises(TrainDataError, match="not a pairs folder"):
        pair_items(tmp_path / "nowhere")


def test_ranks_and_accumulation_partition_the_global_batch() -> None:
    single = ResumableBatchSampler(10, global_batch=4, micro_batch=4, seed=1)
    assert single.steps_per_epoch == 2
    per_step = list(single)
    assert len(per_step) == 2
    split = [ResumableBatchSampler(10, 4, 1, num_processes=2, rank=r, grad_accum=2, seed=1) for r in (0, 1)]
    lists = [list(s) for s in split]
    for step in range(2):
        # micro-step m of rank r holds slot m*2 + r
        keys = [lists[r][step * 2 + m][0] for m in range(2) for r in range(2)]
        assert keys == per_step[step]
    positions = [p for batch in per_step for _, p in batch]
    assert positions == list(range(8))
    assert sorted(i for batch in per_step for i, _ in batch) == sorted(single.permutation(0)[:8].tolist())


def test_set_position_resumes_mid_epoch_and_epochs_differ() -> None:
    s = ResumableBatchSampler(12, 4, 2, num_processes=2, rank=1, seed=5)
    full = list(s)
    s.set_position(0, 2)
    assert list(s) == full[2:]
    s.set_position(1, 0)
    second = list(s)
    assert [p for b in second for _, p in b] == [p + 12 for b in full for _, p in b]
    assert not np.array_equal(s.permutation(0), s.permutation(1))
    assert s.position_of(7) == (2, 1)


def test_batch_size_checks() -> None:
    with pytest.raises(
        TrainDataError, match=r"data.batch_size=4 is not processes \(2\) x optim.grad_accum \(1\)"
    ):
        ResumableBatchSampler(10, 4, 1, num_processes=2)
    with pytest.raises(TrainDataError, match="has 3 images but one step needs data.batch_size=4"):
        ResumableBatchSampler(3, 4, 4)


def test_stream_content_does_not_depend_on_workers(tmp_path: Path) -> None:
    items = pair_items(_nearest_pairs(tmp_path, 4, 32))
    ds = PatchDataset(items, gt_size=16, seed=2)

    def take(workers: int, start: int) -> list[torch.Tensor]:
        sampler = ResumableBatchSampler(4, 2, 2, seed=2)
        out = []
        for step, micro_index, batch in MicroBatchStream(ds, sampler, workers=workers).iterate(start):
            assert micro_index == 0
            out.append((step, batch["hr"]))
            if len(out) == 3:
                return out
        raise AssertionError("stream ended")

    base = take(0, 0)
    assert [s for s, _ in base] == [0, 1, 2]
    for (s0, a), (s1, b) in zip(base, take(2, 0), strict=True):
        assert s0 == s1 and torch.equal(a, b)
    resumed = take(0, 1)
    assert [s for s, _ in resumed] == [1, 2, 3]
    assert torch.equal(resumed[0][1], base[1][1]) and torch.equal(resumed[1][1], base[2][1])
