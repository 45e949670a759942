"""The training loop: Accelerate (1 process or ``accelerate launch`` N), resumable, EMA, MLflow-tracked.

One optimizer step consumes a global batch of ``data.batch_size`` samples: ``num_processes x grad_accum``
micro-batches. Everything random is drawn from seeds derived from ``(seed, what, sample position or step)``
(``difiisr.training.seeds``), so a resumed run repeats an uninterrupted one, and the diffusion noise and time step
of a sample do not depend on which rank trains it.

Only the main process writes files (``train_config.yaml``, ``metrics.jsonl``, checkpoint folders, validation
grids, the exported model folder) and talks to MLflow. Checkpoints hold safetensors and JSON only
(``difiisr.training.checkpoint_format``); every rank reads them on resume.

Reading order: ``train`` sets up a ``_TrainingRun`` from the parts in ``difiisr.training.setup`` (batch split,
networks and optimizer, resume, data, tracking), whose ``run`` loops over micro-batches: ``_micro_step`` (conditioning, ``compute_losses``, backward),
``_finish_step`` (scheduler, EMA, the global mean of the loss terms), then logging, validation and checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm import tqdm

from difiisr.errors import ExitCode
from difiisr.models.preset import ModelPreset, load_preset
from difiisr.registry import names
from difiisr.training.checkpoint_format import read_checkpoint, write_checkpoint
from difiisr.training.checkpointing import (
    ResumeError,
    StopFlag,
    TrainingState,
    checkpoint_folder,
    latest_checkpoint,
    list_checkpoints,
    next_checkpoint_number,
    prune_checkpoints,
)
from difiisr.training.config import TrainConfig
from difiisr.training.losses import TrainingLosses
from difiisr.training.metrics import METRICS_FILE, MetricsLog, truncate_metrics
from difiisr.training.seeds import derive_seed, generator_for
from difiisr.training.setup import DataFeed, Geometry, Networks, TrainError, start_tracking
from difiisr.training.tracking import NullTracker

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # the exported model folder under out_dir


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
    def exit_code(self) -> ExitCode:
        """Process exit code for the CLI: ``ExitCode.OK``, or ``ExitCode.PREEMPTED`` after a SIGTERM."""
        return ExitCode.PREEMPTED if self.status == "preempted" else ExitCode.OK


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


def compute_losses(
    diffusion: Any,
    unet: nn.Module,
    z0: torch.Tensor,
    zy: torch.Tensor,
    lq: torch.Tensor | None,
    t: torch.Tensor,
    noise: torch.Tensor,
    *,
    extra: TrainingLosses | None = None,
    hr: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The training losses of one micro-batch: the one place where loss terms are defined.

    ``z0``/``zy``: ``(B,C,H,W)`` target and degraded-input diffusion variables (latents or pixels in [-1,1]);
    ``lq``: the LQ conditioning image or None; ``t``: ``(B,)`` int64 time steps; ``noise``: like ``z0``.
    ``extra``: the optional guidance losses of the ``losses:`` config (``difiisr.training.losses``), computed on
    the differentiable x0_hat against ``hr`` ``(B,3,H,W)`` in [-1,1], with ``generator`` for their sub-crop.
    Returns 0-dim tensors: ``"loss"`` is backpropagated; every other key is a term logged alongside it
    (window mean in ``metrics.jsonl`` and MLflow): with ``extra``, ``loss_diffusion`` and each unweighted
    guidance term (``loss_spectral``, ``loss_perceptual``), ``loss`` being their weighted sum.
    """
    out = diffusion.training_losses(unet, z0, zy, t, lq=lq, noise=noise)
    diffusion_loss = out["loss"].mean()
    if extra is None:
        return {names.METRIC_LOSS: diffusion_loss}
    if hr is None or generator is None:
        raise ValueError(
            "compute_losses: the guidance losses need the HR batch and a generator for their crop"
        )
    weighted, terms = extra.terms(out["x0_hat"], hr, generator)
    return {
        names.METRIC_LOSS: diffusion_loss + weighted,
        names.METRIC_LOSS_DIFFUSION: diffusion_loss.detach(),
        **terms,
    }


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

    out_dir = Path(cfg.out_dir)
    existing = list_checkpoints(out_dir)
    if existing and not resume:
        raise ResumeError(
            f"{out_dir}: already holds checkpoints ({existing[-1].name}); pass --resume to continue that run, "
            "or choose a new out_dir"
        )
    preset = load_preset(cfg.model.preset, cfg.model.overrides)
    if cfg.model.autoencoder_ckpt and not preset.latent:
        raise TrainError(
            f"model.autoencoder_ckpt={cfg.model.autoencoder_ckpt}: preset {preset.name!r} works in pixel space and "
            "has no autoencoder; remove model.autoencoder_ckpt (or choose a latent preset)"
        )
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
    )
    try:
        return _TrainingRun.start(accelerator, cfg, preset, out_dir, resume=resume).run(stop_after)
    finally:
        accelerator.end_training()
        _reset_accelerate_state()


