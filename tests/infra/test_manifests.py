"""Kubernetes manifests (infra/k8s): every kustomization renders with the real kustomize (`kubectl
kustomize`), every built-in object validates offline against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), and the security and wiring rules hold for every workload.

kubernetes-validate has no schemas for Kubeflow's CRDs (TrainingRuntime, TrainJob): every rendered Trainer
object is validated against the Trainer API models of ``kubeflow_trainer_api`` with unknown fields refused
(``difiisr.training.trainjob.validate_trainer_object``), and the pod template a TrainingRuntime embeds is
validated as a core/v1 Pod as well.
"""

from __future__ import annotations

import configparser
import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from difiisr.container import image_ref

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
OVERLAYS = {"dev": "difiisr-dev", "prod": "difiisr"}  # overlay -> namespace
TARGETS = ["base", "overlays/dev", "overlays/prod", "examples"]
# an older Kubernetes minor still in wide use, and the newest schemas kubernetes-validate ships
K8S_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job", "TrainingRuntime"}
SERVING_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}  # long-running: probes apply
SECRET_NAME_RE = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


# ------------------------------------------------------------------------------------------ rendering


@functools.cache
def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render infra/k8s: install kubectl")
    return found


@functools.cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize infra/k8s/TARGET` renders."""
    out = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / target)], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, f"kustomize {target} failed:\n{out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def by_kind(objs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    """The rendered objects of ``kind`` by name."""
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec a workload object runs."""
    kind, spec = obj["kind"], obj["spec"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return spec["template"]["spec"]
    if kind == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "TrainingRuntime":
        (job,) = spec["template"]["spec"]["replicatedJobs"]
        return job["template"]["spec"]["template"]["spec"]
    raise AssertionError(f"not a workload: {kind}")


def workloads(objs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, object, pod spec) for every workload."""
    for o in objs:
        if o["kind"] in WORKLOAD_KINDS:
            yield f"{o['kind']}/{o['metadata']['name']}", o, pod_spec(o)


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def secret_refs(node: Any) -> Iterator[tuple[str, str | None]]:
    """(Secret name, key or None) for every Secret reference anywhere in ``node``."""
    if isinstance(node, dict):
        if isinstance(node.get("secretKeyRef"), dict):
            yield node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]
        if isinstance(node.get("secretRef"), dict) and "name" in node["secretRef"]:
            yield node["secretRef"]["name"], None
        if isinstance(node.get("secretName"), str):
            yield node["secretName"], None
        for value in node.values():
            yield from secret_refs(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from secret_refs(value)


def inline_secret_values(node: Any) -> Iterator[str]:
    """Names of env-style entries ({name, value}) anywhere in ``node`` whose name looks like a secret."""
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and "value" in node and SECRET_NAME_RE.search(node["name"]):
            yield node["name"]
        for value in node.values():
            yield from inline_secret_values(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from inline_secret_values(value)


def secrets_doc() -> tuple[dict[str, str], str]:
    """(KEY -> example value) of secrets.example.env, and its full text."""
    text = (K8S / "secrets.example.env").read_text()
    keys = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys[key] = value
    return keys, text


# ------------------------------------------------------------------------------------ render + schema


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_every_builtin_object_validates(target: str) -> None:
    objs = render(target)
    assert objs, f"{target} rendered nothing"
    crds = {"TrainingRuntime", "TrainJob"}
    for obj in objs:
        if obj["kind"] in crds:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError
    # the validator is strict enough to catch a misspelt field
    deployment = next((o for o in objs if o["kind"] == "Deployment"), None)
    if deployment is not None:
        broken = yaml.safe_load(yaml.safe_dump(deployment))
        broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_crds_have_no_schema_here_and_their_pod_templates_validate_as_pods() -> None:
    runtime = by_kind(render("overlays/prod"), "TrainingRuntime")["difiisr-torch"]
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(runtime, K8S_VERSIONS[-1], strict=True)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "node"}, "spec": pod_spec(runtime)}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_every_trainer_object_validates_against_the_trainer_api_models(target: str) -> None:
    from difiisr.training.trainjob import validate_trainer_object

    trainer_objs = [o for o in render(target) if o["apiVersion"].startswith("trainer.kubeflow.org/")]
    for obj in trainer_objs:
        validate_trainer_object(obj)  # raises TrainJobConfigError naming every unknown or mistyped field
    kinds = {o["kind"] for o in trainer_objs}
    assert kinds == ({"TrainJob"} if target == "examples" else {"TrainingRuntime"}), target


def test_training_runtime_structure() -> None:
    for overlay in OVERLAYS:
        runtime = by_kind(render(f"overlays/{overlay}"), "TrainingRuntime")["difiisr-torch"]
        assert runtime["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
        assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
        # Trainer API 2.3: TorchMLPolicySource has only envInjection; processes per node are a TrainJob setting
        assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
        (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
        assert job["name"] == "node"
        assert (
            job["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
        )
        (node,) = pod_spec(runtime)["containers"]
        assert node["name"] == "node"
        assert node["command"] == ["torchrun"]
        shm = {v["name"]: v for v in pod_spec(runtime)["volumes"]}["dshm"]
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {m["mountPath"] for m in node["volumeMounts"]} >= {"/tmp", "/dev/shm", "/work"}


def test_trainjob_example_is_two_nodes_by_eight_gpus_running_difiisr_train() -> None:
    (job,) = render("examples")
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63  # the CRD's own rule
    assert set(job["spec"]) == {"runtimeRef", "trainer"}
    ref = job["spec"]["runtimeRef"]
    assert ref == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": "difiisr-torch"}
    for overlay in OVERLAYS:  # the runtime it names is deployed by every overlay
        assert "difiisr-torch" in by_kind(render(f"overlays/{overlay}"), "TrainingRuntime")
    trainer = job["spec"]["trainer"]
    allowed = {"image", "command", "args", "env", "numNodes", "resourcesPerNode", "numProcPerNode"}
    assert set(trainer) <= allowed, f"unknown Trainer fields: {set(trainer) - allowed}"
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 8
    for part in ("requests", "limits"):
        assert trainer["resourcesPerNode"][part]["nvidia.com/gpu"] == "8"
        assert {"cpu", "memory"} <= set(trainer["resourcesPerNode"][part])
    assert trainer["image"] == image_ref("cuda", environ={})
    # torchrun takes its rendezvous from the PET_* variables the Trainer sets; difiisr's CLI does the rest
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"][:3] == ["--module", "difiisr.cli.main", "train"]
    assert "--config" in trainer["args"] and "--resume" in trainer["args"]
    env = {e["name"]: e["value"] for e in trainer["env"]}
    expanded = [_expand(a, env) for a in trainer["args"]]  # KeyError: an undefined $(VAR)
    assert expanded[expanded.index("--config") + 1] == "/work/configs/train_x4.yaml"
    from difiisr.cli.main import VERBS

    assert VERBS["train"][0] == "difiisr.cli.train"


# ----------------------------------------------------------------------------------------- security


@pytest.mark.parametrize("target", TARGETS)
def test_every_workload_is_locked_down(target: str) -> None:
    for label, obj, spec in workloads(render(target)):
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, label
        assert isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, label
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, label
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            where = f"{label} container {c['name']}"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc.get("privileged", False) is False, where
            # every container here can run with a read-only root: writes go to emptyDir/PVC mounts
            assert sc["readOnlyRootFilesystem"] is True, where
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{where}: no emptyDir on /tmp"
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), f"{where}: {part}"
            if "nvidia.com/gpu" in c["resources"]["limits"]:
                assert (
                    c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
                )
            if obj["kind"] in SERVING_KINDS:
                assert "readinessProbe" in c and "livenessProbe" in c, f"{where}: probes"
            else:
                # Jobs run to completion and serve nothing: readiness gates no traffic and a liveness restart
                # of a batch step would only lose work; activeDeadlineSeconds/backoffLimit bound them instead.
                assert "readinessProbe" not in c and "livenessProbe" not in c, where
        if obj["kind"] == "CronJob":
            job = obj["spec"]["jobTemplate"]["spec"]
            assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] >= 0, label
        # only the pipeline's submitter identity gets a Kubernetes API token
        assert spec.get("automountServiceAccountToken") is False, label


def test_rbac_allows_only_trainjob_create_get_list_watch() -> None:
    for overlay, namespace in OVERLAYS.items():
        objs = render(f"overlays/{overlay}")
        (role,) = by_kind(objs, "Role").values()
        assert role["rules"] == [
            {
                "apiGroups": ["trainer.kubeflow.org"],
                "resources": ["trainjobs"],
                "verbs": ["create", "get", "list", "watch"],
            }
        ]
        assert by_kind(objs, "ClusterRole") == {} and by_kind(objs, "ClusterRoleBinding") == {}
        (binding,) = by_kind(objs, "RoleBinding").values()
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "difiisr-pipeline", "namespace": namespace}
        ]
        assert "difiisr-pipeline" in by_kind(objs, "ServiceAccount")
        assert all(o["metadata"].get("namespace") == namespace for o in objs), overlay


def test_secrets_are_referenced_by_name_only_and_documented() -> None:
    documented_keys, doc_text = secrets_doc()
    for key, value in documented_keys.items():  # the example holds no real secret
        if SECRET_NAME_RE.search(key):
            assert value == "", f"secrets.example.env: {key} must be left empty"
    for target in TARGETS:
        objs = render(target)
        assert by_kind(objs, "Secret") == {}, f"{target} inlines a Secret"
        assert list(inline_secret_values(objs)) == [], f"{target}: secret-like values written inline"
        for cm in by_kind(objs, "ConfigMap").values():
            assert not [k for k in cm.get("data", {}) if SECRET_NAME_RE.search(k)], cm["metadata"]["name"]
        for name, key in set(secret_refs(objs)):
            assert f"Secret {name}" in doc_text, (
                f"{target}: Secret {name} is not documented in secrets.example.env"
            )
            if name == "difiisr-secrets" and key is not None:
                assert key in documented_keys, (
                    f"{target}: key {key} of difiisr-secrets not in secrets.example.env"
                )
    # the kfp launcher's secretRef uses documented keys too
    for overlay in OVERLAYS:
        launcher = by_kind(render(f"overlays/{overlay}"), "ConfigMap")["kfp-launcher"]
        ref = yaml.safe_load(launcher["data"]["providers"])["s3"]["default"]["credentials"]["secretRef"]
        assert ref["secretName"] == "difiisr-secrets"
        assert {ref["accessKeyKey"], ref["secretKeyKey"]} <= set(documented_keys)


# ------------------------------------------------------------------------------------------- wiring


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_images_are_the_project_image_ref_or_pinned(overlay: str) -> None:
    expected = {image_ref("cpu", environ={}), image_ref("cuda", environ={})}
    seen = set()
    for label, _, spec in workloads(render(f"overlays/{overlay}")):
        for c in containers(spec):
            image = c["image"]
            assert not image.startswith("difiisr-"), f"{label}: placeholder {image} left"
            if image.startswith("ghcr.io/difiisr/"):
                assert image in expected, f"{label}: {image} is not difiisr.container.image_ref(...)"
                seen.add(image)
            else:
                name, _, tag = image.rpartition(":")
                assert name and tag and tag != "latest", f"{label}: {image} is not pinned to a tag"
    assert image_ref("cpu", environ={}) in seen  # MLflow runs on the CPU image
    assert image_ref("cuda", environ={}) in seen  # training and batch upscaling on the CUDA image


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_configmap_references_resolve(overlay: str) -> None:
    objs = render(f"overlays/{overlay}")
    configmaps = by_kind(objs, "ConfigMap")
    for label, _, spec in workloads(objs):
        for c in containers(spec):
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] in configmaps, f"{label}: {src}"
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["name"] in configmaps, f"{label}: {ref['name']} not rendered"
                    assert ref["key"] in configmaps[ref["name"]]["data"], f"{label}: key {ref['key']}"


def _config(objs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (cm,) = [o for n, o in by_kind(objs, "ConfigMap").items() if n.startswith("difiisr-config-")]
    return cm["data"]


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], value)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_mlflow_server_command_parses_and_is_wired(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.cli import server

    namespace = OVERLAYS[overlay]
    objs = render(f"overlays/{overlay}")
    config = _config(objs)
    (c,) = by_kind(objs, "Deployment")["mlflow"]["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["/usr/bin/tini", "--", "mlflow", "server"]
    env_src = {e["name"]: e for e in c["env"]}
    for key in (
        "MLFLOW_BACKEND_STORE_URI",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
    ):
        assert env_src[key]["valueFrom"]["secretKeyRef"]["name"] == "difiisr-secrets", key
    values = {"POD_NAMESPACE": namespace}
    for name, e in env_src.items():
        if "value" in e:
            values[name] = e["value"]
        elif "configMapKeyRef" in e["valueFrom"]:
            values[name] = config[e["valueFrom"]["configMapKeyRef"]["key"]]
    args = [_expand(a, values) for a in c["args"]]
    # the real `mlflow server` CLI accepts these arguments, with the env the pod gets
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", values["MLFLOW_ARTIFACTS_DESTINATION"])
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "postgresql+psycopg2://u:p@db:5432/mlflow")
    params = server.make_context("server", list(args)).params
    assert params["serve_artifacts"] is True
    assert params["app_name"] == "basic-auth"
    assert params["host"] == "0.0.0.0" and params["port"] == 5000
    assert params["backend_store_uri"].startswith("postgresql")
    assert re.fullmatch(r"s3://[a-z0-9.-]+/mlartifacts", params["artifacts_destination"])
    hosts = params["allowed_hosts"].split(",")
    (ingress,) = by_kind(objs, "Ingress").values()
    (rule,) = ingress["spec"]["rules"]
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": "mlflow", "port": {"name": "http"}}
    port = by_kind(objs, "Service")["mlflow"]["spec"]["ports"][0]["port"]
    for host in ("mlflow", f"mlflow.{namespace}.svc", f"mlflow.{namespace}.svc.cluster.local"):
        assert host in hosts and f"{host}:{port}" in hosts, host
    assert rule["host"] in hosts and config["MLFLOW_INGRESS_HOST"] == rule["host"]
    assert config["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"
    auth_mount = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}[
        str(Path(values["MLFLOW_AUTH_CONFIG_PATH"]).parent)
    ]
    volumes = {
        v["name"]: v for v in by_kind(objs, "Deployment")["mlflow"]["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes[auth_mount]["secret"]["secretName"] == "difiisr-mlflow-auth"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}


def test_mlflow_auth_template_is_read_by_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    # mlflow/server/auth/config.py, loaded on its own: the auth package's __init__ needs Flask-WTF, which the
    # server image has (infra/docker/server-requirements.txt) and the test environment does not
    import importlib.util

    import mlflow

    config_py = Path(mlflow.__file__).parent / "server" / "auth" / "config.py"
    spec = importlib.util.spec_from_file_location("_mlflow_auth_config", config_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    read_auth_config = module.read_auth_config

    path = K8S / "mlflow-auth.example.ini"
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    cfg = read_auth_config()
    assert cfg.default_permission in {"READ", "EDIT", "MANAGE", "NO_PERMISSIONS"}
    assert cfg.database_uri.startswith("postgresql+psycopg2://")
    assert cfg.admin_password is None  # comes from the Secret key MLFLOW_AUTH_ADMIN_PASSWORD only
    parser = configparser.ConfigParser()
    parser.read(path)
    assert "admin_password" not in parser["mlflow"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kfp_launcher_points_the_pipeline_root_at_s3(overlay: str) -> None:
    objs = render(f"overlays/{overlay}")
    data = by_kind(objs, "ConfigMap")["kfp-launcher"]["data"]
    assert re.fullmatch(r"s3://[a-z0-9.-]+/\S+", data["defaultPipelineRoot"])
    default = yaml.safe_load(data["providers"])["s3"]["default"]
    assert set(default) <= {"endpoint", "region", "disableSSL", "forcePathStyle", "maxRetries", "credentials"}
    assert default["credentials"]["fromEnv"] is False
    config = _config(objs)
    # the launcher and the workloads use the same S3 (the launcher's endpoint has no scheme)
    assert config["AWS_ENDPOINT_URL"].split("://", 1)[1] == default["endpoint"]
    assert default["disableSSL"] is config["AWS_ENDPOINT_URL"].startswith("http://")
    assert config["AWS_DEFAULT_REGION"] == default["region"]


def test_dev_runs_postgres_and_seaweedfs_in_cluster_prod_does_not() -> None:
    dev, prod = render("overlays/dev"), render("overlays/prod")
    dev_sets = by_kind(dev, "StatefulSet")
    assert set(dev_sets) == {"postgres", "seaweedfs"}
    assert by_kind(prod, "StatefulSet") == {}
    for name, sts in dev_sets.items():
        service = by_kind(dev, "Service")[sts["spec"]["serviceName"]]
        assert service["spec"]["clusterIP"] == "None", (
            f"{name}: a StatefulSet's governing Service is headless"
        )
        assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    pg_env = {e["name"]: e for e in pod_spec(dev_sets["postgres"])["containers"][0]["env"]}
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(pg_env)
    # SeaweedFS enforces credentials only when they are in its environment; its flags exist in `weed mini`
    (weed,) = pod_spec(dev_sets["seaweedfs"])["containers"]
    assert {e["name"] for e in weed["env"]} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert weed["args"][0] == "mini"
    help_text = subprocess.run(
        [str(Path(sys.executable).parent / "weed"), "mini", "-h"], capture_output=True, text=True, timeout=60
    )
    known = set(re.findall(r"^\s+-([a-zA-Z0-9.]+)", help_text.stdout + help_text.stderr, re.MULTILINE))
    for arg in weed["args"][1:]:
        assert arg.lstrip("-").split("=")[0] in known, f"weed mini has no flag {arg}"
    buckets = next(a for a in weed["args"] if a.startswith("-bucket=")).split("=")[1].split(",")
    config = _config(dev)
    for key in ("MLFLOW_ARTIFACTS_DESTINATION", "BATCH_INPUT_PREFIX", "BATCH_OUTPUT_PREFIX"):
        assert config[key].split("/")[2] in buckets, key
    launcher_root = by_kind(dev, "ConfigMap")["kfp-launcher"]["data"]["defaultPipelineRoot"]
    assert launcher_root.split("/")[2] in buckets


def test_batch_upscale_cronjob_runs_difiisr_batch_upscale_one_shard_per_pod() -> None:
    import argparse

    from difiisr.cli import batch_upscale
    from difiisr.cli.main import VERBS
    from difiisr.inference.settings import InferenceSettings
    from difiisr.storage.selection import Shard

    for overlay in OVERLAYS:
        objs = render(f"overlays/{overlay}")
        cron = by_kind(objs, "CronJob")["difiisr-batch-upscale"]
        assert len(cron["spec"]["schedule"].split()) == 5
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        assert cron["spec"]["suspend"] is (overlay == "prod")  # prod uses the KFP recurring run
        job = cron["spec"]["jobTemplate"]["spec"]
        assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"]
        (c,) = pod_spec(cron)["containers"]
        assert "command" not in c  # the image's entry point: tini -- difiisr
        assert c["args"][0] == "batch-upscale" and "batch-upscale" in VERBS
        config = _config(objs)
        assert [e["configMapRef"]["name"] for e in c["envFrom"]] == [
            n for n in by_kind(objs, "ConfigMap") if n.startswith("difiisr-config-")
        ]
        (index_env,) = [e for e in c["env"] if e["name"] == "SHARD_INDEX"]
        assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        )
        parser = argparse.ArgumentParser()
        batch_upscale.add_arguments(parser)
        shards = []
        for index in range(job["completions"]):  # what pod `index` runs, parsed by the verb's own parser
            env = {**config, "SHARD_INDEX": str(index)}
            args = parser.parse_args([_expand(a, env) for a in c["args"][1:]])  # KeyError: an unknown $(VAR)
            assert args.input.startswith("s3://") and args.output.startswith("s3://")
            assert args.model == config["BATCH_MODEL_URI"] == "models:/difiisr-x4@champion"
            assert args.device == "cuda" and args.no_progress
            InferenceSettings.from_args(args)  # valid settings
            shards.append(Shard.parse(args.shard))
        # N pods take shards 0/N .. N-1/N: together every key exactly once
        assert shards == [Shard(i, job["completions"]) for i in range(job["completions"])]
        # AWS_* for the S3 prefixes: endpoint from the ConfigMap, keys from the Secret
        assert "AWS_ENDPOINT_URL" in config and {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= {
            e["name"] for e in c["env"]
        }
