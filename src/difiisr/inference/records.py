"""Output records: what every SR output says about how it was made, and when an existing output counts as done.

Each output carries a record (PNG text chunks, TIFF description, or S3 object metadata): the model reference, the
model's weights digest (``Upscaler.digest``), the registry version when there is one, the source file, the
difiisr version and every ``InferenceSettings`` field plus the settings digest. A rerun treats an existing output
as done only when its record has the same model digest and the same settings digest; anything else (another
model, sampler, seed, tiling or precision, or a file with no record) is *stale*. ``plan_output`` is the one
decision both ``difiisr upscale`` and the batch job use; they differ only in the policy for stale outputs
(the CLI refuses without ``--overwrite``, the batch job redoes).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from difiisr import __version__
from difiisr.errors import DifiisrError
from difiisr.inference.settings import RECORD_PREFIX, InferenceSettings

KEY_MODEL = "model"
KEY_MODEL_DIGEST = "model.digest"
KEY_MODEL_VERSION = "model.version"
KEY_PRESET = "preset"
KEY_SOURCE = "source"
KEY_DIFIISR_VERSION = "difiisr.version"
KEY_SETTINGS_DIGEST = f"{RECORD_PREFIX}digest"


class StaleOutputError(DifiisrError, FileExistsError):
    """Existing outputs were made with another model or other settings; the message names them and --overwrite."""


class OutputState(enum.Enum):
    """What is at an output location before a run."""

    MISSING = "missing"
    DONE = "done"  # same model digest and settings digest: skip
    STALE = "stale"  # something else is there: redo or refuse


class Action(enum.Enum):
    """What to do for one input."""

    RUN = "run"
    SKIP = "skip"


@dataclasses.dataclass(frozen=True)
class OutputIdentity:
    """Which model and settings make an output: compared against the record of an existing output."""

    model: str
    model_digest: str
    settings: InferenceSettings
    preset: str = ""
    model_version: str | None = None

    def record(self, source: str) -> dict[str, str]:
        """The record written with the output of ``source`` (string keys and values)."""
        out = {
            KEY_SOURCE: source,
            KEY_MODEL: self.model,
            KEY_MODEL_DIGEST: self.model_digest,
            KEY_MODEL_VERSION: self.model_version or "",
            KEY_PRESET: self.preset,
            KEY_DIFIISR_VERSION: __version__,
        }
        out.update(self.settings.to_record())
        return out

    def state(self, record: Mapping[str, str] | None, *, exists: bool = True) -> OutputState:
        """Classify an existing output by its ``record`` (None: no record could be read)."""
        if not exists:
            return OutputState.MISSING
        if (
            record is not None
            and record.get(KEY_MODEL_DIGEST) == self.model_digest
            and record.get(KEY_SETTINGS_DIGEST) == self.settings.digest()
        ):
            return OutputState.DONE
        return OutputState.STALE

    def difference(self, record: Mapping[str, str] | None) -> str:
        """In words, how an existing output's ``record`` differs from this identity."""
        if not record or KEY_MODEL_DIGEST not in record:
            return "it has no difiisr record (not made by difiisr upscale, or written by an older version)"
        parts = []
        if record.get(KEY_MODEL_DIGEST) != self.model_digest:
            parts.append(
                f"model {record.get(KEY_MODEL, '?')} (digest {record.get(KEY_MODEL_DIGEST)}) instead of "
                f"{self.model} (digest {self.model_digest})"
            )
        if record.get(KEY_SETTINGS_DIGEST) != self.settings.digest():
            try:
                theirs = InferenceSettings.from_record(record)
                changed = [
                    f"{k}={v!r} (now {getattr(self.settings, k)!r})"
                    for k, v in dataclasses.asdict(theirs).items()
                    if k != "batch" and v != getattr(self.settings, k)
                ]
            except DifiisrError:
                changed = []
            parts.append("settings " + (", ".join(changed) if changed else "differ"))
        return "; ".join(parts) or "it differs"


def plan_output(
    identity: OutputIdentity,
    record: Mapping[str, str] | None,
    *,
    exists: bool,
    overwrite: bool = False,
) -> tuple[Action, OutputState]:
    """Run or skip one input given what is at its output location (``overwrite`` redoes even done outputs)."""
    state = identity.state(record, exists=exists)
    if overwrite or state is not OutputState.DONE:
        return Action.RUN, state
    return Action.SKIP, state


def refuse_stale(identity: OutputIdentity, stale: list[tuple[str, Mapping[str, str] | None]]) -> None:
    """Raise ``StaleOutputError`` listing (up to three) stale outputs and how each differs, naming --overwrite."""
    if not stale:
        return
    shown = "; ".join(f"{name}: {identity.difference(record)}" for name, record in stale[:3])
    more = f" (and {len(stale) - 3} more)" if len(stale) > 3 else ""
    raise StaleOutputError(
        f"{len(stale)} existing output(s) were made differently: {shown}{more}. Pass --overwrite to replace "
        "them, or choose another --out folder"
    )


__all__ = [
    "KEY_MODEL",
    "KEY_MODEL_DIGEST",
    "KEY_MODEL_VERSION",
    "KEY_SETTINGS_DIGEST",
    "KEY_SOURCE",
    "Action",
    "OutputIdentity",
    "OutputState",
    "StaleOutputError",
    "plan_output",
    "refuse_stale",
]
