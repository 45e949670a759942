"""One interface over a local folder and an S3 prefix: list keys, fetch to a local file, write atomically.

``open_store(location)`` gives a ``LocalStore`` or an ``S3Store``. Both

- list keys (relative POSIX paths) recursively, lazily and in the same order (``list_keys``): a local folder
  walk, an S3 listing page by page, so memory does not grow with the number of objects; hidden names (starting with
  '.', which includes interrupted atomic-write temp files) are skipped;
- ``fetch(key)``: a context manager giving a local file to read (the file itself, or a download into a spool
  folder that is removed afterwards);
- ``put(key, metadata=...)``: a context manager giving a local path to write; on success the file becomes the
  object atomically (local: rename; S3: single PUT or completed multipart upload carrying ``metadata``); on
  error nothing appears;
- ``head(key)``: None when missing, else an ``ObjectInfo`` (S3 user metadata included; local files have none);
- ``tidy(key)``: remove what interrupted writers left near ``key`` (stale local temp files, once per folder).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Protocol

from difiisr.storage.atomic import atomic_path, is_temp_file, remove_stale_temp_files
from difiisr.storage.s3 import ObjectInfo, ObjectNotFoundError, S3Client
from difiisr.storage.uri import Location, LocationError, parse_location, relative_key

#: Incomplete multipart uploads older than this (s) belong to killed writers and are aborted by ``tidy_all``.
STALE_UPLOAD_S = 3600.0


class Store(Protocol):
    """Objects below one ``Location``, addressed by relative keys."""

    location: Location

    def uri(self, key: str) -> str:
        """URI or path of ``key``."""
        ...

    def check(self, *, write: bool) -> None:
        """Raise a ``DifiisrError`` now if the location cannot be read (``write=False``) or written."""
        ...

    def list_keys(self) -> Iterator[str]:
        """Every (non-hidden) key below the location, recursively, lazily."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """Size and metadata of ``key``, or None when it does not exist."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The file behind ``key`` for local stores, else None."""
        ...

    def fetch(self, key: str) -> contextlib.AbstractContextManager[Path]:
        """A readable local file holding ``key`` for the duration of the ``with`` block."""
        ...

    def put(
        self, key: str, *, metadata: Mapping[str, str] | None = None, content_type: str = ...
    ) -> contextlib.AbstractContextManager[Path]:
        """A local path to write; on a clean exit it becomes ``key`` atomically (with ``metadata`` on S3)."""
        ...

    def tidy(self, key: str) -> None:
        """Remove leftovers of interrupted writes next to ``key``."""
        ...

    def tidy_all(self) -> None:
        """Remove leftovers of interrupted writes below the location where that is cheap."""
        ...

    def close(self) -> None:
        """Release spool space and connections."""
        ...


def _hidden(name: str) -> bool:
    return name.startswith(".") or is_temp_file(name)


