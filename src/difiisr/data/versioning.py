"""Data versions with DVC: track data folders in a DVC workspace and push them to a remote.

The remote is a local folder (embedded default) or S3 (any S3-compatible store; ``endpoint_url`` for SeaweedFS or
MinIO; credentials from the standard ``AWS_*`` variables, never from config). The workspace needs no git
(``dvc init --no-scm``) so a run folder can be versioned on its own; in a git repository the ``.dvc`` files are
what a commit pins. Every call shells out to the ``dvc`` command of this environment, exactly as a user would.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

REMOTE_NAME = "store"


class DataVersionError(RuntimeError):
    """A DVC command failed; the message has the command, the workspace and DVC's own words."""


@dataclasses.dataclass(frozen=True)
class DataVersion:
    """One tracked folder: its path relative to the workspace, DVC's directory md5, file count and size."""

    path: str
    md5: str
    nfiles: int
    size: int


def _dvc_binary() -> str:
    beside = Path(sys.executable).with_name("dvc")
    found = str(beside) if beside.is_file() else shutil.which("dvc")
    if not found:
        raise DataVersionError("the 'dvc' command is not installed; install difiisr with its dependencies")
    return found


def _dvc(workspace: Path, *args: str) -> str:
    cmd = [_dvc_binary(), *args]
    done = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True)
    if done.returncode != 0:
        raise DataVersionError(
            f"`dvc {' '.join(args)}` failed in {workspace} (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done.stdout


def init_workspace(workspace: str | Path, remote: str, *, endpoint_url: str | None = None) -> Path:
    """Make ``workspace`` a DVC project (no git needed) whose default remote is ``remote`` (folder or s3://)."""
    root = Path(workspace)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".dvc").is_dir():
        scm = ["--no-scm"] if not (root / ".git").exists() else []
        _dvc(root, "init", "-q", *scm)
    url = remote if "://" in remote else str(Path(remote).resolve())
    _dvc(root, "remote", "add", "--force", "--default", REMOTE_NAME, url)
    if endpoint_url:
        _dvc(root, "remote", "modify", REMOTE_NAME, "endpointurl", endpoint_url)
    return root


def track(workspace: str | Path, folders: Sequence[str | Path], *, push: bool = True) -> list[DataVersion]:
    """``dvc add`` each folder (relative to the workspace), ``dvc push`` them, and return their versions."""
    root = Path(workspace)
    rels = [
        str(Path(f).resolve().relative_to(root.resolve())) if Path(f).is_absolute() else str(f)
        for f in folders
    ]
    for rel in rels:
        if not (root / rel).is_dir():
            raise DataVersionError(f"{root / rel}: not a folder; nothing to version")
    _dvc(root, "add", "-q", *rels)
    if push:
        _dvc(root, "push", "-q", *(f"{rel}.dvc" for rel in rels))
    return [read_version(root, rel) for rel in rels]


def read_version(workspace: str | Path, folder: str) -> DataVersion:
    """The version DVC recorded for ``folder`` in ``folder.dvc``."""
    path = Path(workspace) / f"{folder}.dvc"
    if not path.is_file():
        raise DataVersionError(f"{path}: missing; run `difiisr` data versioning (dvc add) for {folder} first")
    out = (yaml.safe_load(path.read_text()) or {}).get("outs", [{}])[0]
    return DataVersion(folder, str(out.get("md5", "")), int(out.get("nfiles", 0)), int(out.get("size", 0)))


def pull(workspace: str | Path, folders: Sequence[str]) -> None:
    """Restore folders from the remote (``dvc pull``) as recorded in their ``.dvc`` files."""
    _dvc(Path(workspace), "pull", "-q", *(f"{f}.dvc" for f in folders))
