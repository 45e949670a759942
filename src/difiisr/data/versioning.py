"""Data versions with DVC: track data folders, push them to a remote, pin them with a git commit; fetch one back.

A data version is a git revision plus a repository-relative folder path (``DataVersion``): the commit pins the
folder's ``.dvc`` file, the ``.dvc`` file pins DVC's directory md5 (the same md5 ``difiisr.data.fingerprint``
gives, which training, evaluation and the registry record), and the remote holds the bytes. ``track`` writes a
version (``dvc add``, ``dvc push``, ``git commit``); ``materialize`` reads one back through ``dvc.api``'s
``DVCFileSystem`` into a folder, atomically, checking the md5.

The remote is a local folder (the embedded default) or S3 (``s3://BUCKET/PREFIX``; any S3-compatible store).
For S3 the endpoint comes from ``AWS_ENDPOINT_URL`` and is written only to ``.dvc/config.local`` (git-ignored);
credentials come from the standard ``AWS_*`` variables and are never written anywhere. ``track`` shells out to
the ``dvc`` and ``git`` commands of this environment, exactly as a user would.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from difiisr.data.fingerprint import dvc_dir_md5
from difiisr.errors import ExitCode, JobError
from difiisr.storage import atomic_write_text

logger = logging.getLogger(__name__)

REMOTE_NAME = "store"
#: name of the remote that ``materialize(..., remote=URL)`` configures in memory (never written to a file)
OVERRIDE_REMOTE = "difiisr-override"
#: identity used for the data commit when git has none configured (a fresh CI machine or a pod)
_GIT_IDENTITY = ("-c", "user.name=difiisr", "-c", "user.email=difiisr@localhost")


class DataVersionError(JobError, RuntimeError):
    """A DVC or git command failed; the message has the command, the workspace and the tool's own words."""


class DataVersionNotFoundError(DataVersionError, FileNotFoundError):
    """A folder, revision, path or remote object that a data version names does not exist."""

    exit_code = ExitCode.USAGE


@dataclasses.dataclass(frozen=True)
class DataVersion:
    """One version of a DVC-tracked folder.

    ``path`` is relative to the git repository root (POSIX); ``rev`` the full git commit sha that pins it (None:
    the working tree); ``md5`` DVC's directory md5 without ``.dir`` (32 hex chars, = ``dataset_md5``);
    ``n_files``/``n_bytes`` what DVC counts under it; ``remote`` the DVC remote URL holding the bytes.
    """

    path: str
    rev: str | None
    md5: str
    n_files: int
    n_bytes: int
    remote: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataVersion:
        """Inverse of ``to_dict``; a missing key raises ``KeyError`` naming it."""
        return cls(
            path=str(data["path"]),
            rev=None if data["rev"] in (None, "") else str(data["rev"]),
            md5=str(data["md5"]),
            n_files=int(data["n_files"]),
            n_bytes=int(data["n_bytes"]),
            remote=None if data.get("remote") in (None, "") else str(data["remote"]),
        )


# ---------------------------------------------------------------------------------------------- commands


def _dvc_binary() -> str:
    beside = Path(sys.executable).with_name("dvc")
    found = str(beside) if beside.is_file() else shutil.which("dvc")
    if not found:
        raise DataVersionError("the 'dvc' command is not installed; install difiisr with its dependencies")
    return found


