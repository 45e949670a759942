"""Multi-node training as a Kubeflow Trainer ``TrainJob``: build the manifest, validate it, submit it and wait.

A TrainJob runs the project image on ``nodes`` pods of the TrainingRuntime ``difiisr-torch``
(infra/k8s/base/training-runtime.yaml: security settings, service account, config map, /tmp, /dev/shm and the
shared work volume). Every node runs the same entry point as a single-machine run, under torchrun with one
process per GPU::

    torchrun --module difiisr.cli.main train --config CONFIG --set KEY=VALUE ... --resume

The Trainer sets ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
``PET_MASTER_PORT``, which torchrun reads as its defaults; Accelerate inside ``difiisr train`` picks up torchrun's
ranks. The run writes its model folder to ``OUT_DIR/model`` on the shared volume (``exported_model_dir``) and
logs to MLflow as usual, so the step after the TrainJob reads the model from there.

Trainer objects are checked against the Trainer API models of ``kubeflow_trainer_api`` with unknown fields
refused (the API server would silently drop them; kubernetes-validate has no schema for these CRDs). The Kubeflow
SDK's ``TrainerClient`` is not used to build the job: it needs a live cluster to read the runtime first, takes
plain-string env only (no Secret references) and cannot set ``numProcPerNode``.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from difiisr.errors import DifiisrError, JobError

logger = logging.getLogger(__name__)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "trainjobs"
DEFAULT_RUNTIME = "difiisr-torch"
#: the trainer pods' replicated job and container name in the runtime (Trainer's convention for torch)
NODE = "node"
#: who owns the runtime patch this module writes (a TrainJob's runtimePatches are keyed by manager)
PATCH_MANAGER = "difiisr.dev/trainjob-builder"
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_DIR = "model"  # training.loop.MODEL_DIR: the exported model folder under out_dir
# The CRD's rule for TrainJob names (an RFC 1035 label, at most 63 characters).
_NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TrainJobConfigError(DifiisrError, ValueError):
    """A TrainJob cannot be built or is not a valid Trainer object; the message names the field and the fix."""


class TrainJobFailedError(JobError):
    """The TrainJob finished with condition ``Failed``; the message has the Trainer's reason and message."""


class TrainJobTimeoutError(JobError):
    """The TrainJob did not finish within the timeout; it keeps running in the cluster (delete it by name)."""


# ------------------------------------------------------------------------------------------------ validation


def _model_for(obj: Mapping[str, Any]) -> type:
    from kubeflow_trainer_api import models

    kinds = {
        "TrainJob": models.TrainerV1alpha1TrainJob,
        "TrainingRuntime": models.TrainerV1alpha1TrainingRuntime,
        "ClusterTrainingRuntime": models.TrainerV1alpha1ClusterTrainingRuntime,
    }
    kind = obj.get("kind")
    if obj.get("apiVersion") != API_VERSION or kind not in kinds:
        raise TrainJobConfigError(
            f"apiVersion {obj.get('apiVersion')!r} kind {kind!r}: not a Trainer object "
            f"(expected apiVersion {API_VERSION} and kind one of {sorted(kinds)})"
        )
    return kinds[kind]


def _unknown_fields(value: Any, annotation: Any, path: str) -> list[str]:
    """Paths under ``value`` whose keys the generated pydantic model for ``annotation`` does not define."""
    from pydantic import BaseModel

    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unknown_fields(value, inner[0], path) if len(inner) == 1 else []
    if origin in (list, Sequence) and isinstance(value, list):
        (item,) = typing.get_args(annotation)
        return [p for i, v in enumerate(value) for p in _unknown_fields(v, item, f"{path}[{i}]")]
    if origin in (dict, Mapping) and isinstance(value, dict):
        _, item = typing.get_args(annotation)
        return [p for k, v in value.items() for p in _unknown_fields(v, item, f"{path}.{k}")]
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)) or not isinstance(
        value, dict
    ):
        return []  # scalars, free-form objects (Dict[str, Any]); type errors are pydantic's to report
    if "actual_instance" in annotation.model_fields:  # a oneOf wrapper (quantity, int-or-string)
        return []
    fields = {(f.alias or name): f for name, f in annotation.model_fields.items()}
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(
                f"{path}.{key}: unknown field of {annotation.__name__} (known: {', '.join(sorted(fields))})"
            )
        else:
            problems += _unknown_fields(item, fields[key].annotation, f"{path}.{key}")
    return problems


