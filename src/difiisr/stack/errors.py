"""The errors of the local service stack."""

from __future__ import annotations

from difiisr.errors import ExitCode, JobError, UsageError


class StackError(JobError, RuntimeError):
    """A local service could not be started, reached or stopped; the message says which and how to fix it."""


class StackConfigError(StackError, UsageError):
    """A stack setting (flag or ``DIFIISR_*`` variable) is invalid; the message names it and a valid value."""

    exit_code = ExitCode.USAGE