class LocalStore:
    """A local folder; keys are paths relative to it."""

    def __init__(self, location: Location) -> None:
        if location.is_s3 or location.path is None:
            raise LocationError(f"{location}: not a local folder")
        self.location = location
        self.root: Path = location.path
        self._tidied: set[Path] = set()
        self._lock = threading.Lock()

    def uri(self, key: str) -> str:
        """The absolute path of ``key``."""
        return str(self.root / key)

    def check(self, *, write: bool) -> None:
        """Inputs must be an existing folder; an output folder may not exist yet but must not be a file."""
        if write:
            if self.root.exists() and not self.root.is_dir():
                raise LocationError(f"{self.root}: exists and is not a folder; choose an output folder")
            return
        if not self.root.is_dir():
            raise LocationError(f"{self.root}: no such folder; pass an existing folder or s3://BUCKET/PREFIX")

    def list_keys(self) -> Iterator[str]:
        """Files below the folder in the order S3 lists the same keys (code-point order of the whole key);
        hidden files and folders skipped, symlinked folders not followed. One folder's entries per level of depth
        are held at a time (to sort them)."""
        yield from self._walk(self.root, "")

    def _walk(self, folder: Path, rel: str) -> Iterator[str]:
        try:
            with os.scandir(folder) as listing:
                entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in listing]
        except (FileNotFoundError, NotADirectoryError):
            return
        for name, entry in sorted(entries, key=lambda pair: pair[0]):
            if _hidden(entry.name):
                continue
            if name.endswith("/"):
                yield from self._walk(Path(entry.path), rel + name)
            elif entry.is_file():
                yield rel + name

    def local_path(self, key: str) -> Path:
        """``root/key`` (the key is checked to stay below the root)."""
        return self.root / relative_key(key)

    def head(self, key: str) -> ObjectInfo | None:
        """Size of the file ``key`` (no metadata: local files carry their record inside), or None."""
        try:
            st = self.local_path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectInfo(key, st.st_size)

    @contextlib.contextmanager
    def fetch(self, key: str) -> Iterator[Path]:
        """The file itself (no copy)."""
        path = self.local_path(key)
        if not path.exists():
            raise ObjectNotFoundError(f"{path}: no such file")
        yield path

    @contextlib.contextmanager
    def put(
        self,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> Iterator[Path]:
        """A temp file next to ``root/key``, renamed over it on success (``metadata``/``content_type`` unused:
        image files carry their record inside)."""
        target = self.local_path(key)
        self.tidy(key)
        with atomic_path(target) as tmp:
            yield tmp

    def tidy(self, key: str) -> None:
        """Remove stale atomic-write temp files in the folder of ``key`` (once per folder per store)."""
        self._tidy_folder(self.local_path(key).parent)

    def _tidy_folder(self, folder: Path) -> None:
        with self._lock:
            if folder in self._tidied:
                return
            self._tidied.add(folder)
        remove_stale_temp_files(folder)

    def tidy_all(self) -> None:
        """Stale temp files in the top folder (subfolders are tidied as their keys are visited)."""
        self._tidy_folder(self.root)

    def close(self) -> None:
        """Nothing to release."""


class S3Store:
    """Objects under ``s3://bucket/prefix/``; keys are relative to the prefix."""

    def __init__(self, location: Location, client: S3Client | None = None) -> None:
        if not location.is_s3:
            raise LocationError(f"{location}: not an s3:// location")
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        self.client = client or S3Client()
        self._spool: tempfile.TemporaryDirectory[str] | None = None
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def uri(self, key: str) -> str:
        """``s3://bucket/prefix/key``."""
        return self.location.child_uri(key)

    def check(self, *, write: bool) -> None:
        """The bucket exists and these credentials may list it (``StorageAccessError`` otherwise)."""
        self.client.check_bucket(self.bucket, self.prefix, what="write" if write else "read")

    def list_keys(self) -> Iterator[str]:
        """Keys below the prefix, in S3 key order; folder markers and hidden names skipped."""
        n = len(self.prefix)
        for obj in self.client.list(self.bucket, self.prefix):
            key = obj.key[n:]
            if not key or key.endswith("/") or any(_hidden(p) for p in PurePosixPath(key).parts):
                continue
            yield key

    def local_path(self, key: str) -> None:
        """S3 objects have no local file."""
        return None

    def head(self, key: str) -> ObjectInfo | None:
        """Size and decoded user metadata, or None."""
        return self.client.head(self.bucket, self.prefix + relative_key(key))

    def _spool_path(self, key: str) -> Path:
        with self._lock:
            if self._spool is None:
                self._spool = tempfile.TemporaryDirectory(prefix="difiisr-s3-spool-")
            index = next(self._counter)
        return Path(self._spool.name) / f"{index:08d}{PurePosixPath(key).suffix}"

    @contextlib.contextmanager
    def fetch(self, key: str) -> Iterator[Path]:
        """Download into the spool folder (same suffix as the key); the copy is deleted afterwards."""
        path = self._spool_path(key)
        try:
            self.client.download(self.bucket, self.prefix + relative_key(key), path)
            yield path
        finally:
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def put(
        self,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> Iterator[Path]:
        """A spool file to write; uploaded to ``key`` with ``metadata`` when the block exits cleanly."""
        path = self._spool_path(key)
        try:
            yield path
            self.client.upload(
                self.bucket,
                self.prefix + relative_key(key),
                path,
                metadata=metadata,
                content_type=content_type,
            )
        finally:
            path.unlink(missing_ok=True)

    def tidy(self, key: str) -> None:
        """Nothing per key: an interrupted upload is never visible (``tidy_all`` aborts old ones)."""

    def tidy_all(self) -> None:
        """Abort incomplete multipart uploads under the prefix older than ``STALE_UPLOAD_S``."""
        self.client.abort_stale_uploads(self.bucket, self.prefix, STALE_UPLOAD_S)

    def close(self) -> None:
        """Remove the spool folder."""
        with self._lock:
            spool, self._spool = self._spool, None
        if spool is not None:
            spool.cleanup()


def open_store(location: Location | str, client: S3Client | None = None) -> Store:
    """The store for ``location`` (a ``Location`` or a URI/path); S3 stores share ``client`` when given."""
    loc = location if isinstance(location, Location) else parse_location(location)
    return S3Store(loc, client) if loc.is_s3 else LocalStore(loc)


__all__ = ["STALE_UPLOAD_S", "LocalStore", "S3Store", "Store", "open_store"]