def _run(tool: str, cmd: list[str], cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise DataVersionError(
            f"`{tool} {' '.join(cmd[1:])}` failed in {cwd} (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done


def _dvc(workspace: Path, *args: str) -> str:
    return _run("dvc", [_dvc_binary(), *args], workspace).stdout


def _git(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    git = shutil.which("git")
    if not git:
        raise DataVersionError("the 'git' command is not installed; DVC revisions need git")
    return _run("git", [git, *args], workspace, check=check)


# --------------------------------------------------------------------------------------------- workspace


def _ensure_git(root: Path) -> None:
    """Make ``root`` the top of a git work tree (``git init``), refusing a folder tracked by another repo."""
    top = _git(root, "rev-parse", "--show-toplevel", check=False)
    if top.returncode == 0:
        toplevel = Path(top.stdout.strip()).resolve()
        if toplevel == root.resolve():
            return
        if _git(toplevel, "check-ignore", "-q", str(root.resolve()), check=False).returncode != 0:
            raise DataVersionError(
                f"{root} lies inside the git repository {toplevel} without being its root; use {toplevel} as "
                "the workspace, or a folder outside it (or one it ignores), so data commits stay in one place"
            )
    _git(root, "init", "-q")


def _is_url(remote: str) -> bool:
    return "://" in remote


def init_workspace(
    workspace: str | Path, remote: str | None = None, *, endpoint_url: str | None = None
) -> Path:
    """Make ``workspace`` a git + DVC project; with ``remote`` (folder or ``s3://``) make it the default remote.

    For S3, ``endpoint_url`` (default ``$AWS_ENDPOINT_URL``) goes to ``.dvc/config.local``, which git ignores.
    """
    root = Path(workspace)
    root.mkdir(parents=True, exist_ok=True)
    _ensure_git(root)
    if not (root / ".dvc").is_dir():
        _dvc(root, "init", "-q")
    elif "no_scm" in (root / ".dvc" / "config").read_text():  # a workspace made by older difiisr (no git)
        _dvc(root, "config", "--unset", "core.no_scm")
    _ignore_temp_files(root)
    if remote is None:
        return root
    url = remote if _is_url(remote) else str(Path(remote).resolve())
    _dvc(root, "remote", "add", "--force", "--default", REMOTE_NAME, url)
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if url.startswith("s3://") and endpoint:
        _dvc(root, "remote", "modify", "--local", REMOTE_NAME, "endpointurl", endpoint)
    return root


def _ignore_temp_files(root: Path) -> None:
    """List difiisr's atomic-write temp names in ``ROOT/.dvcignore`` so DVC never tracks a write in progress."""
    from difiisr.storage.atomic import TEMP_IGNORE_PATTERN

    path = root / ".dvcignore"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if TEMP_IGNORE_PATTERN not in text.splitlines():
        note = "# difiisr atomic-write temp files (a write in progress is never data)\n"
        atomic_write_text(
            path, text + ("" if text.endswith("\n") or not text else "\n") + note + TEMP_IGNORE_PATTERN + "\n"
        )


def _default_remote_url(root: Path) -> str | None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        return str(repo.config["remote"][name]["url"]) if name else None


def _relative(root: Path, folder: str | Path) -> str:
    path = Path(folder)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(root.resolve())
        except ValueError:
            raise DataVersionNotFoundError(
                f"{folder}: not inside the workspace {root}; move it there first"
            ) from None
    return path.as_posix()


def _commit(root: Path, rels: Sequence[str], message: str) -> str:
    """Commit the ``.dvc`` files of ``rels`` (and the DVC config/ignore files) alone; returns HEAD's sha."""
    candidates = [f"{rel}.dvc" for rel in rels]
    candidates += [(Path(rel).parent / ".gitignore").as_posix() for rel in rels]
    candidates += [".dvc/config", ".dvc/.gitignore", ".dvcignore"]
    files = sorted({f for f in candidates if (root / f).is_file()})
    _git(root, "add", "--", *files)
    staged = _git(root, "diff", "--cached", "--quiet", "--", *files, check=False).returncode != 0
    has_head = _git(root, "rev-parse", "-q", "--verify", "HEAD", check=False).returncode == 0
    if staged or not has_head:
        identity = () if _git(root, "config", "user.email", check=False).stdout.strip() else _GIT_IDENTITY
        _git(root, *identity, "commit", "-q", "-m", message, "--", *files)
    return _git(root, "rev-parse", "HEAD").stdout.strip()


def track(
    workspace: str | Path,
    folders: Sequence[str | Path],
    remote: str | None = None,
    *,
    endpoint_url: str | None = None,
    message: str | None = None,
) -> list[DataVersion]:
    """Version ``folders`` (inside ``workspace``): ``dvc add``, ``dvc push`` to ``remote``, ``git commit``.

    ``remote`` is a folder or ``s3://BUCKET/PREFIX`` (None: the workspace's configured default remote). Every
    returned version carries the commit that pins it. Nothing is committed unless the push succeeded.
    """
    root = init_workspace(workspace, remote, endpoint_url=endpoint_url)
    rels = [_relative(root, f) for f in folders]
    for rel in rels:
        if not (root / rel).is_dir():
            raise DataVersionNotFoundError(f"{root / rel}: not a folder; nothing to version")
    url = _default_remote_url(root)
    if url is None:
        raise DataVersionError(
            f"{root}: no DVC remote configured; pass a remote (a folder or s3://BUCKET/PREFIX)"
        )
    _dvc(root, "add", "-q", *rels)
    _dvc(root, "push", "-q", *(f"{rel}.dvc" for rel in rels))
    rev = _commit(root, rels, message or f"data: version {', '.join(rels)}")
    versions = [dataclasses.replace(read_version(root, rel), rev=rev, remote=url) for rel in rels]
    for v in versions:
        logger.info("versioned %s at %s: md5 %s (%d files) -> %s", v.path, rev[:12], v.md5, v.n_files, url)
    return versions


def read_version(workspace: str | Path, folder: str) -> DataVersion:
    """The version of ``folder`` recorded in ``folder.dvc``; ``rev`` is HEAD when that file is committed as is."""
    root = Path(workspace)
    path = root / f"{folder}.dvc"
    if not path.is_file():
        raise DataVersionNotFoundError(f"{path}: missing; version {folder} first (difiisr version-data)")
    out = (yaml.safe_load(path.read_text()) or {}).get("outs", [{}])[0]
    clean = _git(root, "status", "--porcelain", "--", path.name, check=False)
    rev = None
    if clean.returncode == 0 and not clean.stdout.strip():
        head = _git(root, "rev-parse", "-q", "--verify", "HEAD", check=False)
        rev = head.stdout.strip() or None
    return DataVersion(
        path=Path(folder).as_posix(),
        rev=rev,
        md5=str(out.get("md5", "")).removesuffix(".dir"),
        n_files=int(out.get("nfiles", 0)),
        n_bytes=int(out.get("size", 0)),
        remote=_default_remote_url(root),
    )


def pull(workspace: str | Path, folders: Sequence[str]) -> None:
    """Restore folders from the remote (``dvc pull``) as recorded in their ``.dvc`` files."""
    _dvc(Path(workspace), "pull", "-q", *(f"{f}.dvc" for f in folders))


# ------------------------------------------------------------------------------------------- materialize


def _open_fs(repo: str, rev: str | None, remote: str | None, where: str) -> Any:
    """``dvc.api.DVCFileSystem`` of ``repo`` at ``rev``; ``remote`` (a URL) replaces its default remote."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException, NotDvcRepoError

    config = None
    if remote is not None:
        url = remote if _is_url(remote) else str(Path(remote).resolve())
        settings: dict[str, str] = {"url": url}
        if url.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
            settings["endpointurl"] = os.environ["AWS_ENDPOINT_URL"]
        config = {"core": {"remote": OVERRIDE_REMOTE}, "remote": {OVERRIDE_REMOTE: settings}}
    try:
        fs = DVCFileSystem(repo=repo, rev=rev, config=config)
        fs.repo  # noqa: B018 - opens the repository (and resolves the revision) now, inside this try
    except NotDvcRepoError as exc:
        raise DataVersionNotFoundError(f"{where}: {repo} is not a DVC repository ({exc})") from exc
    except DvcException as exc:  # unknown revision, unreadable config, unreachable git URL
        raise DataVersionNotFoundError(f"{where}: {exc}") from exc
    return fs


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    """True when ``exc`` or an exception it was raised from is a ``kind``."""
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _reason(exc: BaseException) -> str:
    """The exception's message followed by those it was raised from (storage errors are often wrapped)."""
    parts = []
    while exc is not None and len(parts) < 4:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def _remote_settings(fs: Any) -> dict[str, Any]:
    config = fs.repo.config
    name = config["core"].get("remote")
    return dict(config["remote"].get(name, {})) if name else {}


def materialize(
    repo: str | Path,
    path: str,
    rev: str | None,
    dest: str | Path,
    *,
    remote: str | None = None,
    replace: bool = False,
) -> DataVersion:
    """Write version ``rev`` of the DVC-tracked folder ``path`` of git/DVC repository ``repo`` into ``dest``.

    ``repo`` is a local path or a git URL; ``rev`` any git revision (None: the working tree); ``remote`` a URL
    (folder or ``s3://``) to read from instead of the repository's default remote. The copy lands in a temporary
    sibling of ``dest``, is checked against the recorded md5, then renamed into place; when ``dest`` already
    holds that md5 nothing is done. A ``dest`` holding other data is refused unless ``replace``.
    """
    where = f"data version {path!r} at rev {rev or '(working tree)'} of {repo}"
    fs = _open_fs(str(repo), rev, remote, where)
    try:
        return _materialize(fs, path, rev, Path(dest), replace=replace, where=where)
    finally:
        fs.close()


def _materialize(
    fs: Any, path: str, rev: str | None, target: Path, *, replace: bool, where: str
) -> DataVersion:
    """``materialize`` once the repository is open as ``fs`` (a ``DVCFileSystem``)."""
    from fsspec.callbacks import TqdmCallback

    url = _remote_settings(fs).get("url")
    where += f" (remote {url or 'none configured'})"
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise DataVersionNotFoundError(f"{where}: no such path at that revision") from exc
    md5 = str((info.get("dvc_info") or {}).get("md5") or "")  # what DVC recorded (not the working files)
    if info.get("type") != "directory" or not md5.endswith(".dir"):
        raise DataVersionNotFoundError(
            f"{where}: not a DVC-tracked folder (dvc add it, or name a stage output)"
        )
    md5 = md5.removesuffix(".dir")
    resolved = fs.repo.get_rev() if rev else None

    if target.exists():
        have, n_files, n_bytes = dvc_dir_md5(target)
        if have == md5:
            logger.info("%s already holds md5 %s; nothing to do", target, md5)
            return DataVersion(path, resolved, md5, n_files, n_bytes, url)
        if not replace:
            raise DataVersionError(
                f"{target} exists and holds md5 {have}, not {md5} ({where}); "
                "choose an empty destination or pass replace=True"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.materialize-{uuid.uuid4().hex[:8]}"
    old = target.parent / f".{target.name}.replaced-{uuid.uuid4().hex[:8]}"
    try:
        try:
            with TqdmCallback(tqdm_kwargs={"desc": f"materialise {path}", "unit": "file"}) as progress:
                fs.get(path, str(tmp), recursive=True, callback=progress)
        except Exception as exc:  # storage errors of any backend: missing objects, credentials, network
            if _caused_by(exc, FileNotFoundError):
                raise DataVersionNotFoundError(f"{where}: the remote does not hold the data ({exc})") from exc
            raise DataVersionError(f"{where}: download failed: {_reason(exc)}") from exc
        got, n_files, n_bytes = dvc_dir_md5(tmp)
        if got != md5:
            raise DataVersionError(
                f"{where}: downloaded data has md5 {got}, expected {md5}; nothing was written"
            )
        if target.exists():  # replace=True: swap, and put the old data back if the swap fails
            target.rename(old)
            try:
                tmp.rename(target)
            except OSError:
                old.rename(target)
                raise
        else:
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    logger.info("materialised %s into %s (md5 %s, %d files)", path, target, md5, n_files)
    return DataVersion(path, resolved, md5, n_files, n_bytes, url)
