"""Champion promotion and rollback with MLflow registry aliases.

Rules (every decision is written as version tags and returned):

- The challenger is the version behind the ``challenger`` alias (or an explicit version).
- With a champion: both must carry the same ``eval_md5`` (else the promotion is *refused*), and the challenger
  must beat the champion on ``metric`` by at least ``min_delta`` (direction-aware: NIQE/LPIPS are lower-better).
- With no champion: the challenger must beat the bicubic baseline measured on the same evaluation set by
  ``min_delta``.
- On promotion the replaced champion gets ``previous-champion`` and the promoted version records which version it
  replaced, so ``rollback`` can walk back more than one step.

Concurrency. MLflow aliases have no compare-and-set, so two promoters can interleave. Each promoter (1) re-reads
the champion right before writing and decides again if it moved, and (2) after writing, re-reads every version
approved on the same evaluation set and moves ``champion`` to the best of them. The last promoter to finish
therefore always sees every approval written before it and leaves the best approved model as champion.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
from typing import Any

from difiisr.registry.names import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    METRIC_TAG_PREFIX,
    TAG_DECIDED_AT,
    TAG_DECISION,
    TAG_EVAL_MD5,
    TAG_REASON,
    TAG_REPLACED,
    TAG_ROLLED_BACK,
    RegistryError,
)

log = logging.getLogger(__name__)

_MAX_RETRIES = 5


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome of one promotion attempt, with both numbers and the reason in words."""

    name: str
    challenger: str
    promoted: bool
    outcome: str  # promoted | rejected | refused | unchanged
    metric: str
    challenger_value: float | None
    reference: str  # "champion vN" or "bicubic baseline"
    reference_value: float | None
    min_delta: float
    reason: str
    champion: str | None  # the champion after the decision

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return f"{self.name} v{self.challenger}: {self.outcome.upper()} - {self.reason}"


def _client(client: Any | None) -> Any:
    if client is not None:
        return client
    from mlflow import MlflowClient

    return MlflowClient()