@dataclasses.dataclass
class _TrainingRun:
    """One ``train()`` call once set up (``start``): the step loop, logging, validation, checkpoints and export."""

    accelerator: Any
    cfg: TrainConfig
    preset: ModelPreset
    out_dir: Path
    geometry: Geometry
    nets: Networks
    data: DataFeed
    state: TrainingState
    tracker: NullTracker
    tags: dict[str, Any]
    metrics: MetricsLog
    last_checkpoint: Path | None
    validation: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.start_step = self.state.step
        self._numbers = iter(range(next_checkpoint_number(self.out_dir), 1 << 62))
        self._terms: dict[str, torch.Tensor] = {}  # loss-term sums over the micro-batches of the current step
        self._grad_norm = torch.zeros(())
        self._extra_losses = TrainingLosses.build(
            self.cfg.losses, self.nets.conditioner, self.accelerator.device, warn=self.geometry.main
        )

    @classmethod
    def start(
        cls, accelerator: Any, cfg: TrainConfig, preset: ModelPreset, out_dir: Path, *, resume: bool
    ) -> _TrainingRun:
        """Set up in order: batch split, networks and optimizer, resume, data, tracking and the metrics log."""
        geometry = Geometry.of(accelerator, cfg)
        nets = Networks.build(accelerator, cfg, preset)
        state = TrainingState()
        checkpoint = latest_checkpoint(out_dir) if resume else None
        if checkpoint is not None:
            state.load_state_dict(read_checkpoint(checkpoint, nets.checkpointed))
            log.info(
                "resumed from %s at step %d (epoch %d, batch %d)",
                checkpoint,
                state.step,
                state.epoch,
                state.batch,
            )
        elif resume:
            log.info("no complete checkpoint in %s; starting from step 0", out_dir / "checkpoints")
        data = DataFeed.open(cfg, preset, geometry, state, accelerator.device)
        tracker, tags = NullTracker(), {}
        if geometry.main:
            tracker, tags = start_tracking(cfg, preset, out_dir, geometry, resume=resume)
            truncate_metrics(out_dir / METRICS_FILE, state.step)
        metrics = MetricsLog(
            out_dir / METRICS_FILE if geometry.main else None, tracker, geometry.global_batch
        )
        accelerator.wait_for_everyone()
        return cls(
            accelerator=accelerator,
            cfg=cfg,
            preset=preset,
            out_dir=out_dir,
            geometry=geometry,
            nets=nets,
            data=data,
            state=state,
            tracker=tracker,
            tags=tags,
            metrics=metrics,
            last_checkpoint=checkpoint,
        )

    # ------------------------------------------------------------------------------------------------ the loop
    def run(self, stop_after: int | None) -> TrainResult:
        """Train to ``max_steps`` (or SIGTERM, or ``stop_after``); validate and export when complete."""
        cfg, state = self.cfg, self.state
        status: Literal["completed", "preempted", "stopped"] = "completed"
        stop = StopFlag()
        self.nets.unet.train()
        progress = tqdm(
            total=cfg.max_steps, initial=state.step, disable=not self.geometry.main, desc="train", unit="step"
        )
        with stop.installed():
            try:
                if state.step < cfg.max_steps:
                    status = self._steps(stop, stop_after, progress)
                self.metrics.flush()
                progress.close()
                model_dir = None
                if status == "completed":
                    self.validation = self._validate(state.step) or self.validation
                    model_dir = self._export()
                    self.accelerator.wait_for_everyone()
                self.tracker.finish("KILLED" if status == "preempted" else "FINISHED")
            except BaseException as exc:
                progress.close()
                self.tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
                raise
        return TrainResult(
            out_dir=self.out_dir,
            status=status,
            start_step=self.start_step,
            step=state.step,
            losses=tuple(self.metrics.losses),
            checkpoint=self.last_checkpoint,
            model_dir=model_dir,
            mlflow_run_id=self.tracker.run_id,
            validation=self.validation,
            num_processes=self.geometry.world,
            main_process=self.geometry.main,
        )

    def _steps(
        self, stop: StopFlag, stop_after: int | None, progress: tqdm
    ) -> Literal["completed", "preempted", "stopped"]:
        """Run optimizer steps until done, preempted or ``stop_after``; saves a checkpoint on the way out."""
        cfg, state = self.cfg, self.state
        for step, micro_index, micro in self.data.stream:
            self._micro_step(step, micro_index, micro)
            if not self.accelerator.sync_gradients:
                continue
            if micro_index != self.geometry.accum - 1:
                raise RuntimeError(
                    f"step {step}: optimizer stepped at micro-batch {micro_index} of {cfg.optim.grad_accum}"
                )
            lr_used, preempt = self._finish_step(step, stop.requested)
            progress.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                self._log(lr_used, progress)
            halt = stop_after is not None and state.step >= stop_after
            done = state.step >= cfg.max_steps
            if cfg.val_every and state.step % cfg.val_every == 0 and not done and not preempt:
                self.validation = self._validate(state.step)
            if state.step % cfg.save_every == 0 or preempt or halt or done:
                self.last_checkpoint = self._save()
            if preempt:
                log.warning("stopped by %s at step %d; resume with --resume", stop.signal_name, state.step)
                return "preempted"
            if done:
                return "completed"
            if halt:
                return "stopped"
        raise RuntimeError("the micro-batch stream ended")  # MicroBatchStream never ends

    # ------------------------------------------------------------------------------------------------ one step
    def _conditioning(
        self, micro: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(z0, zy, lq)`` of a micro-batch: HR and bicubic-upsampled LR (encoded for latent presets), LQ input;
        the shared conditioning contract of training and inference (``difiisr.models.conditioning``)."""
        device, nets = self.accelerator.device, self.nets
        hr = micro["hr"].to(device, non_blocking=True)
        if self.data.degrader is not None:
            lr = self.data.degrader(hr, micro["position"], self.cfg.seed, int(micro["levels"].max()))
        else:
            lr = micro["lr"].to(device, non_blocking=True)
        cuda = device.type == "cuda" and nets.autoencoder is not None
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            return nets.conditioner.training_pair(lr, hr)

    def _micro_step(self, step: int, micro_index: int, micro: dict[str, torch.Tensor]) -> None:
        """Forward and backward of one micro-batch; the optimizer steps after the last one of the step."""
        accelerator, nets, cfg = self.accelerator, self.nets, self.cfg
        # the global RNG (dropout, ...) restarts per micro-step: no RNG state is checkpointed
        torch.manual_seed(derive_seed(cfg.seed, "global", self.geometry.rank, step, micro_index))
        with accelerator.accumulate(nets.unet):
            z0, zy, lq = self._conditioning(micro)
            shape = (self.preset.unet.out_channels, nets.x_size, nets.x_size)
            t, noise = _sample_noise(cfg.seed, micro["position"], shape, nets.diffusion.num_timesteps)
            device = accelerator.device
            guidance: dict[str, Any] = {}  # the optional losses: section (training/losses.py)
            if self._extra_losses is not None:
                guidance = {
                    "extra": self._extra_losses,
                    "hr": micro["hr"].to(device, non_blocking=True),
                    "generator": generator_for(cfg.seed, "loss_crop", int(micro["position"][0])),
                }
            terms = compute_losses(
                nets.diffusion, nets.unet, z0, zy, lq, t.to(device), noise.to(device), **guidance
            )
            accelerator.backward(terms[names.METRIC_LOSS])
            for name, value in terms.items():
                total = value.detach().float()
                self._terms[name] = self._terms[name] + total if name in self._terms else total
            if accelerator.sync_gradients:
                clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
                self._grad_norm = accelerator.clip_grad_norm_(nets.unet.parameters(), clip)
            nets.optimizer.step()
            nets.optimizer.zero_grad(set_to_none=True)

    def _finish_step(self, step: int, stop_requested: bool) -> tuple[float, bool]:
        """After the optimizer update: schedule, EMA, global mean loss terms, counters. Returns (lr used, preempt)."""
        nets, g = self.nets, self.geometry
        lr_used = nets.scheduler.get_last_lr()[0]
        nets.scheduler.step()
        nets.ema.update(nets.raw_unet)
        names = list(self._terms)
        packed = torch.stack([self._terms[n] / g.accum for n in names])
        self._terms.clear()
        preempt = stop_requested
        if g.world > 1:
            # one all-reduce per step: the global mean loss terms, and whether any rank got SIGTERM
            flag = torch.tensor([1.0 if preempt else 0.0], device=packed.device)
            total = self.accelerator.reduce(torch.cat([packed, flag]), reduction="sum")
            packed, preempt = total[:-1] / g.world, bool(total[-1].item() > 0)
        self.metrics.add_step(dict(zip(names, packed, strict=True)))
        state = self.state
        state.step = step + 1
        state.epoch, state.batch = self.data.sampler.position_of(state.step)
        state.samples += g.global_batch
        return float(lr_used), preempt

    # ------------------------------------------------------------------------------------------------ side work
    def _log(self, lr_used: float, progress: tqdm) -> None:
        """Write the metrics record of the window ending at this step (main process) and show it."""
        extra = {names.METRIC_LR: lr_used, names.METRIC_GRAD_NORM: float(self._grad_norm)}
        device = self.accelerator.device
        if device.type == "cuda":
            extra[names.METRIC_PEAK_MEM_GIB] = torch.cuda.max_memory_allocated(device) / 2**30
        record = self.metrics.write(self.state.step, extra)
        if self.geometry.main:
            progress.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.2e}")
            log.info(
                "step %d: loss %.5g lr %.3g grad_norm %.3g %.1f samples/s",
                record["step"],
                record["loss"],
                record["lr"],
                record["grad_norm"],
                record["samples_per_s"],
            )

    def _save(self) -> Path:
        """The main process writes the next checkpoint folder (marker last) and prunes old ones; all ranks wait."""
        location = checkpoint_folder(self.out_dir, next(self._numbers))
        self.accelerator.wait_for_everyone()
        if self.geometry.main:
            record = {**self.state.state_dict(), "num_processes": self.geometry.world, "seed": self.cfg.seed}
            write_checkpoint(location, self.nets.checkpointed, record)
            prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return location

    def _validate(self, step: int) -> dict[str, float]:
        """Validate the EMA model on the main process (others wait); returns the PSNR_Y metrics."""
        cfg = self.cfg
        result: dict[str, float] = {}
        if self.geometry.main and cfg.validation.dir:
            from difiisr.training.validation import validate

            res = validate(
                self.preset,
                self.nets.ema.module,
                self.nets.autoencoder,
                cfg.validation.dir,
                n_images=cfg.validation.n_images,
                settings=cfg.validation.settings(),
                device=self.accelerator.device,
                grid_path=self.out_dir / "validation" / f"grid_step_{step:07d}.png",
            )
            result = res.metrics()
            self.tracker.log_metrics(result, step)
            if res.grid_path is not None:
                self.tracker.log_artifact(res.grid_path, names.ARTIFACT_VALIDATION)
        self.accelerator.wait_for_everyone()
        return result

    def _export(self) -> Path:
        """Write the EMA weights as a model folder ``OUT_DIR/model`` (main process) and log it to MLflow."""
        from difiisr.models.bundle import save_model_folder

        model_dir = self.out_dir / MODEL_DIR
        if not self.geometry.main:
            return model_dir
        cfg, tags, step = self.cfg, self.tags, self.state.step
        meta = {
            "step": step,
            "seed": cfg.seed,
            "ema_decay": cfg.ema_decay,
            "dataset_md5": tags.get(names.RUN_TAG_DATASET_MD5),
            "dataset_name": tags.get(names.RUN_TAG_DATASET_NAME),
            "code_version": tags.get(names.RUN_TAG_CODE_VERSION),
            "mlflow_run_id": self.tracker.run_id,
            "train_config": cfg.to_dict(),
        }
        autoencoder = self.nets.autoencoder
        save_model_folder(
            model_dir,
            self.preset,
            self.nets.ema.module.state_dict(),
            autoencoder.state_dict() if autoencoder is not None else None,
            meta=meta,
        )
        self.tracker.log_artifacts(model_dir, names.ARTIFACT_MODEL_FOLDER)
        log.info("exported the EMA model (step %d) to %s", step, model_dir)
        return model_dir
