"""The training loop: Accelerate (1 process or ``accelerate launch`` N), resumable, EMA, MLflow-tracked.

One optimizer step consumes a global batch of ``data.batch_size`` samples: ``num_processes x grad_accum``
micro-batches. Everything random is drawn from seeds derived from ``(seed, what, sample position or step)``
(``difiisr.training.seeds``), so a resumed run repeats an uninterrupted one, and the diffusion noise and time step
of a sample do not depend on which rank trains it.

Only the main process writes files (``train_config.yaml``, ``metrics.jsonl``, checkpoint markers, validation
grids, the exported model folder) and talks to MLflow; Accelerate's ``save_state`` additionally writes one
``random_states_R.pkl`` per rank R into each checkpoint folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from difiisr.config import flatten
from difiisr.data.fingerprint import dataset_md5
from difiisr.models.preset import ModelPreset, load_preset
from difiisr.storage import atomic_write_text
from difiisr.training.checkpointing import (
    EXIT_PREEMPTED,
    ResumeError,
    StopFlag,
    TrainingState,
    latest_checkpoint,
    list_checkpoints,
    next_checkpoint_number,
    read_marker,
    write_marker,
)
from difiisr.training.config import TrainConfig
from difiisr.training.data import MicroBatchStream, PatchDataset, ResumableBatchSampler, hr_items, pair_items
from difiisr.training.ema import EMA
from difiisr.training.schedule import make_scheduler
from difiisr.training.seeds import derive_seed, generator_for
from difiisr.training.tracking import MlflowTracker, NullTracker, code_version, tracking_uri

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # the exported model folder under out_dir
MODEL_ARTIFACT = "model_folder"  # its artifact path in the MLflow run (what `difiisr register` reads)
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.yaml"


class TrainError(RuntimeError):
    """Training cannot run with this configuration; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of one ``train()`` call.

    ``losses``: the global-batch mean loss of every optimizer step run in this call (steps ``start_step+1 ..
    step``). ``status``: ``completed`` (reached ``max_steps``, model exported), ``preempted`` (SIGTERM: state
    saved, rerun with resume) or ``stopped`` (``stop_after`` reached: state saved).
    """

    out_dir: Path
    status: Literal["completed", "preempted", "stopped"]
    start_step: int
    step: int
    losses: tuple[float, ...]
    checkpoint: Path | None
    model_dir: Path | None
    mlflow_run_id: str | None
    validation: dict[str, float]
    num_processes: int
    main_process: bool = True

    @property
    def exit_code(self) -> int:
        """Process exit code for the CLI: 0, or ``EXIT_PREEMPTED`` (75) after a SIGTERM."""
        return EXIT_PREEMPTED if self.status == "preempted" else 0


def bicubic_up(lr: torch.Tensor, sf: int) -> torch.Tensor:
    """``(B,3,h,w)`` in [-1,1] -> ``(B,3,sf*h,sf*w)`` torch bicubic (not clamped), as the reference forms z_y."""
    return F.interpolate(lr, scale_factor=sf, mode="bicubic", align_corners=False)


def _lq_for(preset: ModelPreset, lr: torch.Tensor, up: torch.Tensor, x_size: int) -> torch.Tensor | None:
    """The LQ image at the size the network wants: ``x_size * lq_size / image_size`` (LR itself or bicubic-up)."""
    unet = preset.unet
    if not unet.cond_lq:
        return None
    ratio = 1 if unet.lq_size is None else unet.lq_size // unet.image_size
    want = x_size * ratio
    for cand in (lr, up):
        if cand.shape[-1] == want:
            return cand
    return F.interpolate(lr, size=(want, want), mode="bicubic", align_corners=False)


def _check_sizes(cfg: TrainConfig, preset: ModelPreset, multiple: int) -> int:
    """Spatial size of the diffusion variable for ``gt_size`` crops; raises ``TrainError`` when it does not fit."""
    gt = cfg.data.gt_size
    x_size = gt // preset.sf if preset.latent else gt
    if gt % preset.sf or x_size % multiple:
        unit = multiple * (preset.sf if preset.latent else 1)
        raise TrainError(
            f"data.gt_size={gt}: the {'latent' if preset.latent else 'pixel'} size {x_size} must be a multiple of "
            f"{multiple} for preset {preset.name!r}; use a multiple of {unit} (e.g. {max(unit, gt // unit * unit)})"
        )
    return x_size


def _build_networks(cfg: TrainConfig, preset: ModelPreset) -> tuple[nn.Module, nn.Module | None, int]:
    """UNet (seeded init, optionally ``init_from``) and frozen autoencoder (latent presets); returns size multiple."""
    from difiisr.models import load_checkpoint
    from difiisr.models.swin_unet import SwinUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        unet = SwinUNet(preset.unet)
    if cfg.init_from:
        path = Path(cfg.init_from)
        if not path.is_file():
            raise TrainError(
                f"init_from={cfg.init_from}: file not found; give a released UNet checkpoint path"
            )
        load_checkpoint(unet, path, strict=True)
        log.info("initialised the UNet from %s (strict)", path)
    autoencoder = None
    if preset.latent:
        from difiisr.models.vqgan import VQGANf4

        if not cfg.model.autoencoder_ckpt:
            raise TrainError(
                f"preset {preset.name!r} is latent: set model.autoencoder_ckpt to the VQGAN f4 weights "
                "(e.g. autoencoder_vq_f4.pth)"
            )
        ae_path = Path(cfg.model.autoencoder_ckpt)
        if not ae_path.is_file():
            raise TrainError(f"model.autoencoder_ckpt={ae_path}: file not found")
        autoencoder = VQGANf4(preset.autoencoder)
        load_checkpoint(autoencoder, ae_path, strict=True)
        autoencoder.eval().requires_grad_(False)
    return unet, autoencoder, int(unet.size_multiple)


def _sample_noise(
    seed: int, positions: torch.Tensor, shape: tuple[int, ...], num_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``t`` ``(B,)`` int64 and noise ``(B,*shape)`` float32 from ``derive_seed(seed, "noise", position)``."""
    ts, noises = [], []
    for p in positions.tolist():
        gen = generator_for(seed, "noise", int(p))
        ts.append(torch.randint(0, num_timesteps, (1,), generator=gen))
        noises.append(torch.randn(shape, generator=gen))
    return torch.cat(ts), torch.stack(noises)


