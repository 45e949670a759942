"""The multi-node TrainJob: manifest builder, validation against the Trainer API models (unknown fields refused),
and submit-and-wait.

No Kubernetes cluster (and no Kubeflow Trainer controller) can run here, so ``submit_and_wait`` is exercised
against a fake ``CustomObjectsApi`` that plays the API server's part (create, then a sequence of statuses);
the real client's ``ApiException`` is used for its errors. The builder and the validator need no cluster.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from difiisr.errors import DifiisrError, ExitCode
from difiisr.training.trainjob import (
    API_VERSION,
    TrainJobConfigError,
    TrainJobFailedError,
    TrainJobTimeoutError,
    build_trainjob,
    command_line,
    exported_model_dir,
    submit_and_wait,
    validate_trainer_object,
)

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "infra" / "k8s" / "base" / "training-runtime.yaml"
SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": ("difiisr-secrets", "AWS_ACCESS_KEY_ID"),
    "AWS_SECRET_ACCESS_KEY": ("difiisr-secrets", "AWS_SECRET_ACCESS_KEY"),
    "MLFLOW_TRACKING_PASSWORD": ("difiisr-secrets", "MLFLOW_TRACKING_PASSWORD"),
}


def job_2x4(**changes: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "name": "difiisr-train-abc123",
        "namespace": "difiisr",
        "image": "ghcr.io/difiisr/difiisr:0.1.0-cuda",
        "nodes": 2,
        "gpus_per_node": 4,
        "config": "/work/configs/train_x4.yaml",
        "overrides": ["out_dir=/work/runs/abc123", "max_steps=5000", "data.train_dir=/work/pairs/train"],
        "env": {"NCCL_DEBUG": "WARN", "MLFLOW_RUN_ID": "0123"},
        "secret_env": SECRET_ENV,
        "cpu": "32",
        "memory": "200Gi",
        "cpu_limit": "48",
        "memory_limit": "240Gi",
        "shm_size": "64Gi",
        "work_pvc": "difiisr-work-run",
        "labels": {"pipelines.kubeflow.org/run_id": "run-1"},
    }
    kwargs.update(changes)
    return build_trainjob(**kwargs)


# ------------------------------------------------------------------------------------------------ the builder


def test_two_nodes_by_four_gpus_resources_processes_and_runtime() -> None:
    job = job_2x4()
    assert job["apiVersion"] == API_VERSION == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["namespace"] == "difiisr"
    assert job["metadata"]["labels"]["pipelines.kubeflow.org/run_id"] == "run-1"
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": "difiisr-torch",
    }
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == "ghcr.io/difiisr/difiisr:0.1.0-cuda"
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4  # one process per GPU
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "32", "memory": "200Gi", "nvidia.com/gpu": "4"},
        "limits": {"cpu": "48", "memory": "240Gi", "nvidia.com/gpu": "4"},
    }
    cpu_only = job_2x4(gpus_per_node=0, cpu_limit=None, memory_limit=None)["spec"]["trainer"]
    assert cpu_only["numProcPerNode"] == 1
    assert cpu_only["resourcesPerNode"] == {
        "requests": {"cpu": "32", "memory": "200Gi"},
        "limits": {"cpu": "32", "memory": "200Gi"},
    }
    cluster = job_2x4(cluster_runtime=True, runtime_ref="torch-distributed")["spec"]["runtimeRef"]
    assert cluster["kind"] == "ClusterTrainingRuntime" and cluster["name"] == "torch-distributed"


def test_every_node_runs_difiisr_train_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    job = job_2x4()
    trainer = job["spec"]["trainer"]
    assert trainer["command"] == ["torchrun"]
    module_flag, module, verb, *rest = trainer["args"]
    assert (module_flag, module, verb) == ("--module", "difiisr.cli.main", "train")
    from difiisr.cli.main import VERBS
    from difiisr.cli.train import add_arguments

    assert VERBS[verb][0] == "difiisr.cli.train"
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    args = parser.parse_args(rest)  # the real `difiisr train` parser accepts them
    assert args.config == "/work/configs/train_x4.yaml" and args.resume is True
    assert list(args.overrides) == [
        "out_dir=/work/runs/abc123",
        "max_steps=5000",
        "data.train_dir=/work/pairs/train",
    ]
    # torchrun's own parser, with the PET_* variables the Trainer sets on each node: 2 nodes x 4 processes
    from torch.distributed.run import get_args_parser

    pet = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "node-0-0"}
    for key, value in {**pet, "PET_MASTER_PORT": "29400"}.items():
        monkeypatch.setenv(key, value)
    launch = get_args_parser().parse_args(trainer["args"])
    assert (launch.nnodes, launch.nproc_per_node, int(launch.node_rank)) == ("2", "4", 1)
    assert launch.module is True and launch.training_script == "difiisr.cli.main"
    assert launch.training_script_args == ["train", *rest]
    assert exported_model_dir(job) == "/work/runs/abc123/model"
    assert command_line(job).startswith("torchrun --module difiisr.cli.main train --config /work/configs/")
    assert "--resume" not in job_2x4(resume=False)["spec"]["trainer"]["args"]


def test_env_is_plain_or_a_secret_reference_never_an_inline_secret() -> None:
    job = job_2x4()
    env = {e["name"]: e for e in job["spec"]["trainer"]["env"]}
    assert env["NCCL_DEBUG"] == {"name": "NCCL_DEBUG", "value": "WARN"}
    for name, (secret, key) in SECRET_ENV.items():
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
    text = yaml.safe_dump(job)
    assert "value: " not in "\n".join(
        line for line in text.splitlines() if "SECRET" in line or "PASSWORD" in line
    )
    with pytest.raises(TrainJobConfigError, match=r"\['AWS_SECRET_ACCESS_KEY'\] given both"):
        job_2x4(env={"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(TrainJobConfigError, match=r"expected \(secret name, key\)"):
        job_2x4(secret_env={"TOKEN": ("only-a-name",)})
    with pytest.raises(TrainJobConfigError, match="env name '1BAD'"):
        job_2x4(env={"1BAD": "x"})


def test_volume_patch_targets_the_runtimes_node_pods_and_volumes() -> None:
    runtime = yaml.safe_load(RUNTIME.read_text())
    (node_job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    runtime_volumes = {v["name"]: v for v in node_job["template"]["spec"]["template"]["spec"]["volumes"]}
    (patch,) = job_2x4()["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == node_job["name"] == "node"
    volumes = {v["name"]: v for v in replicated["template"]["spec"]["template"]["spec"]["volumes"]}
    assert set(volumes) == {"work", "dshm"} <= set(runtime_volumes)  # merged by name into the runtime's
    assert volumes["work"]["persistentVolumeClaim"] == {"claimName": "difiisr-work-run"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert "runtimePatches" not in job_2x4(shm_size=None, work_pvc=None)["spec"]  # the runtime's own volumes
    (only_shm,) = job_2x4(work_pvc=None)["spec"]["runtimePatches"]
    spec = only_shm["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert [v["name"] for v in spec["template"]["spec"]["volumes"]] == ["dshm"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Train_Job"}, "name 'Train_Job'"),
        ({"name": "x" * 64}, "at most 63"),
        ({"nodes": 0}, "nodes=0"),
        ({"gpus_per_node": -1}, "gpus_per_node=-1"),
        ({"overrides": ["max_steps"]}, "override 'max_steps': expected KEY=VALUE"),
        ({"image": ""}, "image and config are required"),
        ({"cpu": 8}, None),  # numbers are written as quantity strings
    ],
)
def test_bad_arguments_are_named(changes: dict[str, Any], message: str | None) -> None:
    if message is None:
        assert job_2x4(**changes)["spec"]["trainer"]["resourcesPerNode"]["requests"]["cpu"] == "8"
        return
    with pytest.raises(TrainJobConfigError, match=message) as err:
        job_2x4(**changes)
    assert isinstance(err.value, DifiisrError) and err.value.exit_code == ExitCode.USAGE


def test_exported_model_dir_needs_an_out_dir() -> None:
    with pytest.raises(TrainJobConfigError, match="no --set out_dir"):
        exported_model_dir(job_2x4(overrides=["max_steps=1"]))


# --------------------------------------------------------------------------------------------- validation


def test_validation_refuses_unknown_fields_at_any_depth() -> None:
    runtime = yaml.safe_load(RUNTIME.read_text())
    validate_trainer_object(runtime)  # the shipped runtime is clean
    old = copy.deepcopy(runtime)
    old["spec"]["mlPolicy"]["torch"] = {
        "numProcPerNode": "auto"
    }  # accepted by older Trainer APIs, dropped by 2.3
    with pytest.raises(TrainJobConfigError, match=r"spec\.mlPolicy\.torch\.numProcPerNode: unknown field"):
        validate_trainer_object(old)
    deep = copy.deepcopy(runtime)
    pod = deep["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True  # misspelt
    with pytest.raises(
        TrainJobConfigError, match=r"containers\[0\]\.securityContext\.readOnlyRootFileSystem"
    ):
        validate_trainer_object(deep)

    job = job_2x4()
    typo = copy.deepcopy(job)
    typo["spec"]["trainer"]["numProcsPerNode"] = 4
    with pytest.raises(TrainJobConfigError, match=r"TrainJob\.spec\.trainer\.numProcsPerNode: unknown field"):
        validate_trainer_object(typo)
    in_patch = copy.deepcopy(job)
    in_patch["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "replicas"
    ] = 2  # not patchable in 2.3
    with pytest.raises(TrainJobConfigError, match=r"replicatedJobs\[0\]\.replicas: unknown field"):
        validate_trainer_object(in_patch)


def test_validation_checks_types_required_fields_kind_and_name() -> None:
    job = job_2x4()
    auto = copy.deepcopy(job)
    auto["spec"]["trainer"]["numProcPerNode"] = "auto"  # an int in Trainer API 2.3
    with pytest.raises(TrainJobConfigError, match="numProcPerNode"):
        validate_trainer_object(auto)
    no_ref = copy.deepcopy(job)
    del no_ref["spec"]["runtimeRef"]
    with pytest.raises(TrainJobConfigError, match="runtimeRef"):
        validate_trainer_object(no_ref)
    with pytest.raises(TrainJobConfigError, match="not a Trainer object"):
        validate_trainer_object({**job, "apiVersion": "kubeflow.org/v1"})
    with pytest.raises(TrainJobConfigError, match="not a Trainer object"):
        validate_trainer_object({**job, "kind": "PyTorchJob"})
    bad_name = copy.deepcopy(job)
    bad_name["metadata"]["name"] = "Bad_Name"
    with pytest.raises(TrainJobConfigError, match="metadata.name: 'Bad_Name'"):
        validate_trainer_object(bad_name)


def test_every_trainer_object_in_infra_validates() -> None:
    found = []
    for path in sorted((ROOT / "infra" / "k8s").rglob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if isinstance(obj, dict) and str(obj.get("apiVersion", "")).startswith("trainer.kubeflow.org/"):
                validate_trainer_object(obj)
                found.append(f"{path.name}:{obj['kind']}")
    assert "training-runtime.yaml:TrainingRuntime" in found and "trainjob-x4-2x8.yaml:TrainJob" in found


# ---------------------------------------------------------------------------------------- submit and wait


class FakeCustomObjectsApi:
    """Plays the API server (no cluster here): records creates, answers reads from a list of statuses."""

    def __init__(self, statuses: list[Any], existing: dict[str, Any] | None = None) -> None:
        self.statuses = list(statuses)
        self.existing = existing
        self.created: list[tuple[str, str, str, str, dict[str, Any]]] = []
        self.reads = 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if self.existing is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append((group, version, namespace, plural, copy.deepcopy(body)))
        self.existing = copy.deepcopy(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        assert self.existing is not None and name == self.existing["metadata"]["name"]
        self.reads += 1
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(status, ApiException):
            raise status
        return {**self.existing, "status": status}


def _status(*conditions: tuple[str, str]) -> dict[str, Any]:
    return {
        "conditions": [
            {"type": t, "status": "True", "reason": r, "message": f"{t} message"} for t, r in conditions
        ]
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def test_submit_creates_the_job_and_waits_for_complete() -> None:
    job = job_2x4()
    api = FakeCustomObjectsApi(
        [{}, _status(("Created", "JobSetCreated")), _status(("Complete", "JobSetCompleted"))]
    )
    clock = Clock()
    final = submit_and_wait(job, timeout=3600, poll=30, api=api, sleep=clock.sleep, clock=clock)
    ((group, version, namespace, plural, body),) = api.created
    assert (group, version, namespace, plural) == ("trainer.kubeflow.org", "v1alpha1", "difiisr", "trainjobs")
    assert body == job
    assert final["status"]["conditions"][0]["type"] == "Complete" and api.reads == 3
    assert clock.sleeps == [30, 30]


def test_failed_job_raises_with_the_trainers_reason() -> None:
    api = FakeCustomObjectsApi([_status(("Created", "x")), _status(("Failed", "BackoffLimitExceeded"))])
    clock = Clock()
    with pytest.raises(
        TrainJobFailedError, match="difiisr/difiisr-train-abc123 failed: BackoffLimitExceeded"
    ) as err:
        submit_and_wait(job_2x4(), timeout=600, poll=10, api=api, sleep=clock.sleep, clock=clock)
    assert err.value.exit_code == ExitCode.JOB_FAILED


def test_timeout_leaves_the_job_running_and_says_how_to_stop_it() -> None:
    api = FakeCustomObjectsApi([_status(("Created", "x"))])
    clock = Clock()
    with pytest.raises(
        TrainJobTimeoutError, match=r"not finished after 100 s .*delete trainjob difiisr-train-abc123"
    ):
        submit_and_wait(job_2x4(), timeout=100, poll=30, api=api, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == [30, 30, 30, 10] and api.reads == 5


def test_transient_api_errors_while_polling_are_retried() -> None:
    api = FakeCustomObjectsApi(
        [ApiException(status=503, reason="Unavailable"), _status(("Complete", "done"))]
    )
    clock = Clock()
    final = submit_and_wait(job_2x4(), timeout=600, poll=5, api=api, sleep=clock.sleep, clock=clock)
    assert final["status"]["conditions"][0]["type"] == "Complete" and clock.sleeps == [5]
    gone = FakeCustomObjectsApi([ApiException(status=404, reason="NotFound")])
    with pytest.raises(TrainJobFailedError, match="was deleted"):
        submit_and_wait(job_2x4(), timeout=600, poll=5, api=gone, sleep=clock.sleep, clock=clock)


def test_a_retried_step_adopts_its_job_but_not_another_spec() -> None:
    job = job_2x4()
    server_side = copy.deepcopy(job)
    server_side["spec"]["suspend"] = False  # defaults the API server adds do not matter
    api = FakeCustomObjectsApi([_status(("Complete", "done"))], existing=server_side)
    clock = Clock()
    assert submit_and_wait(job, timeout=60, poll=5, api=api, sleep=clock.sleep, clock=clock)["status"]
    assert api.created == []
    other = FakeCustomObjectsApi([_status(("Complete", "done"))], existing=job_2x4(nodes=4))
    with pytest.raises(TrainJobConfigError, match="already exists with another spec"):
        submit_and_wait(job, timeout=60, poll=5, api=other, sleep=clock.sleep, clock=clock)


def test_submit_validates_first_and_refuses_bad_timing() -> None:
    api = FakeCustomObjectsApi([{}])
    broken = job_2x4()
    broken["spec"]["trainer"]["gpus"] = 4
    with pytest.raises(TrainJobConfigError, match="gpus: unknown field"):
        submit_and_wait(broken, timeout=60, api=api)
    with pytest.raises(TrainJobConfigError, match="both must be > 0"):
        submit_and_wait(job_2x4(), timeout=60, poll=0, api=api)
    assert api.created == []


def test_builder_reproduces_the_shipped_example() -> None:
    example = yaml.safe_load((ROOT / "infra" / "k8s" / "examples" / "trainjob-x4-2x8.yaml").read_text())
    built = build_trainjob(
        name=example["metadata"]["name"],
        namespace="difiisr",
        image="difiisr-cuda",  # the kustomize placeholder the example uses
        nodes=2,
        gpus_per_node=8,
        config="$(TRAIN_CONFIG)",
        env={"TRAIN_CONFIG": "/work/configs/train_x4.yaml", "NCCL_DEBUG": "WARN"},
        cpu="48",
        memory="400Gi",
        cpu_limit="64",
        memory_limit="480Gi",
    )
    assert built["spec"] == example["spec"]
    assert built["metadata"]["labels"] == example["metadata"]["labels"]
