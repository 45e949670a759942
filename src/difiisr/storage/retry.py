"""Bounded exponential backoff for transient storage errors.

``RetryPolicy.call(fn, is_transient, what)`` runs ``fn`` up to ``attempts`` times. After a failure that
``is_transient`` accepts it sleeps ``min(cap_s, base_s * 2**n)`` seconds with "equal jitter" (half fixed, half
random, so that many workers retrying together spread out), then tries again; any other exception is raised at
once. When the attempts are used up the last exception is raised wrapped in ``RetriesExhausted``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class RetriesExhausted(Exception):
    """``attempts`` transient failures in a row; ``last`` is the final exception, ``waited_s`` the total sleep."""

    def __init__(self, what: str, attempts: int, waited_s: float, last: BaseException) -> None:
        self.what = what
        self.attempts = attempts
        self.waited_s = waited_s
        self.last = last
        super().__init__(f"{what}: still failing after {attempts} attempts over {waited_s:.0f} s: {last}")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: ``attempts`` tries in all, delays ``base_s * 2**n`` capped at ``cap_s``.

    The defaults wait at most about 0.5+1+2+4+8+16+20+20+20 = 91.5 s over 10 attempts: long enough for an S3
    server or load balancer to restart, short enough that a dead endpoint fails the job within two minutes.
    """

    attempts: int = 10
    base_s: float = 0.5
    cap_s: float = 20.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_s < 0 or self.cap_s < self.base_s:
            raise ValueError(f"RetryPolicy needs attempts >= 1 and 0 <= base_s <= cap_s, got {self}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based), with equal jitter."""
        full = min(self.cap_s, self.base_s * 2 ** (failures - 1))
        return full / 2 + (rng or random).uniform(0, full / 2)

    def call(
        self,
        fn: Callable[[], T],
        is_transient: Callable[[BaseException], bool],
        what: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """``fn()``, retried after transient failures; ``RetriesExhausted`` after ``attempts`` of them."""
        waited = 0.0
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if attempt == self.attempts:
                    raise RetriesExhausted(what, attempt, waited, exc) from exc
                pause = self.delay(attempt)
                log.warning(
                    "%s: transient error (%s); retry %d/%d in %.1f s",
                    what,
                    exc,
                    attempt,
                    self.attempts - 1,
                    pause,
                )
                sleep(pause)
                waited += pause
        raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["RetriesExhausted", "RetryPolicy"]
