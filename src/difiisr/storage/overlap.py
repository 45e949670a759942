"""Refuse output locations that overlap an input: the guard every verb that writes images runs first.

An output folder equal to an input folder, inside one, or holding an input file directly would let a run
replace or mix with its own sources (``upscale --out`` = the LR folder with ``--overwrite`` replaced the source
images with their x4 outputs). Paths are compared after resolving symlinks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from difiisr.errors import UsageError


class OverlapError(UsageError):
    """An output location overlaps an input; the message names both and the fix."""


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_disjoint(
    output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]], *, flag: str = "--out"
) -> None:
    """Raise ``OverlapError`` when ``output`` (a folder) is an input folder, lies inside one, or directly holds
    an input file. An input folder inside ``output`` is allowed (outputs go to its top level, never into it)."""
    out = Path(output).resolve()
    for item in inputs:
        src = Path(item).resolve()
        if src.is_dir() or not src.exists():
            if _within(out, src):
                where = "is" if out == src else "lies inside"
                raise OverlapError(
                    f"{flag} {output} {where} the input folder {item}: outputs would mix with or replace the "
                    f"inputs; choose an output folder outside {item}"
                )
        elif src.parent == out:
            raise OverlapError(
                f"{flag} {output} holds the input file {item}: its output could replace it; choose an output "
                "folder that holds no input"
            )


__all__ = ["OverlapError", "check_disjoint"]
