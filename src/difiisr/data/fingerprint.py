"""The identity of a data set folder: the md5 DVC gives it, which training, evaluation and the registry record.

Definition (``MD5_DEFINITION``): DVC's directory hash, computed by DVC's own hashing library (``dvc_data``): the
md5 of the JSON list of ``{"md5": <file md5>, "relpath": <POSIX path>}`` of every file under the folder, sorted
by path, with DVC's ignore rules applied (``.git``/``.hg``/``.dvc`` folders, and the repository's
``.dvcignore`` patterns when the folder lies inside a DVC project; outside one, difiisr's atomic-write temp files,
which difiisr's own DVC workspaces list in their ``.dvcignore``). It is the value ``dvc add`` writes into the
folder's ``.dvc`` file (and ``dvc repro`` into ``dvc.lock``) without the ``.dir`` suffix, so a model version's
``dataset_md5`` tag names exactly the DVC object that ``dvc pull`` / ``dvc.api`` fetch back. It ignores
modification times and where the folder lives, and changes with any byte or any name (data files, manifests and
reports alike: everything DVC would track).

Hashing cost: DVC's state database caches each file's md5 keyed by (inode, mtime, size), so hashing a folder a
second time only stats its files. Inside a DVC project the project's own state database is used (shared with
``dvc add``/``dvc status``); elsewhere a state database under DVC's site cache directory
(``$DVC_SITE_CACHE_DIR`` or ``/var/tmp/dvc``, sub-folder ``difiisr/state``). Where that folder cannot be
written (a read-only root file system), every file is hashed each time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from difiisr.errors import DifiisrError

if TYPE_CHECKING:
    from dvc_data.hashfile._ignore import Ignore
    from dvc_data.hashfile.state import StateBase

logger = logging.getLogger(__name__)

MD5_DEFINITION = (
    "DVC's directory md5 (the .dir hash `dvc add` records, without the suffix): md5 of the JSON list of "
    "{md5, relpath} of every file under the folder sorted by path, DVC ignore rules applied (dvc_data)"
)
STATE_SUBDIR = ("difiisr", "state")


class DatasetNotFoundError(DifiisrError, FileNotFoundError):
    """The data set folder to fingerprint does not exist (or is not a folder)."""


class DatasetHashError(DifiisrError, ValueError):
    """DVC refuses to hash the folder as it is (e.g. a ``.dvcignore`` file inside it); the message says why."""


def _dvc_project_root(folder: Path) -> Path | None:
    """The nearest folder at or above ``folder`` holding ``.dvc/config`` (a DVC project), or None."""
    for parent in (folder, *folder.parents):
        if (parent / ".dvc" / "config").is_file():
            return parent
    return None


@contextlib.contextmanager
def _state_and_ignore(folder: Path) -> Iterator[tuple[StateBase, Ignore]]:
    """DVC's hash cache (state db) and ignore filter for hashing ``folder``, as ``dvc add`` would use them."""
    from dvc_data.hashfile.state import State, StateNoop
    from dvc_objects.fs.local import LocalFileSystem

    project = _dvc_project_root(folder)
    if project is not None:
        from dvc.exceptions import DvcException
        from dvc.repo import Repo

        try:
            repo = Repo(str(project))
        except DvcException as exc:  # a broken or foreign .dvc folder: hash as if outside any project
            logger.warning("%s: not a usable DVC project (%s); hashing %s on its own", project, exc, folder)
        else:
            with repo:
                yield repo.state, repo.dvcignore
            return

    from dvc.dirs import site_cache_dir

    ignore = _filter_without_temp_files(LocalFileSystem(), folder)
    state_dir = Path(site_cache_dir(), *STATE_SUBDIR)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        state: StateBase = State(str(folder), str(state_dir), ignore)
    except OSError as exc:  # read-only root file system: hash without a cache
        logger.debug("no DVC state db at %s (%s); hashing every file", state_dir, exc)
        state = StateNoop()
    try:
        yield state, ignore
    finally:
        state.close()


def _filter_without_temp_files(fs: object, folder: Path) -> Ignore:
    """DVC's ignore filter for a folder outside any DVC project, also skipping difiisr's atomic-write temp files
    (what a difiisr DVC workspace's ``.dvcignore`` says, see ``difiisr.data.versioning``)."""
    from dvc.ignore import DvcIgnoreFilter

    from difiisr.storage.atomic import is_temp_file

    class _Filter(DvcIgnoreFilter):
        def __call__(self, root, dirs, files, ignore_subrepos=True):  # noqa: ANN001, ANN204 - DVC's signature
            dirs, files = super().__call__(root, dirs, files, ignore_subrepos=ignore_subrepos)
            return dirs, [name for name in files if not is_temp_file(name)]

    return _Filter(fs, str(folder))  # type: ignore[arg-type]


def dvc_dir_md5(folder: str | Path) -> tuple[str, int, int]:
    """(md5 without ``.dir``, file count, bytes) of ``folder`` exactly as DVC hashes it; see ``MD5_DEFINITION``."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise DatasetNotFoundError(f"{folder}: dataset folder not found; cannot compute its md5")
    from dvc_data.hashfile.build import IgnoreInCollectedDirError, build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    start = time.perf_counter()
    with _state_and_ignore(root) as (state, ignore):
        # dry_run: hash only, store nothing; the staging db lives in memory and only needs a name.
        odb = HashFileDB(fs, str(root), state=state)
        try:
            _, meta, obj = build(odb, str(root), fs, "md5", dry_run=True, ignore=ignore)
        except IgnoreInCollectedDirError as exc:
            raise DatasetHashError(f"{folder}: {exc}; DVC cannot track this folder as it is") from exc
    value = obj.hash_info.value or ""
    logger.debug(
        "dvc md5 of %s: %s (%s files, %.2f s)", root, value, meta.nfiles, time.perf_counter() - start
    )
    return value.removesuffix(".dir"), int(meta.nfiles or 0), int(meta.size or 0)


def dataset_md5(folder: str | Path) -> str:
    """Hex md5 (32 chars) of a data set folder: the DVC directory hash (``MD5_DEFINITION``).

    Raises ``DatasetNotFoundError`` (a ``FileNotFoundError``) naming a missing folder.
    """
    return dvc_dir_md5(folder)[0]


__all__ = [
    "MD5_DEFINITION",
    "DatasetHashError",
    "DatasetNotFoundError",
    "dataset_md5",
    "dvc_dir_md5",
]