class _Degrader:
    """Online LR synthesis on the training device: the seeded Real-ESRGAN second-order pipeline.

    Image seeds are ``derive_seed(seed, "degrade", position)``: unique per sample, so the LR of a sample does not
    depend on which rank or micro-step draws it (up to the batch-shared resize of ``resize_scope="batch"``).
    """

    def __init__(self, overrides: dict[str, Any], sf: int, gt_size: int) -> None:
        from difiisr.config import ConfigError, from_mapping
        from difiisr.degradation import RealESRGANConfig, RealESRGANDegradation

        settings = {"sf": sf, "gt_size": gt_size, **overrides}
        config = from_mapping(RealESRGANConfig, settings, "data.degradation")
        if config.sf != sf or config.gt_size != gt_size:
            raise ConfigError(
                f"data.degradation: sf={config.sf}, gt_size={config.gt_size} must equal the model's sf={sf} and "
                f"data.gt_size={gt_size}; remove them from data.degradation"
            )
        if gt_size < config.min_side:
            raise ConfigError(
                f"data.gt_size={gt_size} is below the degradation's smallest HR side {config.min_side}; "
                "raise data.gt_size"
            )
        self.sf = sf
        self.degradation = RealESRGANDegradation(config)

    def __call__(self, hr: torch.Tensor, positions: torch.Tensor, seed: int, levels: int) -> torch.Tensor:
        """``(B,3,H,W)`` HR in [-1,1] -> ``(B,3,H/sf,W/sf)`` LR in [-1,1], rounded to ``levels`` steps."""
        seeds = [derive_seed(seed, "degrade", int(p)) for p in positions.tolist()]
        lr, _ = self.degradation((hr.float() + 1.0) * 0.5, seeds, levels=levels)
        return lr.to(hr.device) * 2.0 - 1.0


