"""The pairs-folder layout: the one module that names, lists, matches, fingerprints and records LR/HR pairs.

Layout (written by ``difiisr degrade``; read by training, evaluation and data validation)::

    DIR/hr/NAME            HR image; HR size = sf x LR size, same bit depth and channels as its LR
    DIR/lr/NAME            its LR image, under the same file name
    DIR/manifest.jsonl     one JSON object per line and pair, sorted by name:
                           {"name", "hr": "hr/NAME.png", "lr": "lr/NAME.png", "protocol", "seed", "params"}
    DIR/degradation.json   the settings of the run that wrote the pairs

Readers need only ``hr/`` and ``lr/`` (a hand-made evaluation set has no manifest). Pairs are matched by
identical file name and listed in sorted name order (the pyiqa/DifIISR scripts pair by sorted order; with
identical names the two coincide). Hidden files, which include the temp files of interrupted atomic writes, are
never listed. The writer (``difiisr.degradation.pairs``) writes PNG files named ``NAME.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Final

from difiisr.data.fingerprint import dataset_md5 as folder_md5
from difiisr.errors import DifiisrError
from difiisr.io import IMAGE_EXTENSIONS, list_images
from difiisr.storage import atomic_write_text

log = logging.getLogger(__name__)

HR_DIR: Final = "hr"
LR_DIR: Final = "lr"
MANIFEST_NAME: Final = "manifest.jsonl"
SETTINGS_NAME: Final = "degradation.json"
#: The file suffix the pairs writer uses for both sides.
PAIR_SUFFIX: Final = ".png"
_MANIFEST_KEYS: Final = ("name", "hr", "lr", "protocol", "seed", "params")


class PairsError(DifiisrError, ValueError):
    """A pairs folder cannot be read or written as asked; the message names the folder or file and the fix."""


class PairsLayoutError(PairsError, NotADirectoryError):
    """The folder is not a pairs folder (no ``hr/`` or ``lr/`` sub-folder)."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One pair: the file name shared by ``hr/`` and ``lr/``, and the two paths."""

    name: str
    hr: Path
    lr: Path


