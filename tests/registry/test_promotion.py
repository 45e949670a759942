"""Champion promotion and rollback against a real MLflow tracking server (SQLite + SeaweedFS artifacts).

Model versions here carry evaluation tags written directly, so the decision logic is exercised without training;
the pyfunc/serving tests use real models.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from difiisr.cli.main import main as cli
from difiisr.errors import ExitCode
from difiisr.registry.names import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    TAG_DECISION,
    TAG_REASON,
    RegistryError,
)
from difiisr.registry.promotion import promote, rollback

pytestmark = pytest.mark.services


@pytest.fixture
def registry(mlflow_env):
    """A fresh registered model name and a client for it."""
    client = MlflowClient()
    name = f"difiisr-test-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    return client, name


_RUNS: dict[str, object] = {}


def _source_run(client):
    """One real run whose artifact location serves as the versions' source (the server validates sources)."""
    key = client.tracking_uri
    if key not in _RUNS:
        _RUNS[key] = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    return _RUNS[key]


def add_version(client, name, psnr_y, bicubic=28.0, eval_md5="md5-a", challenger=True):
    """A model version with evaluation tags as `difiisr register` writes them."""
    run = _source_run(client)
    mv = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model-{uuid.uuid4().hex[:8]}", run_id=run.info.run_id
    )
    for k, v in {"metric.psnr_y": psnr_y, "metric.bicubic_psnr_y": bicubic, "eval_md5": eval_md5}.items():
        client.set_model_version_tag(name, mv.version, k, str(v))
    if challenger:
        client.set_registered_model_alias(name, ALIAS_CHALLENGER, mv.version)
    return str(mv.version)


def champion(client, name):
    return str(client.get_model_version_by_alias(name, ALIAS_CHAMPION).version)


def test_first_model_must_beat_bicubic(registry):
    client, name = registry
    add_version(client, name, psnr_y=28.02, bicubic=28.0)
    d = promote(name, min_delta=0.05)
    assert (d.promoted, d.outcome, d.reference) == (False, "rejected", "bicubic baseline")
    assert d.challenger_value == pytest.approx(28.02) and d.reference_value == pytest.approx(28.0)
    assert client.get_model_version(name, "1").tags[TAG_DECISION] == "rejected"
    assert "28.0200 vs bicubic baseline 28.0000" in client.get_model_version(name, "1").tags[TAG_REASON]
    with pytest.raises(MlflowException, match="champion"):
        champion(client, name)

    add_version(client, name, psnr_y=29.0, bicubic=28.0)
    d = promote(name, min_delta=0.05)
    assert d.promoted and champion(client, name) == "2"
    with pytest.raises(MlflowException, match="previous-champion"):
        client.get_model_version_by_alias(name, ALIAS_PREVIOUS)


def test_better_promoted_worse_rejected_and_rollback(registry):
    client, name = registry
    add_version(client, name, psnr_y=30.0)
    assert promote(name).promoted
    add_version(client, name, psnr_y=30.5)
    d = promote(name, min_delta=0.05)
    assert d.promoted and d.reference == "champion v1" and d.reference_value == pytest.approx(30.0)
    assert champion(client, name) == "2"
    assert str(client.get_model_version_by_alias(name, ALIAS_PREVIOUS).version) == "1"

    add_version(client, name, psnr_y=30.52)  # better, but by less than the margin
    d = promote(name, min_delta=0.05)
    assert not d.promoted and d.outcome == "rejected" and champion(client, name) == "2"
    assert "gain +0.0200, needs >= 0.05" in d.reason

    add_version(client, name, psnr_y=31.0)
    assert promote(name).promoted and champion(client, name) == "4"
    assert rollback(name) == ("4", "2")
    assert champion(client, name) == "2"
    assert str(client.get_model_version_by_alias(name, ALIAS_PREVIOUS).version) == "1"
    assert client.get_model_version(name, "4").tags["promotion.rolled_back"] == "true"
    assert rollback(name) == ("2", "1")
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(name)


def test_mismatched_evaluation_sets_are_refused(registry):
    client, name = registry
    add_version(client, name, psnr_y=30.0, eval_md5="md5-a")
    assert promote(name).promoted
    add_version(client, name, psnr_y=35.0, eval_md5="md5-b")
    d = promote(name)
    assert d.outcome == "refused" and not d.promoted
    assert "evaluation sets differ" in d.reason and "md5-b" in d.reason and "md5-a" in d.reason
    assert champion(client, name) == "1"


def test_cli_exit_codes_and_messages(registry, capsys):
    client, name = registry
    assert cli(["promote", "--name", name]) == ExitCode.JOB_FAILED  # no challenger yet
    assert "has no 'challenger' alias" in capsys.readouterr().err
    add_version(client, name, psnr_y=30.0)
    assert cli(["promote", "--name", name, "--min-delta", "0.05"]) == 0
    assert "PROMOTED" in capsys.readouterr().out
    add_version(client, name, psnr_y=29.0)
    assert cli(["promote", "--name", name]) == ExitCode.NOT_PROMOTED == 3
    assert "REJECTED" in capsys.readouterr().out
    assert cli(["promote", "--name", name, "--metric", "musiq_rank"]) == ExitCode.JOB_FAILED
    assert "metric 'musiq_rank' has no known direction" in capsys.readouterr().err
    assert cli(["rollback", "--name", name]) == ExitCode.JOB_FAILED
    assert "first champion" in capsys.readouterr().err


class _SlowChampionWrites:
    """Fault injection around a real client: holds this promoter's champion write until `release` is set.

    It forwards every call to the real MLflow client; it only delays one write to force the interleaving in which
    a worse promoter writes `champion` after a better one, which plain threads hit only by chance.
    """

    def __init__(self, client, release: threading.Event):
        self._client, self._release, self._held = client, release, False
        self.reached = threading.Event()

    def __getattr__(self, item):
        return getattr(self._client, item)

    def set_registered_model_alias(self, name, alias, version):
        if alias == ALIAS_CHAMPION and not self._held:
            self._held = True
            self.reached.set()
            assert self._release.wait(60)
        return self._client.set_registered_model_alias(name, alias, version)


def test_interleaved_promotions_leave_the_better_champion(registry):
    client, name = registry
    add_version(client, name, psnr_y=30.0)
    assert promote(name).promoted
    worse = add_version(client, name, psnr_y=30.5, challenger=False)
    better = add_version(client, name, psnr_y=31.0, challenger=False)
    release = threading.Event()
    results = {}

    slow = _SlowChampionWrites(MlflowClient(), release)

    def slow_worse():
        results["worse"] = promote(name, version=worse, client=slow)

    t = threading.Thread(target=slow_worse)
    t.start()
    assert slow.reached.wait(60)
    # The worse promoter has decided against v1 and is blocked right before its champion write.
    results["better"] = promote(name, version=better)
    release.set()
    t.join(60)
    assert results["better"].promoted and results["worse"].promoted  # both beat v1 when they decided
    assert champion(client, name) == better
    assert results["worse"].champion == better and "concurrent promotion" in results["worse"].reason


def test_concurrent_promotions_threads(registry):
    client, name = registry
    add_version(client, name, psnr_y=30.0)
    assert promote(name).promoted
    versions = {add_version(client, name, psnr_y=30.0 + 0.2 * k, challenger=False): k for k in range(1, 5)}
    barrier = threading.Barrier(len(versions))
    errors = []

    def worker(v):
        try:
            barrier.wait(30)
            promote(name, version=v)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    best = max(versions, key=versions.get)
    assert champion(client, name) == best
