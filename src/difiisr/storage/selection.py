"""Which keys a job takes: a glob over the relative key, a set of extensions, and a stable shard by key hash.

``Shard(index, count)`` (``--shard i/N``, 0 <= i < N) keeps the keys whose hash falls in bucket ``i`` of ``N``:
the first 8 bytes of sha256(key) as an integer, modulo N. The hash depends on the key only (not on the listing
order, the process or the machine), so N pods given shards 0/N .. N-1/N take every key exactly once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import PurePosixPath

from difiisr.errors import UsageError

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(
                f"shard {self.index}/{self.count}: need 0 <= i < N (e.g. --shard 0/4 .. --shard 3/4 for 4 pods)"
            )

    @classmethod
    def parse(cls, text: str | Sequence[int] | None) -> Shard:
        """``"i/N"`` or ``(i, N)`` (None: the whole set, 0/1)."""
        if text is None:
            return cls()
        if isinstance(text, str):
            match = _SHARD_RE.match(text)
            if not match:
                raise UsageError(f"--shard {text!r}: expected i/N with whole numbers, e.g. 0/4")
            return cls(int(match.group(1)), int(match.group(2)))
        index, count = text
        return cls(int(index), int(count))

    def holds(self, key: str) -> bool:
        """True when ``key`` belongs to this shard."""
        return self.count == 1 or shard_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) of ``key``: sha256 of its UTF-8 bytes, first 8 bytes big-endian, modulo count."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclasses.dataclass(frozen=True)
class Selection:
    """Keys matching ``glob`` (fnmatch on the whole relative key, case-sensitive; '*' also crosses '/') with one
    of ``extensions`` (lower-case, with the dot; empty = any), in ``shard``."""

    glob: str = "*"
    extensions: tuple[str, ...] = ()
    shard: Shard = Shard()

    def matches(self, key: str) -> bool:
        """True when ``key`` is selected (glob, extension and shard)."""
        if self.extensions and PurePosixPath(key).suffix.lower() not in self.extensions:
            return False
        return fnmatch.fnmatchcase(key, self.glob) and self.shard.holds(key)

    def select(self, keys: Iterable[str]) -> Iterator[str]:
        """The selected keys of ``keys``, lazily, in their order."""
        return (key for key in keys if self.matches(key))


__all__ = ["Selection", "Shard", "shard_of"]