def pair_dirs(pairs_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(DIR/hr, DIR/lr)``; ``PairsLayoutError`` naming the missing sub-folder when either is absent."""
    root = Path(pairs_dir)
    hr_dir, lr_dir = root / HR_DIR, root / LR_DIR
    for side in (hr_dir, lr_dir):
        if not side.is_dir():
            raise PairsLayoutError(
                f"{root}: not a pairs folder (needs {HR_DIR}/ and {LR_DIR}/); make one with 'difiisr degrade' "
                f"(no {side.name}/ folder; a pairs folder holds {HR_DIR}/NAME and {LR_DIR}/NAME with equal names)"
            )
    return hr_dir, lr_dir


def side_images(pairs_dir: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """The image files of ``hr/`` and of ``lr/``, each sorted by name, unmatched (temp and hidden files skipped)."""
    hr_dir, lr_dir = pair_dirs(pairs_dir)
    return list_images(hr_dir), list_images(lr_dir)


def list_pairs(pairs_dir: str | os.PathLike[str]) -> list[Pair]:
    """Pairs of ``pairs_dir`` sorted by name; ``PairsError`` when hr/ and lr/ names differ or no pair exists."""
    root = Path(pairs_dir)
    hr_files, lr_files = side_images(root)
    hr_by_name = {p.name: p for p in hr_files}
    lr_by_name = {p.name: p for p in lr_files}
    only_hr = sorted(set(hr_by_name) - set(lr_by_name))
    only_lr = sorted(set(lr_by_name) - set(hr_by_name))
    if only_hr or only_lr:
        parts = []
        if only_hr:
            parts.append(f"{len(only_hr)} in {HR_DIR}/ only (e.g. {', '.join(only_hr[:3])})")
        if only_lr:
            parts.append(f"{len(only_lr)} in {LR_DIR}/ only (e.g. {', '.join(only_lr[:3])})")
        hr_dir, lr_dir = root / HR_DIR, root / LR_DIR
        first = (
            f"{lr_dir / only_hr[0]}: missing LR for {hr_by_name[only_hr[0]]}"
            if only_hr
            else f"{hr_dir / only_lr[0]}: missing HR for {lr_by_name[only_lr[0]]}"
        )
        raise PairsError(
            f"{root}: {HR_DIR}/ and {LR_DIR}/ file names differ: {'; '.join(parts)}. {first}; every pair needs "
            f"{HR_DIR}/NAME and {LR_DIR}/NAME: re-run 'difiisr degrade' on {root} or remove the unmatched files"
        )
    if not hr_by_name:
        raise PairsError(f"{root}: {HR_DIR}/ and {LR_DIR}/ hold no images ({'/'.join(IMAGE_EXTENSIONS)})")
    return [Pair(name, hr_by_name[name], lr_by_name[name]) for name in sorted(hr_by_name)]


def dataset_md5(pairs_dir: str | os.PathLike[str]) -> str:
    """Hex md5 of a pairs folder: ``difiisr.data.fingerprint.dataset_md5`` (hr/ and lr/ images) after the layout check."""
    pair_dirs(pairs_dir)
    return folder_md5(Path(pairs_dir))


# ------------------------------------------------------------------------------------------ writing side


def pair_relpaths(name: str) -> tuple[str, str]:
    """``("hr/NAME.png", "lr/NAME.png")``: where the writer puts pair ``name``, relative to the folder (POSIX)."""
    return f"{HR_DIR}/{name}{PAIR_SUFFIX}", f"{LR_DIR}/{name}{PAIR_SUFFIX}"


def pair_paths(pairs_dir: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """The HR and LR file of pair ``name`` as the writer names them."""
    root = Path(pairs_dir)
    hr, lr = pair_relpaths(name)
    return root / hr, root / lr


def manifest_entry(name: str, protocol: str, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """One manifest record: ``{"name", "hr", "lr", "protocol", "seed", "params"}`` with the writer's paths."""
    hr, lr = pair_relpaths(name)
    return {"name": name, "hr": hr, "lr": lr, "protocol": protocol, "seed": seed, "params": params}


def manifest_line(entry: dict[str, Any]) -> str:
    """The manifest text of one entry: compact JSON with sorted keys and a newline."""
    return json.dumps(entry, sort_keys=True) + "\n"


def read_manifest(pairs_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Manifest entries by pair name (empty when there is no manifest).

    A line that is not a whole entry (the torn last line of an interrupted run) is skipped with a warning, so
    that pair counts as not written.
    """
    path = Path(pairs_dir) / MANIFEST_NAME
    entries: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return entries
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not all(key in entry for key in _MANIFEST_KEYS):
                raise KeyError(line)
            entries[str(entry["name"])] = entry
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning(
                "%s:%d: unreadable manifest line (interrupted write?); that pair will be redone", path, lineno
            )
    return entries


def write_manifest(pairs_dir: str | os.PathLike[str], entries: dict[str, dict[str, Any]]) -> Path:
    """Write ``entries`` as the manifest, sorted by name, atomically; returns its path."""
    text = "".join(manifest_line(entries[name]) for name in sorted(entries))
    return atomic_write_text(Path(pairs_dir) / MANIFEST_NAME, text)


def read_settings(pairs_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The writer's settings (``degradation.json``), or None when absent; ``PairsError`` when unreadable."""
    path = Path(pairs_dir) / SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PairsError(f"{path}: unreadable ({exc}); remove the folder or write to a new one") from None
    if not isinstance(settings, dict):
        raise PairsError(f"{path}: not a JSON object; remove the folder or write to a new one")
    return settings


def write_settings(pairs_dir: str | os.PathLike[str], settings: dict[str, Any]) -> Path:
    """Write the writer's settings as ``degradation.json`` (indented, sorted keys), atomically."""
    return atomic_write_text(
        Path(pairs_dir) / SETTINGS_NAME, json.dumps(settings, indent=2, sort_keys=True) + "\n"
    )
