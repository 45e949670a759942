"""Both pipelines compile (Python API, the scripts' --compile, and `kfp dsl compile --py`), and the compiled specs
say what a cluster must do: the DAG edges, the promotion and multi-node conditions, GPUs, /dev/shm, the work
volume, credentials from the Secret only, retries on the storage steps, and no caching anywhere.

No Kubernetes cluster can run here, so the specs are checked as data; the local runs (test_local_dag.py) run
the same DAG with kfp.local.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from difiisr.container import image_ref
from difiisr.lifecycle import model_steps

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
}
GPU = "nvidia.com/gpu"


def _env(sentinels: dict[str, str], **extra: str) -> dict[str, str]:
    env = {**os.environ, **sentinels, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _kfp_cli() -> str:
    return str(Path(sys.executable).with_name("kfp"))


@pytest.mark.parametrize("name", ["train_eval", "batch_upscale"])
def test_kfp_cli_and_script_compile_the_same_package(name: str, tmp_path: Path, read_spec, leak_sentinels):
    script = ROOT / "pipelines" / f"{name}.py"
    by_cli, by_script = tmp_path / "cli.yaml", tmp_path / "script.yaml"
    env = _env(leak_sentinels)
    out = subprocess.run(
        [_kfp_cli(), "dsl", "compile", "--py", str(script), "--output", str(by_cli)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    out = subprocess.run(
        [sys.executable, str(script), "--compile", str(by_script)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"wrote {by_script}" in out.stdout
    assert by_cli.read_text() == by_script.read_text()
    spec = read_spec(by_cli)
    assert spec.spec["pipelineInfo"]["name"] == f"difiisr-{name.replace('_', '-')}"
    for value in leak_sentinels.values():
        assert value not in spec.text
    # importing (compiling) ran nothing: no local outputs appeared in the working directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.yaml", "script.yaml"]


def test_no_credential_value_in_either_package(train_eval_spec, batch_spec, leak_sentinels):
    for spec in (train_eval_spec, batch_spec):
        for value in leak_sentinels.values():
            assert value not in spec.text
        # Secrets are referenced by name and key only: no env entry of any container carries a literal value of a
        # credential variable, and nothing that looks like an AWS key id is in the package.
        for executor in spec.spec["deploymentSpec"]["executors"].values():
            for env in executor["container"].get("env", []):
                assert env["name"] not in SECRET_KEYS
        assert not re.search(r"AKIA[0-9A-Z]{16}", spec.text)


def _check_every_step(spec) -> set[str]:
    """Secrets, config map, requests, image and caching of every container task; returns the executor labels."""
    labels = set()
    for key, (_, task) in spec.all_tasks().items():
        assert task.get("cachingOptions", {}).get("enableCache") is not True, f"{key} may be cached"
        label = spec.executor_of(task)
        if label is None:
            continue
        labels.add(label)
        platform = spec.platform[label]
        (secret,) = platform["secretAsEnv"]
        assert secret["secretName"] == "difiisr-secrets"
        assert {(e["secretKey"], e["envVar"]) for e in secret["keyToEnv"]} == {(k, k) for k in SECRET_KEYS}
        (config,) = platform["configMapAsEnv"]
        assert config["configMapName"] == "difiisr-config"
        assert {e["envVar"] for e in config["keyToEnv"]} >= {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"}
        container = spec.container(label)
        assert container["image"] in {image_ref("cpu"), image_ref("cuda")}
        resources = container["resources"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"], label
        # the image carries kfp: nothing is pip-installed when a step starts
        assert "pip install" not in " ".join(container["command"]), label
    return labels


def test_train_eval_dag_edges(train_eval_spec):
    spec = train_eval_spec
    root = spec.dag()
    assert root["close-lineage"]["dependentTasks"] == ["exit-handler-1"]
    assert (
        root["close-lineage"]["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"]
        == "exit-handler-1"
    )
    body = spec.dag("comp-exit-handler-1")
    assert set(body) == {"version-data", "validate-data", "synthesize-degradations", "condition-branches-2"}
    assert (
        body["validate-data"]["inputs"]["artifacts"]["hr"]["taskOutputArtifact"]["producerTask"]
        == "version-data"
    )
    assert "validate-data" in body["synthesize-degradations"]["dependentTasks"]  # a broken rule stops the run
    pairs_in = body["synthesize-degradations"]["inputs"]["artifacts"]["hr"]["taskOutputArtifact"]
    assert pairs_in == {"outputArtifactKey": "hr", "producerTask": "version-data"}
    parent = body["validate-data"]["inputs"]["parameters"]["parent_run_id"]["taskOutputParameter"]
    assert parent == {"outputParameterKey": "parent_run_id", "producerTask": "version-data"}

    branches = spec.dag("comp-condition-branches-2")
    conditions = {t["triggerPolicy"]["condition"]: t["componentRef"]["name"] for t in branches.values()}
    multi = conditions["int(inputs.parameter_values['pipelinechannel--num_nodes']) > 1"]
    single = conditions["!(int(inputs.parameter_values['pipelinechannel--num_nodes']) > 1)"]
    for branch in (multi, single):
        tasks = spec.dag(branch)
        (train,) = [t for n, t in tasks.items() if n.startswith("train")]
        (release,) = [t for n, t in tasks.items() if n.startswith("difiisr-evaluate-release")]
        train_name = next(n for n in tasks if n.startswith("train"))
        assert release["dependentTasks"] == [train_name]
        model = release["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
        assert model == {"outputArtifactKey": "model", "producerTask": train_name}
        run_id = release["inputs"]["parameters"]["model_run_id"]["taskOutputParameter"]
        assert run_id == {"outputParameterKey": "Output", "producerTask": train_name}
        assert train["inputs"]["artifacts"]["pairs"]["componentInputArtifact"] == (
            "pipelinechannel--synthesize-degradations-pairs"
        )
        tail = spec.dag(release["componentRef"]["name"])
        assert tail["register"]["dependentTasks"] == ["evaluate"]  # register reads what evaluate logged
        assert tail["promote"]["inputs"]["parameters"]["version"]["taskOutputParameter"] == {
            "outputParameterKey": "version",
            "producerTask": "register",
        }
        (gate_name,) = [n for n in tail if n.startswith("condition")]
        gate = tail[gate_name]
        assert (
            gate["triggerPolicy"]["condition"]
            == "inputs.parameter_values['pipelinechannel--promote-Output'] == true"
        )
        gate_input = gate["inputs"]["parameters"]["pipelinechannel--promote-Output"]["taskOutputParameter"]
        assert gate_input == {"outputParameterKey": "Output", "producerTask": "promote"}
        (shards_task,) = spec.dag(gate["componentRef"]["name"]).values()
        model_uri = shards_task["inputs"]["parameters"]["model_uri"]
        assert model_uri["componentInputParameter"] == "pipelinechannel--register-champion_uri"
        shards = spec.dag(shards_task["componentRef"]["name"])
        loop_name = next(n for n in shards if n.startswith("for-loop"))
        assert shards[loop_name]["dependentTasks"] == ["plan-batch"]
        assert (
            shards[loop_name]["parameterIterator"]["items"]["inputParameter"]
            == "pipelinechannel--plan-batch-Output"
        )
        (upscale,) = spec.dag(shards[loop_name]["componentRef"]["name"]).values()
        assert upscale["componentRef"]["name"].startswith("comp-batch-upscale")


def test_train_eval_cluster_settings(train_eval_spec):
    spec = train_eval_spec
    labels = _check_every_step(spec)
    assert {label.rsplit("-", 1)[0] if label[-1].isdigit() else label for label in labels} == {
        "exec-version-data", "exec-validate-data", "exec-synthesize-degradations", "exec-train", "exec-evaluate",
        "exec-register", "exec-promote", "exec-plan-batch", "exec-batch-upscale", "exec-close-lineage",
    }  # fmt: skip
    # GPUs: the single-node trainer gets num_gpus, evaluation and each upscaling shard one; the TrainJob launcher none
    trainers = {
        label: spec.container(label)["resources"].get("accelerator") for label, _ in spec.find("train")
    }
    assert len(trainers) == 2
    gpu_trainers = [a for a in trainers.values() if a]
    assert gpu_trainers == [
        {
            "resourceCount": "{{$.inputs.parameters['pipelinechannel--num_gpus']}}",
            "resourceType": GPU,
            "type": GPU,
        }
    ]
    for prefix in ("evaluate", "batch-upscale"):
        for label, _ in spec.find(prefix):
            accelerator = spec.container(label)["resources"]["accelerator"]
            assert (accelerator["resourceType"], accelerator["resourceCount"]) == (GPU, "1"), label
            assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec.platform[label][
                "tolerations"
            ]
    for prefix in (
        "version-data",
        "validate-data",
        "synthesize-degradations",
        "register",
        "promote",
        "plan-batch",
    ):
        for label, _ in spec.find(prefix):
            assert "accelerator" not in spec.container(label)["resources"], label
            assert spec.container(label)["image"] == image_ref("cpu")
    # training: /dev/shm in memory for DataLoader workers, and the work volume for resumable checkpoints
    for label in trainers:
        assert spec.container(label)["image"] == image_ref("cuda")
        assert spec.platform[label]["pvcMount"][0]["mountPath"] == "/work"
        assert spec.platform[label]["pvcMount"][0]["constant"] == "difiisr-work"
    (gpu_label,) = [label for label, a in trainers.items() if a]
    (launcher_label,) = [label for label, a in trainers.items() if not a]
    # the TrainJob launcher creates the job in its own namespace (downward API), the GPU trainer needs none
    assert spec.platform[launcher_label]["fieldPathAsEnv"] == [
        {"fieldPath": "metadata.namespace", "name": model_steps.NAMESPACE_ENV}
    ]
    assert "fieldPathAsEnv" not in spec.platform[gpu_label]
    assert spec.platform[gpu_label]["emptyDirMounts"] == [
        {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "16Gi", "volumeName": "dshm"}
    ]
    # the trainer is told which image to launch a TrainJob with: the same project image
    for _, task in spec.find("train"):
        assert task["inputs"]["parameters"]["image"]["runtimeValue"]["constant"] == image_ref("cuda")


def _retry(task: dict) -> dict | None:
    return task.get("retryPolicy")


def test_train_eval_retries(train_eval_spec):
    spec = train_eval_spec
    storage = (
        "version-data",
        "evaluate",
        "register",
        "promote",
        "plan-batch",
        "batch-upscale",
        "close-lineage",
    )
    for prefix in storage:
        found = spec.find(prefix)
        assert found, prefix
        for label, task in found:
            assert _retry(task) == {
                "backoffDuration": "30s", "backoffFactor": 2.0, "backoffMaxDuration": "900s", "maxRetryCount": 3,
            }, label  # fmt: skip
    for label, task in spec.find("train"):  # resumes from its checkpoints on the work volume
        assert _retry(task)["maxRetryCount"] == 2, label
    for prefix in (
        "validate-data",
        "synthesize-degradations",
    ):  # deterministic: a retry would fail the same way
        for label, task in spec.find(prefix):
            assert _retry(task) is None, label


def test_train_eval_parameters(train_eval_spec):
    params = train_eval_spec.spec["root"]["inputDefinitions"]["parameters"]
    for name in (
        "dataset_repo", "dataset_path", "dataset_rev", "preset", "training_steps", "num_gpus", "num_nodes",
        "promotion_metric", "promotion_margin", "batch_input_uri", "batch_output_uri",
    ):  # fmt: skip
        assert name in params, name
    assert params["preset"]["defaultValue"] == "train_tiny"
    assert params["promotion_margin"]["parameterType"] == "NUMBER_DOUBLE"
    assert params["work_root"]["defaultValue"] == "/work/runs"
    # the KFP run id reaches the lineage steps as the run-time placeholder
    version = train_eval_spec.dag("comp-exit-handler-1")["version-data"]
    assert (
        version["inputs"]["parameters"]["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    )


def test_batch_pipeline_spec(batch_spec):
    spec = batch_spec
    labels = _check_every_step(spec)
    assert {re.sub(r"-\d+$", "", label) for label in labels} == {
        "exec-plan-batch",
        "exec-batch-upscale",
        "exec-close-lineage",
    }
    params = spec.spec["root"]["inputDefinitions"]["parameters"]
    assert params["model_uri"]["defaultValue"] == "models:/difiisr-x4@champion"
    assert {"input_uri", "output_uri", "shards", "glob", "inference"} <= set(params)
    body = spec.dag("comp-exit-handler-1")
    (shards_task,) = body.values()
    shards = spec.dag(shards_task["componentRef"]["name"])
    loop = shards["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-batch-Output"
    (upscale,) = spec.dag(loop["componentRef"]["name"]).values()
    inputs = upscale["inputs"]["parameters"]
    # every shard gets its work order (shard index, pinned model, parent run) from the plan
    for key, field in (("shard", "shard"), ("model_uri", "model_uri"), ("parent_run_id", "parent_run_id")):
        assert inputs[key]["componentInputParameter"] == "pipelinechannel--plan-batch-Output-loop-item"
        assert inputs[key]["parameterExpressionSelector"] == f'parseJson(string_value)["{field}"]'
    for label, task in spec.find("batch-upscale"):
        assert spec.container(label)["resources"]["accelerator"]["resourceCount"] == "1"
        assert _retry(task)["maxRetryCount"] == 3


def test_image_override_reaches_every_step(tmp_path: Path, leak_sentinels):
    image = "registry.example.com/team/difiisr@sha256:" + "ab" * 32
    out = tmp_path / "te.yaml"
    done = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "train_eval.py"), "--compile", str(out)],
        cwd=tmp_path, env=_env(leak_sentinels, DIFIISR_IMAGE=image), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    images = {
        e["container"]["image"]
        for e in yaml.safe_load(out.read_text().split("\n---\n")[0])["deploymentSpec"]["executors"].values()
    }
    assert images == {image}


def test_cluster_settings_name_what_infra_k8s_defines():
    from pipelines import cluster

    secret_keys = {
        line.split("=", 1)[0]
        for line in (ROOT / "infra/k8s/secrets.example.env").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert set(cluster.SECRET_ENV) <= secret_keys
    kustomization = yaml.safe_load((ROOT / "infra/k8s/base/kustomization.yaml").read_text())
    (config,) = [g for g in kustomization["configMapGenerator"] if g["name"] == cluster.CONFIG_MAP_NAME]
    assert set(cluster.CONFIG_ENV) <= {item.split("=", 1)[0] for item in config["literals"]}
    pvc = yaml.safe_load((ROOT / "infra/k8s/base/work-pvc.yaml").read_text())
    assert pvc["metadata"]["name"] == cluster.WORK_PVC
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    runtime = (ROOT / "infra/k8s/base/training-runtime.yaml").read_text()
    assert (
        f"mountPath: {cluster.WORK_MOUNT}\n" in runtime
    )  # TrainJob nodes see the work folder where the step does
