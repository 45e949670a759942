"""How difiisr's steps run on a Kubeflow cluster: resources, GPUs, /dev/shm, the work volume, credentials,
retries and caching. Applied to every task of both pipelines; ``kfp.local`` ignores all of it.

Names refer to the Kubernetes objects of ``infra/k8s``: the Secret ``difiisr-secrets`` (keys in
``infra/k8s/secrets.example.env``; its values reach the pods as environment variables and never appear in the
compiled pipeline), the ConfigMap ``difiisr-config`` (service endpoints) and the ReadWriteMany PVC
``difiisr-work`` (training checkpoints that survive a retried or preempted pod).

Caching is off for every task: each step writes this run's MLflow lineage (a cached step would leave a hole in
it), and a cached ``train`` would hand a stale model to a new run.
"""

from __future__ import annotations

import dataclasses

from kfp import kubernetes
from kfp.dsl import PipelineTask

SECRET_NAME = "difiisr-secrets"
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
CONFIG_MAP_NAME = "difiisr-config"
CONFIG_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
WORK_PVC = "difiisr-work"
WORK_MOUNT = "/work"
WORK_ROOT = f"{WORK_MOUNT}/runs"  # training work folders: WORK_ROOT/KFP_RUN_ID/train
GPU_RESOURCE = "nvidia.com/gpu"
SHM_VOLUME = "dshm"


@dataclasses.dataclass(frozen=True)
class Retry:
    """Retries with exponential backoff: ``backoff`` before the first, times ``factor`` after each, at most ``cap``."""

    count: int
    backoff: str = "30s"
    factor: float = 2.0
    cap: str = "900s"


# Steps that talk to storage (DVC remote, MLflow, S3) retry transient failures; train retries to resume after a
# preemption (its checkpoints are on the work volume). Data checks are deterministic and do not retry.
STORAGE_RETRY = Retry(3)
TRAIN_RETRY = Retry(2, backoff="60s")


def stage(task: PipelineTask) -> PipelineTask:
    """A sub-pipeline task (a stage of several steps): never cached, like its steps."""
    return task.set_caching_options(enable_caching=False)


def _common(task: PipelineTask, cpu: str, memory: str, retry: Retry | None) -> PipelineTask:
    stage(task)
    task.set_cpu_request(cpu).set_memory_request(memory)
    kubernetes.use_secret_as_env(task, secret_name=SECRET_NAME, secret_key_to_env={k: k for k in SECRET_ENV})
    kubernetes.use_config_map_as_env(
        task, config_map_name=CONFIG_MAP_NAME, config_map_key_to_env={k: k for k in CONFIG_ENV}
    )
    if retry is not None:
        task.set_retry(
            num_retries=retry.count,
            backoff_duration=retry.backoff,
            backoff_factor=retry.factor,
            backoff_max_duration=retry.cap,
        )
    return task


def cpu_step(task: PipelineTask, *, cpu: str, memory: str, retry: Retry | None = None) -> PipelineTask:
    """A CPU-only step: requests, credentials from the Secret, endpoints from the ConfigMap, no caching."""
    return _common(task, cpu, memory, retry)


def gpu_step(
    task: PipelineTask,
    *,
    gpus,
    cpu: str,
    memory: str,
    retry: Retry | None = None,
    shm: str | None = None,
) -> PipelineTask:
    """A GPU step: ``gpus`` (an int or a pipeline parameter) NVIDIA GPUs, the GPU taint tolerated, and for
    DataLoader workers a memory-backed ``/dev/shm`` of ``shm`` (e.g. ``16Gi``) when given."""
    _common(task, cpu, memory, retry)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    if shm is not None:
        kubernetes.empty_dir_mount(
            task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory", size_limit=shm
        )
    return task


def with_work_volume(task: PipelineTask) -> PipelineTask:
    """Mount the shared work PVC at ``WORK_MOUNT`` (training checkpoints; multi-node pairs and configs)."""
    kubernetes.mount_pvc(task, pvc_name=WORK_PVC, mount_path=WORK_MOUNT)
    return task


def with_namespace_env(task: PipelineTask) -> PipelineTask:
    """Expose the pod's namespace as ``POD_NAMESPACE`` (downward API): where the train step creates its TrainJob.

    The run's service account must be allowed to create TrainJobs there (``difiisr-pipeline`` in infra/k8s).
    """
    kubernetes.use_field_path_as_env(task, env_name="POD_NAMESPACE", field_path="metadata.namespace")
    return task
