"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A reader never sees a half-written file, and an interrupted write leaves the previous file (or none).

Permissions. The temporary file is created with ``os.open(..., O_CREAT | O_EXCL, 0o666)``, so the kernel applies
the process umask (or the folder's default ACL) exactly as a plain ``open(path, "w")`` of a new file would: umask
022 gives 0644, 002 gives 0664. Nothing reads or changes the process umask, so there is no race with other threads.

Temp names. ``.{stem}.tmp-{pid}-{host}-{token}{suffix}``: hidden (every listing of inputs skips names starting
with '.'), the target's suffix last (writers that choose a format by extension behave as for the target), and the
writer's PID plus an 8-hex tag of its host name, so that ``remove_stale_temp_files`` can tell the temp file of a
killed writer from one still being written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

#: A temp file older than this (seconds since its last write) is stale even when its owner cannot be checked
#: (another host) or looks alive; no single file write of this project takes that long.
STALE_AFTER_S: Final = 24 * 3600.0
#: Clock slack (s) when comparing a process start time with a file time (``/proc/stat`` btime is whole seconds).
_CLOCK_SLACK_S: Final = 2.0

#: The temp names as a gitignore-style pattern: ``.dvcignore`` of difiisr's DVC workspaces lists it, so DVC (and
#: therefore the data identity, ``difiisr.data.fingerprint``) never tracks a write in progress.
TEMP_IGNORE_PATTERN: Final = ".*.tmp-*"

_TEMP_RE: Final = re.compile(
    r"^\.(?P<stem>.*)\.tmp-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-(?P<token>[0-9a-z]{8})(?P<suffix>\.[^.]*)?$"
)
# mkstemp names of earlier versions (".{stem}.XXXXXXXX.tmp{suffix}"): no owner recorded, removed by age only.
_LEGACY_TEMP_RE: Final = re.compile(r"^\..+\.[0-9a-z_]{8}\.tmp(\.[^.]*)?$")
_TOKEN_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


def _host_tag() -> str:
    """8 hex digits naming this host (its PID namespace, in a container)."""
    return hashlib.sha1(socket.gethostname().encode("utf-8"), usedforsecurity=False).hexdigest()[:8]


def _create_temp(target: Path) -> Path:
    """Create an empty, exclusively new temp file next to ``target`` with the umask-given mode; return it."""
    prefix = f".{target.stem}.tmp-{os.getpid()}-{_host_tag()}-"
    for _ in range(100):
        token = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(8))
        tmp = target.with_name(f"{prefix}{token}{target.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{target.parent}: could not create a unique temp file for {target.name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error delete it.

    The temp file already exists (empty, mode from the umask) when yielded; a writer opening it by name for
    writing keeps that mode. The temporary name keeps the target's suffix so that writers choosing a format by
    extension (PIL, tifffile, cv2) behave as they would for the target.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


# ------------------------------------------------------------------------------------------ stale temp files


def is_temp_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name is an atomic-write temp name (this version's or an earlier one's)."""
    name = Path(path).name
    return bool(_TEMP_RE.match(name) or _LEGACY_TEMP_RE.match(name))


def _process_start_time(pid: int) -> float | None:
    """Start time (Unix seconds) of process ``pid`` from ``/proc``, or None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def _owner_alive(pid: int, file_mtime: float) -> bool:
    """Whether the process that wrote a temp file last modified at ``file_mtime`` may still be running here."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    except OSError:
        return False
    started = _process_start_time(pid)
    # a process that started after the file was last written is not its writer: the PID was reused (a restarted
    # container runs its entry point under the same small PID)
    return started is None or started <= file_mtime + _CLOCK_SLACK_S


def _is_stale(path: Path, max_age_s: float, now: float) -> bool:
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False
    if now - mtime > max_age_s:
        return True
    match = _TEMP_RE.match(path.name)
    if match is None or match["host"] != _host_tag():
        return False  # a legacy name or another host's writer: only age tells
    return not _owner_alive(int(match["pid"]), mtime)


def remove_stale_temp_files(
    folder: str | os.PathLike[str], *, max_age_s: float = STALE_AFTER_S
) -> list[Path]:
    """Delete the atomic-write temp files directly in ``folder`` whose writer is gone; return what was removed.

    A temp file is stale when its writer ran on this host and that process no longer exists (or its PID now
    belongs to a process started after the file's last write), or when its last write is older than
    ``max_age_s`` seconds (the only test for another host's files and for earlier versions' names). Temp files of
    live writers and every other file are left alone. A missing folder has nothing to clean.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    now = time.time()
    removed = []
    for path in sorted(root.iterdir()):
        if not is_temp_file(path) or not path.is_file() or not _is_stale(path, max_age_s, now):
            continue
        with contextlib.suppress(FileNotFoundError):  # another cleaner got there first
            path.unlink()
            removed.append(path)
    if removed:
        log.info("%s: removed %d stale temp file(s) of interrupted writes", root, len(removed))
    return removed
