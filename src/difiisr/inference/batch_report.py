"""The run report of a batch job: one JSON line per input, and a summary JSON, written next to the outputs.

Lines are appended to a local spool file as results arrive (memory does not grow with the number of inputs)
and the file is put into the report location at the end, atomically, together with the summary; both names
carry the run id (UTC start time, shard and a random token), so runs and shards never overwrite each other.

A line: ``{"key", "input", "output", "status": "done"|"skipped"|"failed", "reason", "seconds": {"read",
"upscale", "write", "total"}, "model", "model_version", "model_digest", "settings_digest", "finished"}``
(``shape``/``bit_depth`` of the output for done items).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from difiisr.storage.store import Store

log = logging.getLogger(__name__)

Status = Literal["done", "skipped", "failed"]
STATUSES: tuple[Status, ...] = ("done", "skipped", "failed")


def utc_now() -> str:
    """ISO 8601 UTC time to the second, ``2025-01-31T02:00:00Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_id(shard: str = "0/1") -> str:
    """``YYYYmmddTHHMMSS.ffffffZ-shard-I-of-N-TOKEN``: unique per run and shard, sortable by start time (to the
    microsecond, so two runs started within one second still sort in order)."""
    index, count = shard.split("/")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-shard-{index}-of-{count}-{secrets.token_hex(3)}"


@dataclasses.dataclass
class ItemResult:
    """What happened to one input."""

    key: str
    input: str
    output: str
    status: Status
    reason: str
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    shape: tuple[int, ...] | None = None
    bit_depth: int | None = None

    def to_dict(self, identity: Mapping[str, Any]) -> dict[str, Any]:
        """The report line: this result plus the model and settings identity of the run."""
        out: dict[str, Any] = {
            "key": self.key,
            "input": self.input,
            "output": self.output,
            "status": self.status,
            "reason": self.reason,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }
        if self.shape is not None:
            out["shape"] = list(self.shape)
            out["bit_depth"] = self.bit_depth
        out.update(identity)
        out["finished"] = utc_now()
        return out


class ReportWriter:
    """Spools report lines locally; ``finish`` puts ``RUN.jsonl`` and ``RUN.summary.json`` into ``store``."""

    def __init__(self, store: Store, run: str, identity: Mapping[str, Any]) -> None:
        self.store = store
        self.run = run
        self.identity = dict(identity)
        fd, name = tempfile.mkstemp(prefix="difiisr-report-", suffix=".jsonl")
        self._spool = Path(name)
        self._fh = os.fdopen(fd, "w", encoding="utf-8")

    @property
    def lines_key(self) -> str:
        """Key of the JSONL report in the report location."""
        return f"{self.run}.jsonl"

    @property
    def summary_key(self) -> str:
        """Key of the summary JSON in the report location."""
        return f"{self.run}.summary.json"

    @property
    def lines_uri(self) -> str:
        """Where the JSONL report goes."""
        return self.store.uri(self.lines_key)

    @property
    def summary_uri(self) -> str:
        """Where the summary goes."""
        return self.store.uri(self.summary_key)

    def add(self, result: ItemResult) -> None:
        """Append one line (flushed, so a killed run's spool still shows how far it got)."""
        self._fh.write(json.dumps(result.to_dict(self.identity), ensure_ascii=False) + "\n")
        self._fh.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Put the lines and ``summary`` into the report location (each atomically) and drop the spool."""
        self._fh.close()
        try:
            with self.store.put(self.lines_key, content_type="application/x-ndjson") as path:
                shutil.copyfile(self._spool, path)
            with self.store.put(self.summary_key, content_type="application/json") as path:
                Path(path).write_text(
                    json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
                )
        finally:
            self._spool.unlink(missing_ok=True)

    def discard(self) -> None:
        """Drop the spool without writing anything."""
        if not self._fh.closed:
            self._fh.close()
        self._spool.unlink(missing_ok=True)


__all__ = ["STATUSES", "ItemResult", "ReportWriter", "Status", "run_id", "utc_now"]
