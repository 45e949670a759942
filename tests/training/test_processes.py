"""Training as separate processes: SIGTERM preemption and resume, and a 2-rank CPU (gloo) Accelerate run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from difiisr.models import load_checkpoint
from difiisr.models.preset import load_preset
from difiisr.models.swin_unet import SwinUNet
from difiisr.training import EXIT_PREEMPTED, train
from difiisr.training.checkpoint_format import CHECKPOINT_FILES
from difiisr.training.checkpointing import latest_checkpoint, read_marker
from difiisr.training.config import MlflowConfig

ACCELERATE = Path(sys.executable).with_name("accelerate")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _logged_steps(out: Path) -> list[int]:
    """Steps in metrics.jsonl while a run may be appending to it (a partly written last line is skipped)."""
    path = out / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            continue
    return steps


def _saved_step(out: Path) -> int:
    checkpoint = latest_checkpoint(out)
    return read_marker(checkpoint)["step"] if checkpoint is not None else 0


def _loads_into_tiny_unet(checkpoint: Path) -> None:
    unet = SwinUNet(load_preset("tiny").unet)
    load_checkpoint(unet, checkpoint / "model.safetensors", strict=True)


def _wait_for(proc: subprocess.Popen, condition, what: str, stderr) -> None:
    """Poll ``condition()`` every 50 ms for up to 180 s while ``proc`` runs; fail (killing it) otherwise."""
    deadline = time.monotonic() + 180
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"training exited early with {proc.returncode}: {stderr()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within 180 s")
        time.sleep(0.05)


def _tiny_cli(train_pairs: Path, out: Path, save_every: int) -> list[str]:
    """``difiisr train`` of the tiny preset, logging every step (``max_steps`` is added by the caller)."""
    return [
        sys.executable, "-m", "difiisr.cli.main", "--log-level", "WARNING", "train", "--config", "train_tiny",
        "--set", f"data.train_dir={train_pairs}", "--set", "data.batch_size=2", "--set", "log_every=1",
        "--set", f"save_every={save_every}", "--set", "mlflow.enabled=false", "--set", f"out_dir={out}",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigterm_saves_a_loadable_checkpoint_and_resume_continues(tmp_path: Path, train_pairs: Path) -> None:
    out = tmp_path / "run"
    cmd = _tiny_cli(train_pairs, out, save_every=1000)
    proc = subprocess.Popen(
        [*cmd, "--set", "max_steps=1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    # the first logged step: the handler is installed and training is under way
    _wait_for(proc, lambda: bool(_metrics(out)), "a training step logged", lambda: proc.stderr.read())
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == EXIT_PREEMPTED, stderr
    assert "preempted" in stdout and "--resume" in stdout

    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None
    saved = read_marker(checkpoint)["step"]
    assert 1 <= saved < 1000
    _loads_into_tiny_unet(checkpoint)

    # the same command with --resume continues from the saved step (here to two more steps) and exports
    done = _resume(cmd, max_steps=saved + 2)
    assert done.returncode == 0, done.stderr
    assert f"completed at step {saved + 2}" in done.stdout
    assert [r["step"] for r in _metrics(out)][-2:] == [saved + 1, saved + 2]
    assert (out / "model" / "unet.safetensors").is_file()


def _resume(cmd: list[str], max_steps: int) -> subprocess.CompletedProcess[str]:
    """Rerun a training command with ``--resume`` up to ``max_steps``."""
    return subprocess.run(
        [*cmd, "--set", f"max_steps={max_steps}", "--resume"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )


def _launch_two_ranks(args: list[str], tracking: str) -> subprocess.CompletedProcess[str]:
    """``accelerate launch`` of ``python ARGS`` on 2 CPU ranks (gloo)."""
    cmd = [
        str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *args,
    ]  # fmt: skip
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=400,
        env=_env(ACCELERATE_USE_CPU="true", MLFLOW_TRACKING_URI=tracking),
    )


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_logs_every_step_once(
    tmp_path: Path, train_pairs: Path
) -> None:
    # SIGKILL (OOM killer, node loss) gives no chance to save: the steps logged after the last checkpoint are
    # trained again on resume, and metrics.jsonl must not list them twice
    out = tmp_path / "run"
    cmd = _tiny_cli(train_pairs, out, save_every=3)
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as err:  # a file, not a pipe: the progress bar cannot fill it and block the run
        proc = subprocess.Popen(
            [*cmd, "--set", "max_steps=1000"], stdout=subprocess.DEVNULL, stderr=err, env=_env()
        )
        _wait_for(
            proc,
            lambda: _saved_step(out) >= 3 and max(_logged_steps(out), default=0) > _saved_step(out),
            "a step logged after a checkpoint",
            lambda: errors.read_text()[-3000:],
        )
        proc.kill()
        proc.wait(timeout=60)
    saved, logged = _saved_step(out), max(_logged_steps(out))
    assert logged > saved >= 3  # steps saved+1 .. logged will be trained (and logged) again

    done = _resume(cmd, max_steps=logged + 2)
    assert done.returncode == 0, done.stderr
    assert f"completed at step {logged + 2}" in done.stdout
    assert [r["step"] for r in _metrics(out)] == list(range(1, logged + 3))


@pytest.mark.slow
def test_two_cpu_ranks_match_one_process_and_only_rank0_writes(
    tmp_path: Path, train_pairs: Path, tiny_config
) -> None:
    two = tiny_config(
        tmp_path / "two", train_pairs, max_steps=3, mlflow=MlflowConfig(enabled=True, experiment="ddp")
    )
    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump(two.to_dict()))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = ["-m", "difiisr.cli.main", "--log-level", "WARNING", "train", "--config", str(config_file)]
    proc = _launch_two_ranks(cmd, tracking)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("completed at step 3 (2 process(es))") == 1  # only rank 0 prints the summary

    # only rank 0 wrote: each step logged once, one MLflow run, one model folder
    records = _metrics(tmp_path / "two")
    assert [r["step"] for r in records] == [1, 2, 3]
    client = mlflow.MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("ddp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["num_processes"] == "2"
    assert (tmp_path / "two" / "model" / "unet.safetensors").is_file()

    # the checkpoint: written once by rank 0 (no per-rank files: all randomness is seeded by step and sample
    # position, so there is no RNG state to save), our marker, and weights that load strictly
    checkpoint = latest_checkpoint(tmp_path / "two")
    names = {p.name for p in checkpoint.iterdir()}
    assert names == set(CHECKPOINT_FILES) and {"model.safetensors", "difiisr_state.json"} <= names
    assert not any(name.endswith(".pkl") for name in names)
    assert read_marker(checkpoint)["num_processes"] == 2
    _loads_into_tiny_unet(checkpoint)

    # same global batch in one process: per-sample data and noise do not depend on the rank, so the losses
    # agree up to the order of floating-point sums (step 1: same weights; later steps: Adam amplifies the
    # last-bit differences of the all-reduced gradients a little)
    one = train(tiny_config(tmp_path / "one", train_pairs, max_steps=3))
    losses = [r["loss"] for r in records]
    assert losses[0] == pytest.approx(one.losses[0], rel=1e-5)
    assert losses == pytest.approx(list(one.losses), rel=2e-3)


@pytest.mark.slow
def test_two_cpu_ranks_resume_on_the_uninterrupted_trajectory(
    tmp_path: Path, train_pairs: Path, tiny_config
) -> None:
    # both ranks read the checkpoint written by rank 0 (safetensors + JSON) and continue the same trajectory
    cfgs = {
        name: tiny_config(tmp_path / name, train_pairs, max_steps=3, ema_decay=0.8)
        for name in ("straight", "split")
    }
    cmd = {}
    for name, cfg in cfgs.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        cmd[name] = [
            "-m",
            "difiisr.cli.main",
            "--log-level",
            "WARNING",
            "train",
            "--config",
            str(tmp_path / f"{name}.yaml"),
        ]
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    straight = _launch_two_ranks(cmd["straight"], tracking)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = _launch_two_ranks([*cmd["split"], "--stop-after", "1"], tracking)
    assert first.returncode == 0 and "stopped at step 1 (2 process(es))" in first.stdout, first.stderr[-3000:]
    second = _launch_two_ranks([*cmd["split"], "--resume"], tracking)
    assert second.returncode == 0 and "completed at step 3 (2 process(es))" in second.stdout, second.stderr[
        -3000:
    ]

    assert [r["step"] for r in _metrics(tmp_path / "split")] == [1, 2, 3]
    split_losses = [r["loss"] for r in _metrics(tmp_path / "split")]
    assert split_losses == pytest.approx([r["loss"] for r in _metrics(tmp_path / "straight")], rel=1e-6)
    a = tmp_path / "straight" / "model" / "unet.safetensors"
    b = tmp_path / "split" / "model" / "unet.safetensors"
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-6, atol=1e-7), key
