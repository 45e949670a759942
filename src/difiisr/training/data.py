"""Training data: random aligned crops from a pairs folder or an HR folder, with a resumable, sharded sampler.

Reproducibility contract: the content of every sample (which image, crop offset, flip) depends only on the run
seed and the sample's *global position* ``step * global_batch + slot``, never on the number of processes or
DataLoader workers. The data position is ``(epoch, batch index)`` with ``step = epoch * steps_per_epoch + batch``,
so resuming at a step restores it exactly.

Sharding: the global batch of step ``s`` is split into ``grad_accum`` micro-steps of ``num_processes`` contiguous
micro-batches; micro-step ``m`` of rank ``r`` takes slots ``[(m*P + r)*b, (m*P + r + 1)*b)``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from difiisr.data.pairs import PairsError, PairsLayoutError, list_pairs
from difiisr.errors import DifiisrError
from difiisr.io import image_to_tensor, list_images, read_image
from difiisr.training.seeds import derive_seed

#: A sample key: (index into the dataset's items, global sample position).
SampleKey = tuple[int, int]


class TrainDataError(DifiisrError, ValueError):
    """The training data folder is missing, empty, inconsistent or too small; the message names it and the fix."""


def pair_items(folder: str | Path) -> list[tuple[Path, Path]]:
    """``(hr, lr)`` file pairs of a pairs folder (``DIR/hr/NAME`` with ``DIR/lr/NAME``), sorted by name."""
    try:
        return [(pair.hr, pair.lr) for pair in list_pairs(folder)]
    except PairsError as exc:
        hint = (
            "; or use data.mode=online with a folder of HR images"
            if isinstance(exc, PairsLayoutError)
            else ""
        )
        raise TrainDataError(f"{exc}{hint}") from None


def hr_items(folder: str | Path) -> list[tuple[Path, None]]:
    """HR images of a folder (online mode), sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise TrainDataError(f"{root}: HR folder not found; set data.train_dir to a folder of HR images")
    images = list_images(root)
    if not images:
        raise TrainDataError(f"{root}: no images found; add HR images (png, tif, jpg)")
    return [(p, None) for p in images]