def validate_trainer_object(obj: Mapping[str, Any]) -> None:
    """Check a TrainJob / TrainingRuntime / ClusterTrainingRuntime against the Trainer API models.

    Unknown fields anywhere are refused (the API server would drop them silently), as are wrong types and
    missing required fields. Raises ``TrainJobConfigError`` listing every problem with its path.
    """
    model = _model_for(obj)
    kind = obj["kind"]
    problems = _unknown_fields(dict(obj), model, kind)
    name = (obj.get("metadata") or {}).get("name")
    if kind == "TrainJob" and not (isinstance(name, str) and _NAME_RE.fullmatch(name) and len(name) <= 63):
        problems.append(
            f"{kind}.metadata.name: {name!r} is not a lowercase RFC 1035 label of at most 63 chars"
        )
    try:
        model.from_dict(dict(obj))
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        problems.append(f"{kind}: {exc}")
    if problems:
        raise TrainJobConfigError(
            f"{kind} {name!r} is not a valid Trainer object:\n  " + "\n  ".join(problems)
        )


# ------------------------------------------------------------------------------------------------- building


def training_args(config: str, overrides: Sequence[str] = (), *, resume: bool = True) -> list[str]:
    """``torchrun`` arguments running ``difiisr train`` (module form, so no script path is needed)."""
    for item in overrides:
        if "=" not in item:
            raise TrainJobConfigError(f"override {item!r}: expected KEY=VALUE (as for difiisr train --set)")
    args = ["--module", "difiisr.cli.main", "train", "--config", config]
    for item in overrides:
        args += ["--set", item]
    return [*args, "--resume"] if resume else args


def _env(env: Mapping[str, str], secret_env: Mapping[str, tuple[str, str]]) -> list[dict[str, Any]]:
    both = set(env) & set(secret_env)
    if both:
        raise TrainJobConfigError(f"env {sorted(both)} given both as plain values and as Secret references")
    out: list[dict[str, Any]] = []
    for name in [*env, *secret_env]:
        if not _ENV_RE.fullmatch(name):
            raise TrainJobConfigError(
                f"env name {name!r}: use letters, digits and '_' (not starting with a digit)"
            )
    out += [{"name": name, "value": str(value)} for name, value in env.items()]
    for name, ref in secret_env.items():
        if not (isinstance(ref, (tuple, list)) and len(ref) == 2 and all(ref)):
            raise TrainJobConfigError(f"secret_env[{name!r}] = {ref!r}: expected (secret name, key)")
        out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": ref[0], "key": ref[1]}}})
    return out


