"""Process supervision: servers in their own process groups, tracked by PID files, stopped group-wise.

A server is started in a new session, so its PID is also its process group id and every worker it forks
shares that group. Stopping sends SIGTERM to the group, waits, then SIGKILLs exactly that group. A process
counts as a member only if it started no earlier than the leader, so a recycled PID is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from difiisr.stack.errors import StackError
from difiisr.storage.atomic import atomic_write_text

LOG = logging.getLogger(__name__)

# start times read twice through psutil agree to well within this (seconds)
_SAME_START = 1.0


def clean_env(drop_prefixes: Sequence[str] = ("AWS_", "MLFLOW_")) -> dict[str, str]:
    """A copy of this process's environment without the variables a server must get only from us."""
    return {k: v for k, v in os.environ.items() if not k.startswith(tuple(drop_prefixes))}


def find_executable(name: str, install_hint: str) -> str:
    """The executable ``name`` next to this Python (the venv) or on PATH; StackError with ``install_hint``."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(f"'{name}' not found next to {sys.executable} nor on PATH: {install_hint}")


def group_members(pgid: int, started_at: float) -> list[psutil.Process]:
    """Live (non-zombie) processes of process group ``pgid`` started no earlier than ``started_at`` (epoch s)."""
    members = []
    for proc in psutil.process_iter(["pid", "create_time", "status"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
        except (ProcessLookupError, PermissionError):
            continue
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["create_time"] < started_at - _SAME_START:
            continue
        members.append(proc)
    return members


def signal_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to process group ``pgid``; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def stop_group(
    name: str,
    members: Callable[[], list[psutil.Process]],
    pgid: int,
    timeout: float,
    *,
    first_signal: int = signal.SIGTERM,
    reap: Callable[[], object] = lambda: None,
) -> None:
    """``first_signal`` to group ``pgid``, wait up to ``timeout`` s for ``members()`` to be empty, then SIGKILL.

    ``reap`` is called while waiting (e.g. ``Popen.poll``) so a child of ours does not linger as a zombie.
    StackError if a member survives SIGKILL for 5 s.
    """
    if not members():
        return
    signal_group(pgid, first_signal)
    deadline = time.monotonic() + timeout
    while members() and time.monotonic() < deadline:
        reap()
        time.sleep(0.1)
    if members():
        LOG.warning("%s did not stop within %.0f s; sending SIGKILL to process group %d", name, timeout, pgid)
        signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while members() and time.monotonic() < deadline:
            reap()
            time.sleep(0.05)
    reap()
    left = members()
    if left:
        raise StackError(f"{name}: processes {[p.pid for p in left]} of group {pgid} survived SIGKILL")


# ------------------------------------------------------------------------------------ managed servers


@dataclass(frozen=True)
class PidRecord:
    """What a PID file holds: the server's PID (= its process group id), start time, argv, log and ports."""

    pid: int
    create_time: float
    argv: list[str]
    log: str
    ports: dict[str, int] = field(default_factory=dict)


