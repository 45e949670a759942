"""The error base class and the process exit codes: one definition for every verb, component and job.

Every error a user can cause or meet is a ``DifiisrError`` (directly or through a module's own subclass), so a
CLI verb catches one type, prints its message (which names the file, key or flag and the fix) and exits with the
error's ``exit_code``. Nothing here imports torch or any service client.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of ``difiisr`` verbs (also shown by ``difiisr --help``)."""

    #: Everything asked for was done (or was already there).
    OK = 0
    #: The job finished, but some inputs failed or broke a data rule; the report names each one.
    FAILURES = 1
    #: Bad command line, configuration or reference (file, model, URI): nothing was started. Fix and rerun.
    USAGE = 2
    #: ``promote``: the challenger was not promoted (rejected by the gate, or refused: not comparable).
    NOT_PROMOTED = 3
    #: The job itself failed (model not loadable, storage unavailable, unexpected error); inputs are untouched.
    JOB_FAILED = 4
    #: Stopped by SIGTERM after saving its state (preemption); rerun the same command with ``--resume``.
    PREEMPTED = 75

    @property
    def meaning(self) -> str:
        """One line saying what the code means."""
        return _MEANINGS[self]


_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.FAILURES: "finished with failures: some inputs failed or broke a data rule (see the report)",
    ExitCode.USAGE: "usage error: bad flag, config key, file or model reference; nothing was started",
    ExitCode.NOT_PROMOTED: "promote: the challenger was not promoted (rejected or refused)",
    ExitCode.JOB_FAILED: "the job failed (model, storage or internal error); see the message",
    ExitCode.PREEMPTED: "stopped by SIGTERM after saving state; rerun with --resume",
}


def exit_codes_help() -> str:
    """The exit-code table as text for ``--help`` epilogs."""
    return "exit codes:\n" + "\n".join(f"  {int(code):>3}  {code.meaning}" for code in ExitCode)


class DifiisrError(Exception):
    """Base of every difiisr error; ``exit_code`` is what a CLI verb exits with when it stops on this error.

    Subclasses caused by user input (config, flags, files, references) keep ``ExitCode.USAGE``; errors of the
    running job (storage outages, internal failures) set ``ExitCode.JOB_FAILED``.
    """

    exit_code: ExitCode = ExitCode.USAGE


class UsageError(DifiisrError):
    """A command line that cannot run as given (conflicting or missing flags); the message names the flag."""

    exit_code = ExitCode.USAGE


class JobError(DifiisrError):
    """The job could not complete for a reason outside its inputs (storage, service, internal state)."""

    exit_code = ExitCode.JOB_FAILED


__all__ = ["DifiisrError", "ExitCode", "JobError", "UsageError", "exit_codes_help"]
