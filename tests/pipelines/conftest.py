"""Fixtures of the pipeline tests: the compiled pipeline specs, read as a user's `kfp dsl compile` writes them.

components/ and pipelines/ live at the repository root and are not installed with the package, exactly as
when a user runs `python pipelines/train_eval.py`; the root goes on sys.path so tests import them by name.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Values a careless pipeline could leak into its compiled package; set in the environment while compiling.
LEAK_SENTINELS = {
    "AWS_ACCESS_KEY_ID": "difiisrLeakKeyId7Q2",
    "AWS_SECRET_ACCESS_KEY": "difiisr-leak-secret-9f3c1e",
    "MLFLOW_TRACKING_USERNAME": "difiisr-leak-user-51",
    "MLFLOW_TRACKING_PASSWORD": "difiisr-leak-password-8d0",
}


class CompiledPipeline:
    """A compiled pipeline package: the pipeline spec and its Kubernetes platform spec, with lookups."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = path.read_text()
        docs = list(yaml.safe_load_all(self.text))
        self.spec: dict[str, Any] = docs[0]
        self.platform: dict[str, Any] = (
            docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
        )

    def dag(self, component: str | None = None) -> dict[str, Any]:
        """Tasks of the root DAG, or of the DAG component ``component`` (e.g. ``comp-exit-handler-1``)."""
        node = self.spec["root"] if component is None else self.spec["components"][component]
        return node["dag"]["tasks"]

    def all_tasks(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Every task of every DAG: ``{DAG/TASK: (dag component, task)}``."""
        out = {f"root/{name}": ("root", task) for name, task in self.dag().items()}
        for comp_name, comp in self.spec["components"].items():
            for name, task in comp.get("dag", {}).get("tasks", {}).items():
                out[f"{comp_name}/{name}"] = (comp_name, task)
        return out

    def executor_of(self, task: dict[str, Any]) -> str | None:
        """The executor label of a container task (None for a DAG task)."""
        return self.spec["components"][task["componentRef"]["name"]].get("executorLabel")

    def container(self, executor: str) -> dict[str, Any]:
        """The container spec of ``executor``."""
        return self.spec["deploymentSpec"]["executors"][executor]["container"]

    def find(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """Container tasks whose name is ``prefix`` or ``prefix-N``: ``[(executor, task)]``."""
        found = []
        for key, (_, task) in self.all_tasks().items():
            name = key.rsplit("/", 1)[1]
            if (name == prefix or (name.startswith(prefix + "-") and name[len(prefix) + 1 :].isdigit())) and (
                label := self.executor_of(task)
            ):
                found.append((label, task))
        return found


def _compile(pipeline: Any, path: Path, monkeypatch: pytest.MonkeyPatch) -> CompiledPipeline:
    from pipelines import entry

    for key, value in LEAK_SENTINELS.items():
        monkeypatch.setenv(key, value)
    entry.compile_package(pipeline, path)
    return CompiledPipeline(path)


@pytest.fixture
def train_eval_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CompiledPipeline:
    """``pipelines/train_eval.py`` compiled (with credential-like values in the environment)."""
    from pipelines.train_eval import train_eval

    return _compile(train_eval, tmp_path / "train_eval.yaml", monkeypatch)


@pytest.fixture
def batch_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CompiledPipeline:
    """``pipelines/batch_upscale.py`` compiled (with credential-like values in the environment)."""
    from pipelines.batch_upscale import batch_upscale

    return _compile(batch_upscale, tmp_path / "batch_upscale.yaml", monkeypatch)


@pytest.fixture
def read_spec() -> type[CompiledPipeline]:
    """Reads a compiled package: ``read_spec(path)``."""
    return CompiledPipeline


@pytest.fixture
def leak_sentinels() -> dict[str, str]:
    """Credential-like values put in the environment while compiling; none may appear in a package."""
    return dict(LEAK_SENTINELS)