def _volume_patch(work_pvc: str | None, shm_size: str | None) -> list[dict[str, Any]]:
    """A runtime patch replacing the node pods' ``work`` PVC and/or ``/dev/shm`` size (volumes merge by name)."""
    volumes: list[dict[str, Any]] = []
    if work_pvc:
        volumes.append({"name": "work", "persistentVolumeClaim": {"claimName": work_pvc}})
    if shm_size:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}})
    if not volumes:
        return []
    pod = {"spec": {"template": {"spec": {"volumes": volumes}}}}
    jobs = {"replicatedJobs": [{"name": NODE, "template": pod}]}
    return [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": jobs}}}]


def build_trainjob(
    *,
    name: str,
    namespace: str,
    image: str,
    nodes: int,
    gpus_per_node: int,
    config: str,
    overrides: Sequence[str] = (),
    runtime_ref: str = DEFAULT_RUNTIME,
    cluster_runtime: bool = False,
    env: Mapping[str, str] | None = None,
    secret_env: Mapping[str, tuple[str, str]] | None = None,
    cpu: str = "8",
    memory: str = "32Gi",
    cpu_limit: str | None = None,
    memory_limit: str | None = None,
    shm_size: str | None = None,
    work_pvc: str | None = None,
    labels: Mapping[str, str] | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """A validated TrainJob (a plain dict for ``CustomObjectsApi``) running ``difiisr train`` on every node.

    ``nodes`` pods, each with ``gpus_per_node`` GPUs (requests = limits) and one torchrun process per GPU (one
    process on CPU nodes, ``gpus_per_node=0``). ``config`` is a train config path inside the image or on the
    work volume; ``overrides`` are ``KEY=VALUE`` (``--set``; put ``out_dir`` on the work volume). ``env`` are
    plain variables; ``secret_env`` maps a variable to ``(secret name, key)`` (a ``secretKeyRef``: no value is
    ever written inline). ``cpu``/``memory`` are per-node requests (limits default to them). ``shm_size`` and
    ``work_pvc`` replace the runtime's ``/dev/shm`` size and work-volume claim (None: the runtime's).
    """
    if not (isinstance(name, str) and _NAME_RE.fullmatch(name) and len(name) <= 63):
        raise TrainJobConfigError(
            f"name {name!r}: a TrainJob name is lowercase letters, digits and '-', starts with a letter, "
            "at most 63 characters"
        )
    if not isinstance(nodes, int) or nodes < 1:
        raise TrainJobConfigError(f"nodes={nodes!r}: need an integer >= 1")
    if not isinstance(gpus_per_node, int) or gpus_per_node < 0:
        raise TrainJobConfigError(f"gpus_per_node={gpus_per_node!r}: need an integer >= 0")
    if not image or not config:
        raise TrainJobConfigError("image and config are required (the project image and a train config path)")
    requests: dict[str, str] = {"cpu": str(cpu), "memory": str(memory)}
    limits: dict[str, str] = {"cpu": str(cpu_limit or cpu), "memory": str(memory_limit or memory)}
    if gpus_per_node:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpus_per_node)
    trainer: dict[str, Any] = {
        "image": image,
        "command": ["torchrun"],
        "args": training_args(config, overrides, resume=resume),
        "numNodes": nodes,
        "numProcPerNode": max(gpus_per_node, 1),
        "resourcesPerNode": {"requests": requests, "limits": limits},
    }
    container_env = _env(dict(env or {}), dict(secret_env or {}))
    if container_env:
        trainer["env"] = container_env
    spec: dict[str, Any] = {
        "runtimeRef": {
            "apiGroup": GROUP,
            "kind": "ClusterTrainingRuntime" if cluster_runtime else "TrainingRuntime",
            "name": runtime_ref,
        },
        "trainer": trainer,
    }
    patches = _volume_patch(work_pvc, shm_size)
    if patches:
        spec["runtimePatches"] = patches
    job = {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "difiisr",
                "app.kubernetes.io/component": "training",
                **dict(labels or {}),
            },
        },
        "spec": spec,
    }
    validate_trainer_object(job)
    return job


def exported_model_dir(job: Mapping[str, Any]) -> str:
    """Where the job's model folder lands: ``OUT_DIR/model`` for the ``--set out_dir=...`` in its args."""
    args = list(job["spec"]["trainer"].get("args", []))
    outs = [
        args[i + 1].split("=", 1)[1]
        for i, a in enumerate(args[:-1])
        if a == "--set" and args[i + 1].startswith("out_dir=")
    ]
    if not outs:
        raise TrainJobConfigError(
            f"TrainJob {job['metadata']['name']}: no --set out_dir=... in its args; pass out_dir on the work volume"
        )
    return f"{outs[-1].rstrip('/')}/{MODEL_DIR}"