def _reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide singletons so a later ``train()`` in this process starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train(cfg: TrainConfig, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` for ``cfg.max_steps`` optimizer steps; export the EMA model folder.

    ``resume``: continue from the newest complete checkpoint in ``OUT_DIR/checkpoints`` (start fresh when there
    is none). Without it, an ``out_dir`` that already has checkpoints is refused. ``stop_after``: save and stop
    once this many steps are done (as a preemption would). SIGTERM saves at the next step boundary and returns
    ``status="preempted"``. Works the same under ``accelerate launch`` with N processes.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    out_dir = Path(cfg.out_dir)
    existing = list_checkpoints(out_dir)
    if existing and not resume:
        raise ResumeError(
            f"{out_dir}: already holds checkpoints ({existing[-1].name}); pass --resume to continue that run, "
            "or choose a new out_dir"
        )
    preset = load_preset(cfg.model.preset, cfg.model.overrides)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        project_config=ProjectConfiguration(
            project_dir=str(out_dir), automatic_checkpoint_naming=True, total_limit=cfg.keep_checkpoints
        ),
    )
    try:
        return _run(accelerator, cfg, preset, out_dir, resume=resume, stop_after=stop_after)
    finally:
        accelerator.end_training()
        _reset_accelerate_state()


def _run(
    accelerator: Any,
    cfg: TrainConfig,
    preset: ModelPreset,
    out_dir: Path,
    *,
    resume: bool,
    stop_after: int | None,
) -> TrainResult:
    device = accelerator.device
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    accum = cfg.optim.grad_accum
    global_batch = cfg.data.batch_size
    if global_batch % (world * accum):
        raise TrainError(
            f"data.batch_size={global_batch} (global) is not divisible by processes ({world}) x "
            f"optim.grad_accum ({accum}); choose a multiple of {world * accum}"
        )
    micro_batch = global_batch // (world * accum)

    # ---------------------------------------------------------------- model, optimizer, schedule, EMA
    from difiisr.diffusion import ResShiftDiffusion

    unet, autoencoder, multiple = _build_networks(cfg, preset)
    x_size = _check_sizes(cfg, preset, multiple)
    diffusion = ResShiftDiffusion(preset.diffusion)
    ema = EMA(unet, cfg.ema_decay)
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
    )
    scheduler = make_scheduler(
        optimizer, cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.schedule, cfg.optim.min_lr / cfg.optim.lr
    )
    if cfg.compile:
        unet.compile()
    unet, optimizer = accelerator.prepare(unet, optimizer)
    ema.module.to(device)
    if autoencoder is not None:
        autoencoder.to(device)
    state = TrainingState()
    accelerator.register_for_checkpointing(ema, scheduler, state)

    checkpoint = latest_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        marker = read_marker(checkpoint) or {}
        if marker.get("step") != state.step:
            raise ResumeError(
                f"{checkpoint}: marker step {marker.get('step')} != saved state step {state.step}"
            )
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            checkpoint,
            state.step,
            state.epoch,
            state.batch,
        )
    elif resume:
        log.info("no complete checkpoint in %s; starting from step 0", out_dir / "checkpoints")
    accelerator.project_configuration.iteration = next_checkpoint_number(out_dir)
    start_step = state.step

    # ---------------------------------------------------------------- data
    train_dir = Path(cfg.data.train_dir)
    items = pair_items(train_dir) if cfg.data.mode == "paired" else hr_items(train_dir)
    dataset = PatchDataset(items, cfg.data.gt_size, preset.sf, cfg.data.hflip, cfg.seed)
    sampler = ResumableBatchSampler(len(items), global_batch, micro_batch, world, rank, accum, cfg.seed)
    if (state.epoch, state.batch) != sampler.position_of(state.step):
        raise ResumeError(
            f"saved data position (epoch {state.epoch}, batch {state.batch}) does not match step {state.step} "
            f"with {len(items)} images and data.batch_size={global_batch}; the data or batch size changed"
        )
    stream = MicroBatchStream(dataset, sampler, cfg.data.workers, pin_memory=device.type == "cuda").iterate(
        state.step
    )
    degrader = (
        _Degrader(cfg.data.degradation, preset.sf, cfg.data.gt_size) if cfg.data.mode == "online" else None
    )

    # ---------------------------------------------------------------- tracking (main process only)
    tracker: NullTracker = NullTracker()
    tags: dict[str, Any] = {}
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        tags = {
            "dataset.md5": dataset_md5(train_dir),
            "dataset.name": train_dir.resolve().name,
            "dataset.mode": cfg.data.mode,
            "code_version": code_version(),
            "preset": preset.name,
            "num_processes": world,
        }
        if cfg.validation.dir:
            tags["validation.md5"] = dataset_md5(cfg.validation.dir)
        if cfg.mlflow.enabled:
            tracker = MlflowTracker.start(
                cfg.mlflow.experiment,
                cfg.mlflow.run_name,
                out_dir,
                resume=resume,
                uri=tracking_uri(),
                parent_run_id=cfg.mlflow.parent_run_id,
            )
            params = flatten(cfg.to_dict())
            params.update(
                {"num_processes": world, "micro_batch": micro_batch, "preset.resolved": preset.name}
            )
            tracker.log_params(params)
            tracker.set_tags(tags)
    accelerator.wait_for_everyone()

    # ---------------------------------------------------------------- the loop
    raw_unet = accelerator.unwrap_model(unet)
    latent_shape = (preset.unet.out_channels, x_size, x_size)
    stop = StopFlag()
    losses: list[float] = []
    pending: list[torch.Tensor] = []
    micro_losses: list[torch.Tensor] = []
    grad_norm = torch.zeros(())
    status: Literal["completed", "preempted", "stopped"] = "completed"
    validation: dict[str, float] = {}
    last_checkpoint = checkpoint
    window_start, window_steps = time.perf_counter(), 0

    def flush() -> None:
        """Move the pending per-step losses (device tensors) into ``losses`` (one host sync)."""
        if pending:
            losses.extend(torch.stack(pending).float().cpu().tolist())
            pending.clear()

    def save() -> Path:
        """``save_state`` on every rank, then the main process marks the folder complete."""
        location = Path(accelerator.save_state())
        accelerator.wait_for_everyone()
        if main:
            write_marker(location, {**state.state_dict(), "num_processes": world, "seed": cfg.seed})
        accelerator.wait_for_everyone()
        return location

    def run_validation(step: int) -> dict[str, float]:
        """Validate the EMA model on the main process (others wait); returns the PSNR_Y metrics."""
        result: dict[str, float] = {}
        if main and cfg.validation.dir:
            from difiisr.training.validation import validate

            grid = out_dir / "validation" / f"grid_step_{step:07d}.png"
            res = validate(
                preset,
                ema.module,
                autoencoder,
                cfg.validation.dir,
                n_images=cfg.validation.n_images,
                sampler=cfg.validation.sampler,
                steps=cfg.validation.steps,
                seed=cfg.validation.seed,
                device=device,
                grid_path=grid,
            )
            result = res.metrics()
            tracker.log_metrics(result, step)
            if res.grid_path is not None:
                tracker.log_artifact(res.grid_path, "validation")
        accelerator.wait_for_everyone()
        return result

    unet.train()
    progress = tqdm(total=cfg.max_steps, initial=state.step, disable=not main, desc="train", unit="step")
    with stop.installed():
        try:
            if state.step < cfg.max_steps:
                for step, micro_index, micro in stream:
                    hr = micro["hr"].to(device, non_blocking=True)
                    if degrader is not None:
                        lr = degrader(hr, micro["position"], cfg.seed, int(micro["levels"].max()))
                    else:
                        lr = micro["lr"].to(device, non_blocking=True)
                    with accelerator.accumulate(unet):
                        up = bicubic_up(lr, preset.sf)
                        if autoencoder is not None:
                            with (
                                torch.no_grad(),
                                torch.autocast(
                                    device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
                                ),
                            ):
                                z = autoencoder.encode(torch.cat([hr, up])).float()
                            z0, zy = z.chunk(2)
                        else:
                            z0, zy = hr, up
                        lq = _lq_for(preset, lr, up, x_size)
                        t, noise = _sample_noise(
                            cfg.seed, micro["position"], latent_shape, diffusion.num_timesteps
                        )
                        out = diffusion.training_losses(
                            unet, z0, zy, t.to(device), lq=lq, noise=noise.to(device)
                        )
                        loss = out["loss"].mean()
                        accelerator.backward(loss)
                        micro_losses.append(loss.detach())
                        if accelerator.sync_gradients:
                            clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
                            grad_norm = accelerator.clip_grad_norm_(unet.parameters(), clip)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    if not accelerator.sync_gradients:
                        continue
                    if micro_index != accum - 1:
                        raise RuntimeError(
                            f"step {step}: optimizer stepped at micro-batch {micro_index} of {accum}"
                        )
                    lr_used = scheduler.get_last_lr()[0]
                    scheduler.step()
                    ema.update(raw_unet)
                    step_loss = torch.stack(micro_losses).mean().float()
                    micro_losses.clear()
                    preempt = stop.requested
                    if world > 1:
                        # one all-reduce per step: the global mean loss, and whether any rank got SIGTERM
                        flag = torch.tensor(1.0 if preempt else 0.0, device=device)
                        packed = accelerator.reduce(torch.stack([step_loss, flag]), reduction="sum")
                        step_loss, preempt = packed[0] / world, bool(packed[1].item() > 0)
                    pending.append(step_loss)
                    state.step = step + 1
                    state.epoch, state.batch = sampler.position_of(state.step)
                    state.samples += global_batch
                    window_steps += 1
                    progress.update(1)

                    if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                        flush()
                        elapsed = max(time.perf_counter() - window_start, 1e-9)
                        record = {
                            "step": state.step,
                            "loss": float(sum(losses[-window_steps:]) / window_steps),
                            "lr": float(lr_used),
                            "grad_norm": float(grad_norm),
                            "samples_per_s": window_steps * global_batch / elapsed,
                        }
                        if device.type == "cuda":
                            record["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                        if main:
                            tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, state.step)
                            with open(out_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
                                fh.write(json.dumps(record) + "\n")
                            progress.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.2e}")
                            log.info(
                                "step %d: loss %.5g lr %.3g grad_norm %.3g %.1f samples/s",
                                state.step,
                                record["loss"],
                                record["lr"],
                                record["grad_norm"],
                                record["samples_per_s"],
                            )
                        window_start, window_steps = time.perf_counter(), 0

                    halt = stop_after is not None and state.step >= stop_after
                    done = state.step >= cfg.max_steps
                    if cfg.val_every and state.step % cfg.val_every == 0 and not done and not preempt:
                        validation = run_validation(state.step)
                    if state.step % cfg.save_every == 0 or preempt or halt or done:
                        flush()
                        last_checkpoint = save()
                    if preempt:
                        status = "preempted"
                        log.warning(
                            "stopped by %s at step %d; resume with --resume", stop.signal_name, state.step
                        )
                        break
                    if done:
                        break
                    if halt:
                        status = "stopped"
                        break
            flush()
            progress.close()
            model_dir = None
            if status == "completed":
                validation = run_validation(state.step) or validation
                model_dir = _export(cfg, preset, ema, autoencoder, out_dir, state.step, tags, tracker, main)
                accelerator.wait_for_everyone()
            tracker.finish("KILLED" if status == "preempted" else "FINISHED")
        except BaseException as exc:
            progress.close()
            tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
    return TrainResult(
        out_dir=out_dir,
        status=status,
        start_step=start_step,
        step=state.step,
        losses=tuple(losses),
        checkpoint=last_checkpoint,
        model_dir=model_dir,
        mlflow_run_id=tracker.run_id,
        validation=validation,
        num_processes=world,
        main_process=main,
    )


def _export(
    cfg: TrainConfig,
    preset: ModelPreset,
    ema: EMA,
    autoencoder: nn.Module | None,
    out_dir: Path,
    step: int,
    tags: dict[str, Any],
    tracker: NullTracker,
    main: bool,
) -> Path:
    """Write the EMA weights as a model folder ``OUT_DIR/model`` (main process) and log it to MLflow."""
    from difiisr.models.bundle import save_model_folder

    model_dir = out_dir / MODEL_DIR
    if not main:
        return model_dir
    meta = {
        "step": step,
        "seed": cfg.seed,
        "ema_decay": cfg.ema_decay,
        "dataset_md5": tags.get("dataset.md5"),
        "dataset_name": tags.get("dataset.name"),
        "code_version": tags.get("code_version"),
        "mlflow_run_id": tracker.run_id,
        "train_config": cfg.to_dict(),
    }
    save_model_folder(
        model_dir,
        preset,
        ema.module.state_dict(),
        autoencoder.state_dict() if autoencoder is not None else None,
        meta=meta,
    )
    tracker.log_artifacts(model_dir, MODEL_ARTIFACT)
    log.info("exported the EMA model (step %d) to %s", step, model_dir)
    return model_dir