class ManagedProcess:
    """A server process in its own process group, tracked by a JSON PID file (it outlives this Python)."""

    def __init__(self, name: str, pid_file: Path, log_file: Path) -> None:
        self.name = name
        self.pid_file = pid_file
        self.log_file = log_file
        self._popen: subprocess.Popen[bytes] | None = None

    def start(
        self, argv: Sequence[str], env: Mapping[str, str], ports: Mapping[str, int], cwd: Path
    ) -> PidRecord:
        """Start ``argv`` in a new session (its own process group), output to the log; write the PID file."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        try:
            create_time = psutil.Process(self._popen.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = 0.0
        record = PidRecord(self._popen.pid, create_time, list(argv), str(self.log_file), dict(ports))
        atomic_write_text(self.pid_file, json.dumps(asdict(record), indent=1))
        return record

    def record(self) -> PidRecord | None:
        """The PID file's record, or None when there is none (or it is unreadable)."""
        try:
            data = json.loads(self.pid_file.read_text(encoding="utf-8"))
            return PidRecord(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def _reap(self) -> None:
        if self._popen is not None:
            self._popen.poll()

    def leader(self) -> psutil.Process | None:
        """The live process the PID file names (same start time: never a recycled PID), else None."""
        self._reap()
        rec = self.record()
        if rec is None:
            return None
        try:
            proc = psutil.Process(rec.pid)
            if (
                abs(proc.create_time() - rec.create_time) > _SAME_START
                or proc.status() == psutil.STATUS_ZOMBIE
            ):
                return None
            return proc
        except psutil.NoSuchProcess:
            return None

    def group(self) -> list[psutil.Process]:
        """Every live (non-zombie) process of the server's process group, started no earlier than the server."""
        self._reap()
        rec = self.record()
        if rec is None:
            return []
        try:  # the PID lives on with another start time: recycled, and the group is someone else's
            if abs(psutil.Process(rec.pid).create_time() - rec.create_time) > _SAME_START:
                return []
        except psutil.NoSuchProcess:
            pass  # the leader is gone; workers it left behind still carry its group id
        return group_members(rec.pid, rec.create_time)

    def exited_with(self) -> int | None:
        """The exit code when this object started the process and it has exited, else None."""
        return None if self._popen is None else self._popen.poll()

    def stop(self, timeout: float = 15.0) -> list[int]:
        """SIGTERM the server's process group, wait up to ``timeout`` s, then SIGKILL that group; remove the PID file.

        Returns the PIDs that were running. Processes outside the recorded group are never signalled.
        """
        rec = self.record()
        if rec is None:
            return []
        pids = [p.pid for p in self.group()]
        if pids:
            LOG.info("stopping %s (process group %d: %s)", self.name, rec.pid, pids)
        try:
            stop_group(self.name, self.group, rec.pid, timeout, reap=self._reap)
        except StackError as exc:
            raise StackError(f"{exc}; see {self.log_file}") from None
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=1.0)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        return pids

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log (empty string when there is no log yet)."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def wait_until(
    proc: ManagedProcess, check: Callable[[], bool], timeout: float, what: str, interval: float = 0.25
) -> None:
    """Poll ``check()`` until it is true; StackError with the log tail on timeout or if the process exits."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        code = proc.exited_with()
        if code is not None or proc.leader() is None:
            raise StackError(
                f"{proc.name} exited (code {code}) before {what}; log {proc.log_file}:\n{proc.log_tail()}"
            )
        try:
            if check():
                return
        except Exception as exc:  # any failure means "not yet"; the last one is reported
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    raise StackError(
        f"{proc.name}: no {what} within {timeout:.0f} s (last error: {last_error or 'none'}); "
        f"log {proc.log_file}:\n{proc.log_tail()}"
    )


# ---------------------------------------------------------------------------------- foreground runs


def exit_status(returncode: int) -> int:
    """A child's ``Popen.returncode`` as a shell would report it: the code, or 128+N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_foreground(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stop_timeout: float = 30.0,
    on_tick: Callable[[], object] = lambda: None,
    tick: float = 0.5,
) -> int:
    """Run ``argv`` in its own process group until it exits; SIGINT/SIGTERM to us are forwarded to that group.

    Standard input/output are inherited. After a forwarded signal the group gets ``stop_timeout`` s before
    SIGKILL. When the leader exits, members it left behind get SIGTERM (then SIGKILL), so no process of the
    group outlives this call. ``on_tick`` runs every ``tick`` s while the leader lives (readiness checks).
    Returns the leader's exit status (``exit_status``).
    """
    proc = subprocess.Popen(list(argv), env=dict(env), start_new_session=True)
    try:
        started_at = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        started_at = time.time() - 5.0
    forwarded: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        LOG.info("received %s: stopping the server (process group %d)", signal.Signals(signum).name, proc.pid)
        forwarded.append(time.monotonic())
        signal_group(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while proc.poll() is None:
            if forwarded and time.monotonic() - forwarded[0] > stop_timeout:
                LOG.warning("server did not stop within %.0f s; sending SIGKILL", stop_timeout)
                signal_group(proc.pid, signal.SIGKILL)
                forwarded[0] = float("inf")
            if not forwarded:
                on_tick()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=tick)
        stop_group(
            "server", lambda: group_members(proc.pid, started_at), proc.pid, stop_timeout, reap=proc.poll
        )
    finally:
        if proc.poll() is None:  # an error of ours (not of the server): never leave it running
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return exit_status(proc.returncode)
