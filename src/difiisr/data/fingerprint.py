"""Content fingerprint of a data set folder: one md5 that training, evaluation and the registry all record.

Definition (``MD5_DEFINITION``): md5 over the image files under the folder (recursive; extensions of
``difiisr.io.IMAGE_EXTENSIONS``; names starting with '.' skipped, as are report folders starting with '_'), in
sorted order of their relative POSIX paths; for each file: relative path, NUL, byte length in decimal, NUL, bytes.
It ignores modification times and where the folder lives, and changes with any byte or any name. For a pairs
folder that is exactly the images of ``hr/`` and ``lr/``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from difiisr.io import IMAGE_EXTENSIONS

MD5_DEFINITION = (
    "md5 over the image files under the folder (recursive; hidden and '_'-prefixed names skipped), in sorted order "
    "of their relative POSIX paths; for each file: relative path, NUL, byte length in decimal, NUL, file bytes"
)
_CHUNK = 1 << 20


def dataset_files(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` that the fingerprint covers, sorted by relative POSIX path."""
    root = Path(folder)
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith((".", "_")) for part in rel.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            out.append(path)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def dataset_md5(folder: str | Path) -> str:
    """Hex md5 of a data set folder per ``MD5_DEFINITION``; ``FileNotFoundError`` names a missing folder."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found; cannot compute its md5")
    digest = hashlib.md5(usedforsecurity=False)
    for path in dataset_files(root):
        digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
        digest.update(str(path.stat().st_size).encode("ascii") + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
