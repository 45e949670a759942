"""Storage locations: a local folder or an S3 prefix, parsed from a URI, and the overlap guard between them.

Accepted forms: ``s3://BUCKET`` or ``s3://BUCKET/PREFIX`` (an S3 "folder": the prefix is normalised to end with
``/``), ``file:///abs/path`` and plain paths (a local folder). Keys below a location are relative POSIX paths
(``day1/frame_0001.png``), the same for both kinds, so a job can read from one kind and write to the other.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlparse

from difiisr.errors import UsageError
from difiisr.storage.overlap import OverlapError

# S3 bucket names: 3-63 of [a-z0-9.-], starting and ending with a letter or digit (AWS rules; stores such as
# SeaweedFS and MinIO follow them).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class LocationError(UsageError, ValueError):
    """A storage URI that cannot be used; the message names it and shows the accepted forms."""


@dataclasses.dataclass(frozen=True)
class Location:
    """A local folder (``scheme="file"``, ``path`` absolute) or an S3 prefix (``bucket``, ``prefix`` '' or
    ending with '/')."""

    scheme: Literal["file", "s3"]
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""

    @property
    def is_s3(self) -> bool:
        """True for ``s3://`` locations."""
        return self.scheme == "s3"

    @property
    def uri(self) -> str:
        """The location as a URI (``s3://bucket/prefix/``) or an absolute path."""
        if self.is_s3:
            return f"s3://{self.bucket}/{self.prefix}"
        return str(self.path)

    def child_uri(self, key: str) -> str:
        """URI (or path) of the object ``key`` (relative POSIX path) below this location."""
        if self.is_s3:
            return f"s3://{self.bucket}/{self.prefix}{key}"
        assert self.path is not None
        return str(self.path / key)

    def contains(self, other: Location) -> bool:
        """True when ``other`` is this location or lies inside it (same kind only)."""
        if self.scheme != other.scheme:
            return False
        if self.is_s3:
            return self.bucket == other.bucket and other.prefix.startswith(self.prefix)
        assert self.path is not None and other.path is not None
        return other.path == self.path or self.path in other.path.parents

    def __str__(self) -> str:
        return self.uri


def parse_location(text: str | os.PathLike[str]) -> Location:
    """``s3://bucket[/prefix]``, ``file:///path`` or a path -> ``Location`` (local paths resolved, symlinks too).

    Raises ``LocationError`` for other schemes, a bad bucket name, or ``..`` / empty segments in an S3 prefix.
    """
    raw = os.fspath(text)
    if "://" not in raw:
        return Location("file", path=Path(raw).expanduser().resolve())
    parsed = urlparse(raw)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise LocationError(
                f"{raw}: file URIs name a local path (file:///abs/path), not host {parsed.netloc}"
            )
        return Location("file", path=Path(unquote(parsed.path)).resolve())
    if parsed.scheme != "s3":
        raise LocationError(
            f"{raw}: unsupported scheme {parsed.scheme!r}; use s3://BUCKET/PREFIX or a local folder path"
        )
    bucket = parsed.netloc
    if not _BUCKET_RE.match(bucket):
        raise LocationError(
            f"{raw}: {bucket!r} is not a valid S3 bucket name (3-63 characters of a-z, 0-9, '.', '-')"
        )
    if parsed.query or parsed.fragment:
        raise LocationError(f"{raw}: an S3 location takes no ?query or #fragment")
    prefix = raw.split("://", 1)[1][len(bucket) :].lstrip("/")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts) or "//" in prefix.rstrip("/"):
        raise LocationError(f"{raw}: the S3 prefix must not contain '.', '..' or empty segments")
    return Location("s3", bucket=bucket, prefix="".join(f"{p}/" for p in parts))


def check_separate(output: Location, inputs: Iterable[Location], *, flag: str = "--output") -> None:
    """Raise ``OverlapError`` when ``output`` equals an input location, lies inside one, or holds one.

    Listings are recursive, so both directions are refused: outputs written inside the input would be read as
    inputs by the next run, and an input inside the output could be replaced by an output of the same key.
    """
    for source in inputs:
        if source.contains(output) or output.contains(source):
            where = "is" if source == output else ("lies inside" if source.contains(output) else "holds")
            raise OverlapError(
                f"{flag} {output} {where} the input {source}: outputs would mix with or replace the inputs; "
                "choose an output location that neither contains nor lies inside the input"
            )


def relative_key(key: str) -> str:
    """Check a relative object key (POSIX, no leading '/', no '.'/'..' segments) and return it unchanged."""
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or any(p in (".", "..") for p in parts):
        raise LocationError(f"{key!r}: not a relative key (a/b.png without '.', '..' or a leading '/')")
    return key


__all__ = ["Location", "LocationError", "check_separate", "parse_location", "relative_key"]