def _alias_version(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or (
            "alias" in str(exc).lower()
        ):
            return None
        raise


def _metric(mv: Any, metric: str, *, baseline: bool = False) -> float | None:
    key = f"{METRIC_TAG_PREFIX}{'bicubic_' if baseline else ''}{metric}"
    value = mv.tags.get(key)
    return None if value is None else float(value)


def _higher_is_better(metric: str) -> bool:
    """The metric's direction from the one table (``difiisr.evaluation.metrics.HIGHER_IS_BETTER``)."""
    from difiisr.evaluation.metrics import HIGHER_IS_BETTER

    if metric not in HIGHER_IS_BETTER:
        raise RegistryError(
            f"metric {metric!r} has no known direction; promote on one of {', '.join(sorted(HIGHER_IS_BETTER))}"
        )
    return HIGHER_IS_BETTER[metric]


def _gain(metric: str, new: float, ref: float) -> float:
    """Improvement of ``new`` over ``ref`` (positive is better) for the metric's direction."""
    return (new - ref) if _higher_is_better(metric) else (ref - new)


def _set_alias(client: Any, name: str, alias: str, version: str, attempts: int = 6) -> None:
    """Set an alias, retrying the server-side race of two writers on one alias (a UNIQUE constraint error)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except MlflowException as exc:
            race = "UNIQUE constraint" in str(exc) or "IntegrityError" in str(exc)
            if not race or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (2**attempt))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _tag_decision(client: Any, name: str, version: str, outcome: str, reason: str) -> None:
    client.set_model_version_tag(name, version, TAG_DECISION, outcome)
    client.set_model_version_tag(name, version, TAG_REASON, reason)
    client.set_model_version_tag(name, version, TAG_DECIDED_AT, _now())


def _decide(name: str, chal: Any, champ: Any | None, metric: str, min_delta: float) -> Decision:
    value = _metric(chal, metric)
    if value is None:
        return Decision(
            name, str(chal.version), False, "refused", metric, None, "-", None, min_delta,
            f"version {str(chal.version)} has no tag {METRIC_TAG_PREFIX}{metric}; evaluate and register it with "
            "'difiisr evaluate' + 'difiisr register' first",
            str(champ.version) if champ else None,
        )  # fmt: skip
    if champ is not None and str(champ.version) == str(chal.version):
        return Decision(
            name, str(chal.version), False, "unchanged", metric, value, f"champion v{str(champ.version)}", value, min_delta,
            f"version {str(chal.version)} is already the champion", str(champ.version),
        )  # fmt: skip
    if champ is None:
        base = _metric(chal, metric, baseline=True)
        if base is None:
            return Decision(
                name, str(chal.version), False, "refused", metric, value, "bicubic baseline", None, min_delta,
                f"no champion yet and version {str(chal.version)} has no bicubic baseline tag "
                f"{METRIC_TAG_PREFIX}bicubic_{metric} to compare with",
                None,
            )  # fmt: skip
        gain = _gain(metric, value, base)
        ok = gain >= min_delta
        reason = (
            f"no champion yet; {metric} {value:.4f} vs bicubic baseline {base:.4f} "
            f"(gain {gain:+.4f}, needs >= {min_delta:g})"
        )
        return Decision(
            name, str(chal.version), ok, "promoted" if ok else "rejected", metric, value, "bicubic baseline", base,
            min_delta, reason, str(chal.version) if ok else None,
        )  # fmt: skip
    chal_md5, champ_md5 = chal.tags.get(TAG_EVAL_MD5), champ.tags.get(TAG_EVAL_MD5)
    if not chal_md5 or chal_md5 != champ_md5:
        return Decision(
            name, str(chal.version), False, "refused", metric, value, f"champion v{str(champ.version)}",
            _metric(champ, metric), min_delta,
            f"evaluation sets differ (challenger eval_md5={chal_md5}, champion v{str(champ.version)} "
            f"eval_md5={champ_md5}); evaluate both on the same pairs before comparing",
            str(champ.version),
        )  # fmt: skip
    ref = _metric(champ, metric)
    if ref is None:
        return Decision(
            name, str(chal.version), False, "refused", metric, value, f"champion v{str(champ.version)}", None, min_delta,
            f"champion v{str(champ.version)} has no tag {METRIC_TAG_PREFIX}{metric}", str(champ.version),
        )  # fmt: skip
    gain = _gain(metric, value, ref)
    ok = gain >= min_delta
    reason = f"{metric} {value:.4f} vs champion v{str(champ.version)} {ref:.4f} (gain {gain:+.4f}, needs >= {min_delta:g})"
    return Decision(
        name, str(chal.version), ok, "promoted" if ok else "rejected", metric, value, f"champion v{str(champ.version)}", ref,
        min_delta, reason, str(chal.version) if ok else str(champ.version),
    )  # fmt: skip


def _converge(client: Any, name: str, metric: str, eval_md5: str) -> str | None:
    """Move ``champion`` to the best approved, not rolled-back version on ``eval_md5``; returns the champion."""
    approved = [
        mv
        for mv in client.search_model_versions(f"name='{name}'")
        if mv.tags.get(TAG_DECISION) == "promoted"
        and mv.tags.get(TAG_ROLLED_BACK) != "true"
        and mv.tags.get(TAG_EVAL_MD5) == eval_md5
        and _metric(mv, metric) is not None
    ]
    current = _alias_version(client, name, ALIAS_CHAMPION)
    if (
        current is not None
        and current.tags.get(TAG_EVAL_MD5) == eval_md5
        and _metric(current, metric) is not None
    ):
        approved.append(current)
    if not approved:
        return str(current.version) if current else None
    sign = 1.0 if _higher_is_better(metric) else -1.0
    best = max(approved, key=lambda mv: (sign * _metric(mv, metric), -int(str(mv.version))))
    if current is None or str(best.version) != str(current.version):
        log.warning(
            "concurrent promotion detected: moving %s@%s from v%s to the better v%s",
            name, ALIAS_CHAMPION, str(current.version) if current else None, str(best.version),
        )  # fmt: skip
        _set_alias(client, name, ALIAS_CHAMPION, str(best.version))
        if current is not None and str(current.version) != str(best.version):
            client.set_model_version_tag(
                name, str(current.version), TAG_DECISION, "superseded",
            )  # fmt: skip
            client.set_model_version_tag(
                name, str(current.version), TAG_REASON,
                f"superseded by concurrently promoted v{str(best.version)} with better {metric}",
            )  # fmt: skip
    return str(best.version)


def promote(
    name: str,
    *,
    metric: str = "psnr_y",
    min_delta: float = 0.05,
    version: str | int | None = None,
    client: Any | None = None,
) -> Decision:
    """Promote the challenger (or ``version``) to champion when it beats the champion/baseline by ``min_delta``."""
    _higher_is_better(metric)  # an unknown metric is refused before anything is read or written
    c = _client(client)
    if version is None:
        chal = _alias_version(c, name, ALIAS_CHALLENGER)
        if chal is None:
            raise RegistryError(
                f"model {name!r} has no '{ALIAS_CHALLENGER}' alias; register a run with 'difiisr register' "
                "or pass --version"
            )
    else:
        chal = c.get_model_version(name, str(version))
    champ = _alias_version(c, name, ALIAS_CHAMPION)
    decision = _decide(name, chal, champ, metric, min_delta)
    for _ in range(_MAX_RETRIES):
        if not decision.promoted:
            break
        # Final read before the write: if the champion moved since we decided, decide again against the new one.
        latest = _alias_version(c, name, ALIAS_CHAMPION)
        if (str(latest.version) if latest else None) == (str(champ.version) if champ else None):
            break
        champ = latest
        decision = _decide(name, chal, champ, metric, min_delta)
    _tag_decision(c, name, str(chal.version), decision.outcome, decision.reason)
    if decision.promoted:
        c.set_model_version_tag(name, str(chal.version), TAG_REPLACED, str(champ.version) if champ else "")
        if champ is not None:
            _set_alias(c, name, ALIAS_PREVIOUS, str(champ.version))
        _set_alias(c, name, ALIAS_CHAMPION, str(chal.version))
        final = _converge(c, name, metric, chal.tags.get(TAG_EVAL_MD5, ""))
        if final != str(chal.version):
            decision = dataclasses.replace(
                decision,
                champion=final,
                reason=decision.reason
                + f"; a concurrent promotion of the better v{final} now holds champion",
            )
    log.info(decision.summary())
    return decision


def rollback(name: str, *, client: Any | None = None) -> tuple[str, str]:
    """Move ``champion`` back to ``previous-champion``; returns (from_version, to_version)."""
    c = _client(client)
    current = _alias_version(c, name, ALIAS_CHAMPION)
    previous = _alias_version(c, name, ALIAS_PREVIOUS)
    if current is None:
        raise RegistryError(f"model {name!r} has no '{ALIAS_CHAMPION}' alias; there is nothing to roll back")
    if previous is None:
        raise RegistryError(
            f"model {name!r} has no '{ALIAS_PREVIOUS}' alias; v{str(current.version)} was the first champion, "
            "so there is nothing to roll back to (set the alias by hand in the MLflow UI if you must)"
        )
    _set_alias(c, name, ALIAS_CHAMPION, str(previous.version))
    c.set_model_version_tag(name, str(current.version), TAG_ROLLED_BACK, "true")
    _tag_decision(
        c, name, str(current.version), "rolled-back", f"rolled back to v{str(previous.version)} at {_now()}"
    )
    # Walk one step further back so that a second rollback is possible.
    older = previous.tags.get(TAG_REPLACED) or ""
    if older and older != str(previous.version):
        _set_alias(c, name, ALIAS_PREVIOUS, older)
    else:
        c.delete_registered_model_alias(name, ALIAS_PREVIOUS)
    log.info("%s: champion rolled back from v%s to v%s", name, str(current.version), str(previous.version))
    return str(current.version), str(previous.version)