def command_line(job: Mapping[str, Any]) -> str:
    """The shell form of what every node runs (for logs)."""
    trainer = job["spec"]["trainer"]
    return shlex.join([*trainer.get("command", []), *trainer.get("args", [])])


# ------------------------------------------------------------------------------------------ submit and wait


def _condition(job: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and str(cond.get("status")) == "True":
            return dict(cond)
    return None


def _is_subset(want: Any, have: Any) -> bool:
    """True when every key/value of ``want`` is in ``have`` (the server adds defaults, never removes ours)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and _is_subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(_is_subset, want, have))
    return want == have


def _default_api() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def submit_and_wait(
    obj: Mapping[str, Any],
    *,
    timeout: float,
    poll: float = 30.0,
    api: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Create the TrainJob ``obj`` and poll it until ``Complete``; returns the final object (with status).

    ``api`` is a ``kubernetes.client.CustomObjectsApi`` (default: in-cluster config, else ~/.kube/config). A job
    of the same name already there with the same spec (a retried pipeline step) is adopted, not recreated; one
    with another spec is refused. Raises ``TrainJobFailedError`` on ``Failed``, ``TrainJobTimeoutError`` after
    ``timeout`` seconds (the job is left running). API errors while polling are retried until the timeout.
    """
    from kubernetes.client.exceptions import ApiException

    validate_trainer_object(obj)
    if obj["kind"] != "TrainJob":
        raise TrainJobConfigError(f"submit_and_wait takes a TrainJob, not a {obj['kind']}")
    if poll <= 0 or timeout <= 0:
        raise TrainJobConfigError(f"timeout={timeout} and poll={poll}: both must be > 0 seconds")
    api = api or _default_api()
    name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
    where = f"TrainJob {namespace}/{name}"
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, dict(obj))
        logger.info(
            "created %s: %d node(s) running `%s`",
            where,
            obj["spec"]["trainer"]["numNodes"],
            command_line(obj),
        )
    except ApiException as exc:
        if exc.status != 409:
            raise TrainJobConfigError(
                f"{where}: the API server refused it ({exc.status} {exc.reason}): {exc.body}"
            ) from exc
        existing = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        if not _is_subset(obj["spec"], existing.get("spec")):
            raise TrainJobConfigError(
                f"{where} already exists with another spec; delete it or choose another name"
            ) from exc
        logger.info("%s already exists with this spec (a retried step): waiting for it", where)
    deadline = clock() + timeout
    last: dict[str, Any] = dict(obj)
    while True:
        try:
            last = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                raise TrainJobFailedError(f"{where} was deleted while waiting for it") from exc
            logger.warning("%s: status read failed (%s %s); retrying", where, exc.status, exc.reason)
        if _condition(last, "Complete"):
            logger.info("%s completed", where)
            return last
        failed = _condition(last, "Failed")
        if failed:
            raise TrainJobFailedError(
                f"{where} failed: {failed.get('reason', '?')}: {failed.get('message', '')} "
                f"(kubectl -n {namespace} describe trainjob {name}; pod logs: kubectl -n {namespace} logs "
                f"-l jobset.sigs.k8s.io/jobset-name={name})"
            )
        remaining = deadline - clock()
        if remaining <= 0:
            conditions = [c.get("type") for c in (last.get("status") or {}).get("conditions") or []]
            raise TrainJobTimeoutError(
                f"{where} not finished after {timeout:.0f} s (conditions {conditions}); it keeps running: "
                f"kubectl -n {namespace} delete trainjob {name} to stop it"
            )
        sleep(min(poll, remaining))


__all__ = [
    "API_VERSION",
    "DEFAULT_RUNTIME",
    "TrainJobConfigError",
    "TrainJobFailedError",
    "TrainJobTimeoutError",
    "build_trainjob",
    "command_line",
    "exported_model_dir",
    "submit_and_wait",
    "training_args",
    "validate_trainer_object",
]