def random_crop_box(height: int, width: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left ``(top, left)`` of a uniformly random ``size x size`` window inside ``height x width``."""
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


class PatchDataset(Dataset):
    """Crops of ``gt_size`` (HR) and ``gt_size/sf`` (LR, paired mode) with optional horizontal flip.

    ``dataset[(index, position)]`` -> ``{"hr": (3,gt,gt), "lr": (3,gt/sf,gt/sf), "position": (), "levels": ()}``:
    images float32 in [-1,1] (``lr`` only in paired mode), the global position and the HR's maximum value (255 or
    65535) as int64; crop offset and flip are drawn from ``derive_seed(seed, "crop", position)``.
    """

    def __init__(
        self,
        items: Sequence[tuple[Path, Path | None]],
        gt_size: int,
        sf: int = 4,
        hflip: bool = True,
        seed: int = 0,
    ) -> None:
        if gt_size % sf:
            raise TrainDataError(f"data.gt_size={gt_size} is not a multiple of the scale factor {sf}")
        self.items = list(items)
        self.gt_size = gt_size
        self.sf = sf
        self.hflip = hflip
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        index, position = key
        hr_path, lr_path = self.items[index]
        rng = np.random.default_rng(derive_seed(self.seed, "crop", position))
        loaded = read_image(hr_path)
        hr = loaded.pixels
        if lr_path is None:
            self._check_size(hr_path, hr.shape[0], hr.shape[1], self.gt_size)
            top, left = random_crop_box(hr.shape[0], hr.shape[1], self.gt_size, rng)
            crops = {"hr": hr[top : top + self.gt_size, left : left + self.gt_size]}
        else:
            lr = read_image(lr_path).pixels
            if hr.shape[:2] != (lr.shape[0] * self.sf, lr.shape[1] * self.sf):
                raise TrainDataError(
                    f"{hr_path} is {hr.shape[1]}x{hr.shape[0]} but {lr_path} is {lr.shape[1]}x{lr.shape[0]}; "
                    f"HR must be exactly {self.sf}x the LR (re-run 'difiisr degrade')"
                )
            lq = self.gt_size // self.sf
            self._check_size(lr_path, lr.shape[0], lr.shape[1], lq)
            top, left = random_crop_box(lr.shape[0], lr.shape[1], lq, rng)
            s = self.sf
            crops = {
                "hr": hr[top * s : (top + lq) * s, left * s : (left + lq) * s],
                "lr": lr[top : top + lq, left : left + lq],
            }
        flip = self.hflip and bool(rng.random() < 0.5)
        out = {
            "position": torch.tensor(position, dtype=torch.int64),
            "levels": torch.tensor(loaded.max_value, dtype=torch.int64),
        }
        for name, arr in crops.items():
            if flip:
                arr = arr[:, ::-1]
            out[name] = image_to_tensor(np.ascontiguousarray(arr))[0]
        return out

    def _check_size(self, path: Path, height: int, width: int, size: int) -> None:
        if height < size or width < size:
            raise TrainDataError(
                f"{path} is {width}x{height}, smaller than the {size}x{size} crop; "
                f"lower data.gt_size (now {self.gt_size}) or remove the image"
            )


class ResumableBatchSampler(Sampler[list[SampleKey]]):
    """Yields this rank's micro-batches of ``(index, position)`` keys for one epoch, from a settable batch index.

    Epoch ``e`` is the permutation ``derive_seed(seed, "perm", e)`` of the items, cut into ``steps_per_epoch``
    global batches (the remainder is dropped). ``set_position(epoch, batch)`` selects where iteration starts.
    """

    def __init__(
        self,
        num_items: int,
        global_batch: int,
        micro_batch: int,
        num_processes: int = 1,
        rank: int = 0,
        grad_accum: int = 1,
        seed: int = 0,
    ) -> None:
        if micro_batch * num_processes * grad_accum != global_batch:
            raise TrainDataError(
                f"data.batch_size={global_batch} is not processes ({num_processes}) x optim.grad_accum "
                f"({grad_accum}) x micro-batch ({micro_batch})"
            )
        if num_items < global_batch:
            raise TrainDataError(
                f"the training set has {num_items} images but one step needs data.batch_size={global_batch}; "
                "add images or lower data.batch_size"
            )
        self.num_items = num_items
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.num_processes = num_processes
        self.rank = rank
        self.grad_accum = grad_accum
        self.seed = seed
        self.steps_per_epoch = num_items // global_batch
        self.epoch = 0
        self.start_batch = 0

    def set_position(self, epoch: int, batch: int) -> None:
        """Start the next iteration at global batch ``batch`` of epoch ``epoch``."""
        if not 0 <= batch < self.steps_per_epoch:
            raise ValueError(f"batch={batch}: must be in 0..{self.steps_per_epoch - 1}")
        self.epoch, self.start_batch = epoch, batch

    def position_of(self, step: int) -> tuple[int, int]:
        """``(epoch, batch index)`` of global step ``step`` (0-based)."""
        return divmod(step, self.steps_per_epoch)

    def permutation(self, epoch: int) -> np.ndarray:
        """The item order of ``epoch``: a permutation of ``range(num_items)``."""
        return np.random.default_rng(derive_seed(self.seed, "perm", epoch)).permutation(self.num_items)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        perm = self.permutation(self.epoch)
        b, p, r = self.micro_batch, self.num_processes, self.rank
        for batch in range(self.start_batch, self.steps_per_epoch):
            step = self.epoch * self.steps_per_epoch + batch
            for m in range(self.grad_accum):
                slots = range((m * p + r) * b, (m * p + r + 1) * b)
                yield [
                    (int(perm[batch * self.global_batch + s]), step * self.global_batch + s) for s in slots
                ]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_batch) * self.grad_accum


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed ``random`` and ``numpy`` from the worker's torch seed.

    The torch seed is ``base_seed + worker_id`` where the DataLoader draws ``base_seed`` from its generator, which
    the trainer seeds per (run seed, rank, epoch). Samples themselves use explicit per-position seeds; this only
    makes any third-party randomness inside workers reproducible too.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class MicroBatchStream:
    """Endless ``(step, micro_index, batch)`` stream for this rank from a start step, epoch after epoch.

    A fresh DataLoader is made per epoch with its generator seeded by ``derive_seed(seed, "workers", rank, epoch)``.
    """

    def __init__(
        self,
        dataset: PatchDataset,
        sampler: ResumableBatchSampler,
        workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.workers = workers
        self.pin_memory = pin_memory

    def iterate(self, start_step: int) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
        """Micro-batches from the first micro-step of ``start_step`` onward (never ends)."""
        s = self.sampler
        epoch, batch = s.position_of(start_step)
        while True:
            s.set_position(epoch, batch)
            gen = torch.Generator()
            gen.manual_seed(derive_seed(s.seed, "workers", s.rank, epoch))
            loader = DataLoader(
                self.dataset,
                batch_sampler=s,
                num_workers=self.workers,
                worker_init_fn=seed_worker if self.workers else None,
                generator=gen,
                pin_memory=self.pin_memory,
            )
            for i, micro in enumerate(loader):
                step = epoch * s.steps_per_epoch + batch + i // s.grad_accum
                yield step, i % s.grad_accum, micro
            epoch, batch = epoch + 1, 0
