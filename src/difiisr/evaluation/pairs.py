"""The evaluation set: LR/HR pairs in the pairs layout (``DIR/hr/NAME`` + ``DIR/lr/NAME``) and its md5.

Pairs are matched by identical file name and evaluated in sorted name order (the pyiqa/DifIISR scripts pair by
sorted order; with identical names the two coincide).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from difiisr.data.fingerprint import dataset_md5 as fingerprint_md5


class PairsError(ValueError):
    """The pairs folder is missing, empty or its hr/ and lr/ names do not match; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class EvalPair:
    """One evaluation pair: file name shared by ``hr/`` and ``lr/``, and the two paths."""

    name: str
    hr: Path
    lr: Path


def _images(folder: Path) -> list[Path]:
    from difiisr.io import list_images

    return list_images(folder)


def _sides(pairs_dir: Path) -> tuple[list[Path], list[Path]]:
    root = Path(pairs_dir)
    for side in ("hr", "lr"):
        if not (root / side).is_dir():
            raise PairsError(
                f"{root}: no {side}/ folder; an evaluation set has DIR/hr/NAME and DIR/lr/NAME "
                "(make one with 'difiisr degrade --protocol bicubic')"
            )
    return _images(root / "hr"), _images(root / "lr")


def list_pairs(pairs_dir: str | Path) -> list[EvalPair]:
    """Pairs of ``pairs_dir`` sorted by name; raises ``PairsError`` when hr/ and lr/ names differ or none exist."""
    root = Path(pairs_dir)
    hr_files, lr_files = _sides(root)
    hr_by_name = {p.name: p for p in hr_files}
    lr_by_name = {p.name: p for p in lr_files}
    only_hr = sorted(set(hr_by_name) - set(lr_by_name))
    only_lr = sorted(set(lr_by_name) - set(hr_by_name))
    if only_hr or only_lr:
        parts = []
        if only_hr:
            parts.append(f"{len(only_hr)} in hr/ only (e.g. {', '.join(only_hr[:3])})")
        if only_lr:
            parts.append(f"{len(only_lr)} in lr/ only (e.g. {', '.join(only_lr[:3])})")
        raise PairsError(
            f"{root}: hr/ and lr/ file names differ: {'; '.join(parts)}; every HR needs an LR of the same name"
        )
    if not hr_by_name:
        raise PairsError(f"{root}: hr/ and lr/ hold no images (.png/.tif/.tiff/.jpg/.jpeg)")
    return [EvalPair(name, hr_by_name[name], lr_by_name[name]) for name in sorted(hr_by_name)]


def dataset_md5(pairs_dir: str | Path) -> str:
    """Hex md5 of the evaluation set: ``difiisr.data.fingerprint.dataset_md5`` after checking hr/ and lr/ exist."""
    root = Path(pairs_dir)
    _sides(root)
    return fingerprint_md5(root)
