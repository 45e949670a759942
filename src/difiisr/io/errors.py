"""The one exception type every image read failure becomes."""

from __future__ import annotations

import os
from pathlib import Path

from difiisr.errors import DifiisrError


class ImageReadError(DifiisrError):
    """An image file cannot be used; ``str()`` names the file and the reason.

    Attributes: ``path`` (the file, a ``Path``) and ``reason`` (a short human sentence, with the fix
    where there is one).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[ImageReadError], tuple[Path, str]]:
        """Pickle support (multiprocessing workers re-raise it in the parent)."""
        return (type(self), (self.path, self.reason))
