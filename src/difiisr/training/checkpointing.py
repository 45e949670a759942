"""Resumable training state: checkpoint discovery and pruning, the step/data-position record, SIGTERM handling.

Checkpoints are folders ``OUT_DIR/checkpoints/checkpoint_N`` (numbered upwards, pruned to ``keep_checkpoints``;
their files are described in ``difiisr.training.checkpoint_format``). A folder counts as complete only once the
main process has written ``difiisr_state.json`` into it after every other file, so a run killed mid-save resumes
from the previous complete one. A marker that exists but is not a JSON mapping was altered: it is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from difiisr.errors import DifiisrError, ExitCode
from difiisr.storage import atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "difiisr_state.json"
#: Exit code of ``difiisr train`` after a SIGTERM: state saved, rerun with ``--resume``.
EXIT_PREEMPTED = ExitCode.PREEMPTED

_NUMBER = re.compile(r"^checkpoint_(\d+)$")


class ResumeError(DifiisrError, RuntimeError):
    """A run cannot start or resume as asked; the message names the folder and what to do."""


def checkpoint_number(path: str | Path) -> int:
    """``N`` of a ``checkpoint_N`` folder."""
    match = _NUMBER.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a checkpoint folder name (checkpoint_N)")
    return int(match.group(1))


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """All ``checkpoint_N`` folders of a run (complete or not), by increasing ``N``."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NUMBER.match(p.name)]
    return sorted(found, key=checkpoint_number)


def read_marker(checkpoint: str | Path) -> dict[str, Any] | None:
    """The ``difiisr_state.json`` record of a checkpoint folder, or None when the folder is incomplete.

    Raises ``ResumeError`` naming the file when it exists but is not a JSON mapping (it is written atomically, so
    only tampering or disk corruption makes it so).
    """
    path = Path(checkpoint) / COMPLETE_MARKER
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(
            f"{path}: the completion marker is not readable JSON ({type(exc).__name__}); the checkpoint was altered "
            "or damaged: delete this checkpoint folder to resume from the previous one"
        ) from None
    if not isinstance(record, dict):
        raise ResumeError(f"{path}: the completion marker is a {type(record).__name__}, not a JSON mapping")
    return record


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    for path in reversed(list_checkpoints(out_dir)):
        if read_marker(path) is not None:
            return path
        log.warning("%s is incomplete (no %s); skipping it", path, COMPLETE_MARKER)
    return None


def next_checkpoint_number(out_dir: str | Path) -> int:
    """One past the highest existing ``checkpoint_N`` (complete or not): the number of the next save."""
    existing = list_checkpoints(out_dir)
    return checkpoint_number(existing[-1]) + 1 if existing else 0


def write_marker(checkpoint: str | Path, record: dict[str, Any]) -> Path:
    """Mark a checkpoint folder complete with ``record`` (step, data position, ...)."""
    return atomic_write_text(Path(checkpoint) / COMPLETE_MARKER, json.dumps(record, indent=2) + "\n")


def checkpoint_folder(out_dir: str | Path, number: int) -> Path:
    """``OUT_DIR/checkpoints/checkpoint_N``."""
    return Path(out_dir) / CHECKPOINTS_DIR / f"checkpoint_{number}"


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (and any incomplete folder older than those).

    The marker goes first, so a deletion cut short leaves an incomplete folder, never a damaged complete one.
    Returns the deleted folders.
    """
    folders = list_checkpoints(out_dir)
    complete = [p for p in folders if (p / COMPLETE_MARKER).is_file()]
    if len(complete) <= keep:
        return []
    oldest_kept = checkpoint_number(complete[-keep]) if keep > 0 else float("inf")
    removed = [p for p in folders if checkpoint_number(p) < oldest_kept]
    for path in removed:
        (path / COMPLETE_MARKER).unlink(missing_ok=True)
        shutil.rmtree(path)
        log.info("removed old checkpoint %s (keep_checkpoints=%d)", path, keep)
    return removed


class TrainingState:
    """Counters saved with every checkpoint: optimizer steps done, data position, samples seen."""

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0
        self.batch = 0
        self.samples = 0

    def state_dict(self) -> dict[str, int]:
        """``{"step", "epoch", "batch", "samples"}``: the next step starts at batch ``batch`` of ``epoch``."""
        return {"step": self.step, "epoch": self.epoch, "batch": self.batch, "samples": self.samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters."""
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch = int(state["batch"])
        self.samples = int(state["samples"])


class StopFlag:
    """Set by SIGTERM (Kubernetes preemption) while installed; the loop checks it at step boundaries."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning(
            "received %s: saving a checkpoint at the end of this step, then exiting", self.signal_name
        )

    @contextlib.contextmanager
    def installed(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[StopFlag]:
        """Install the handler for ``signals`` (main thread only) and restore the previous handlers on exit."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGTERM will not trigger a checkpoint")
            yield self
            return
        previous = {s: signal.getsignal(s) for s in signals}
        for s in signals:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
