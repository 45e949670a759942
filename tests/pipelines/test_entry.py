"""The pipelines' command line: parameters, --schedule (a KFP recurring run), --host (submit), usage errors.

Submitting and scheduling need a Kubeflow Pipelines API, which cannot run here: those tests hand the entry
point a recording stand-in for ``kfp.Client`` and check what it was asked to create, including the compiled
package it was given.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from difiisr.errors import ExitCode, UsageError

ROOT = Path(__file__).resolve().parents[2]


class RecordingClient:
    """Stands in for ``kfp.Client`` (no KFP API here): records calls, keeps a copy of each package it gets."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.packages: list[str] = []

    def create_experiment(self, name: str) -> Any:
        self.calls.append(("create_experiment", {"name": name}))
        return SimpleNamespace(experiment_id="exp-1")

    def create_recurring_run(self, **kwargs: Any) -> Any:
        self.calls.append(("create_recurring_run", kwargs))
        self.packages.append(Path(kwargs["pipeline_package_path"]).read_text())
        return SimpleNamespace(recurring_run_id="rr-1")

    def create_run_from_pipeline_func(self, pipeline: Any, **kwargs: Any) -> Any:
        self.calls.append(("create_run_from_pipeline_func", {"pipeline": pipeline, **kwargs}))
        return SimpleNamespace(run_id="run-1")


def recording(clients: list[RecordingClient]):
    """A ``client_factory`` that records every client it makes into ``clients``."""

    def factory(host: str) -> RecordingClient:
        clients.append(RecordingClient(host))
        return clients[-1]

    return factory


def test_params_are_typed_and_checked():
    from pipelines.train_eval import train_eval

    from pipelines import entry

    params = entry.parse_params(
        [
            "training_steps=50",
            "promotion_margin=0.1",
            "inference={seed: 3, sampler: ddim}",
            "dataset_rev=",
            "preset=x",
        ],
        train_eval,
    )
    assert params == {
        "training_steps": 50,
        "promotion_margin": 0.1,
        "inference": {"seed": 3, "sampler": "ddim"},
        "dataset_rev": "",
        "preset": "x",
    }
    with pytest.raises(UsageError, match="not a parameter of difiisr-train-eval.*training_steps"):
        entry.parse_params(["trainig_steps=5"], train_eval)
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        entry.parse_params(["training_steps"], train_eval)


@pytest.mark.parametrize("cron", ["0 0 2 * * *", "0 */15 * * * ?", "30 0 2 * * 1-5"])
def test_six_field_cron_is_accepted(cron: str):
    from pipelines import entry

    assert entry.check_cron(cron) == cron


@pytest.mark.parametrize("cron", ["0 2 * * *", "0 0 2 * * * *", "", "0 0 2 * * ;rm"])
def test_other_cron_is_refused(cron: str):
    from pipelines import entry

    with pytest.raises(UsageError, match="6-field cron with seconds first"):
        entry.check_cron(cron)


def test_schedule_creates_one_recurring_run_without_catchup():
    from pipelines.batch_upscale import batch_upscale

    from pipelines import entry

    clients: list[RecordingClient] = []

    def factory(host: str) -> RecordingClient:
        clients.append(RecordingClient(host))
        return clients[-1]

    job = entry.schedule(
        batch_upscale,
        "http://kfp.example:8888",
        "nightly",
        "0 0 2 * * *",
        {"shards": 8},
        client_factory=factory,
    )
    assert job == "rr-1"
    (client,) = clients
    assert client.host == "http://kfp.example:8888"
    assert client.calls[0] == ("create_experiment", {"name": "nightly"})
    name, kwargs = client.calls[1]
    assert name == "create_recurring_run"
    assert kwargs["experiment_id"] == "exp-1"
    assert kwargs["job_name"] == "difiisr-batch-upscale"
    assert kwargs["cron_expression"] == "0 0 2 * * *"
    assert kwargs["max_concurrency"] == 1
    assert kwargs["no_catchup"] is True
    assert kwargs["params"] == {"shards": 8}
    assert kwargs["service_account"] is None
    spec = yaml.safe_load(client.packages[0].split("\n---\n")[0])
    assert spec["pipelineInfo"]["name"] == "difiisr-batch-upscale"


def test_schedule_refuses_a_five_field_cron_before_calling_the_api():
    from pipelines.batch_upscale import batch_upscale

    from pipelines import entry

    clients: list[RecordingClient] = []
    with pytest.raises(UsageError, match="6-field"):
        entry.schedule(batch_upscale, "http://h", "e", "0 2 * * *", {}, client_factory=recording(clients))
    assert all(name != "create_recurring_run" for c in clients for name, _ in c.calls)


def test_submit_passes_the_pipeline_and_arguments():
    from pipelines.train_eval import train_eval

    from pipelines import entry

    clients: list[RecordingClient] = []
    run_id = entry.submit(
        train_eval,
        "http://h",
        "exp",
        {"num_gpus": 8},
        service_account="difiisr-pipeline",
        client_factory=recording(clients),
    )
    assert run_id == "run-1"
    ((name, kwargs),) = clients[0].calls
    assert name == "create_run_from_pipeline_func"
    assert kwargs["pipeline"] is train_eval
    assert kwargs["arguments"] == {"num_gpus": 8}
    assert kwargs["experiment_name"] == "exp"
    assert kwargs["service_account"] == "difiisr-pipeline"


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / f"{name}.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_usage_errors_exit_2_with_a_message(tmp_path: Path):
    done = _script("batch_upscale", "--schedule", "0 0 2 * * *", cwd=tmp_path)
    assert done.returncode == ExitCode.USAGE
    assert "--schedule needs --host URL" in done.stderr
    done = _script("train_eval", "--param", "no_such=1", "--compile", str(tmp_path / "x.yaml"), cwd=tmp_path)
    assert done.returncode == ExitCode.USAGE
    assert "no_such: not a parameter of difiisr-train-eval" in done.stderr
    assert not (tmp_path / "x.yaml").exists()
    assert list(tmp_path.iterdir()) == []  # nothing ran locally


def test_help_names_the_modes_and_exit_codes(tmp_path: Path):
    done = _script("train_eval", "--help", cwd=tmp_path)
    assert done.returncode == 0
    for text in ("--compile", "--host", "--experiment", "--param", "--root", "exit codes:"):
        assert text in done.stdout
    done = _script("batch_upscale", "--help", cwd=tmp_path)
    assert "--schedule" in done.stdout
