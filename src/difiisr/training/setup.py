"""What one training run is built from: the batch split, networks and optimizer, the data stream, tracking.

``difiisr.training.loop`` sets a run up from these in order (``_TrainingRun.start``) and then only steps it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from difiisr.config import flatten
from difiisr.data.fingerprint import dataset_md5
from difiisr.errors import DifiisrError
from difiisr.models.conditioning import Conditioner
from difiisr.models.preset import ModelPreset
from difiisr.registry import names
from difiisr.storage import atomic_write_text
from difiisr.training.checkpoint_format import TrainingObjects
from difiisr.training.checkpointing import ResumeError, TrainingState
from difiisr.training.config import TrainConfig
from difiisr.training.data import MicroBatchStream, PatchDataset, ResumableBatchSampler, hr_items, pair_items
from difiisr.training.ema import EMA
from difiisr.training.schedule import make_scheduler
from difiisr.training.seeds import derive_seed
from difiisr.training.tracking import MlflowTracker, NullTracker, code_version, tracking_uri

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.yaml"  # the resolved config, written into out_dir


class TrainError(DifiisrError, RuntimeError):
    """Training cannot run with this configuration; the message names the key and the fix."""


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
    """UNet (seeded init, optionally ``init_from``) and frozen autoencoder (latent presets) through the shared
    builder (``difiisr.models.builder``); returns them and the UNet's size multiple."""
    from difiisr.models.builder import load_networks

    init = None
    if cfg.init_from:
        init = Path(cfg.init_from)
        if not init.is_file():
            raise TrainError(
                f"init_from={cfg.init_from}: file not found; give a released UNet checkpoint path"
            )
    ae_path = None
    if preset.latent:
        if not cfg.model.autoencoder_ckpt:
            raise TrainError(
                f"preset {preset.name!r} is latent: set model.autoencoder_ckpt to the VQGAN f4 weights "
                "(e.g. autoencoder_vq_f4.pth)"
            )
        ae_path = Path(cfg.model.autoencoder_ckpt)
        if not ae_path.is_file():
            raise TrainError(f"model.autoencoder_ckpt={ae_path}: file not found")
    unet, autoencoder = load_networks(
        preset, unet_weights=init, autoencoder_weights=ae_path, seed=derive_seed(cfg.seed, "init")
    )
    if init is not None:
        log.info("initialised the UNet from %s (strict)", init)
    if autoencoder is not None:
        autoencoder.eval().requires_grad_(False)
    return unet, autoencoder, int(unet.size_multiple)


class Degrader:
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


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How one global batch is split: ``world`` processes x ``accum`` micro-steps x ``micro_batch`` samples."""

    world: int
    rank: int
    main: bool
    accum: int
    global_batch: int
    micro_batch: int

    @classmethod
    def of(cls, accelerator: Any, cfg: TrainConfig) -> Geometry:
        """The split for this launch; raises ``TrainError`` when the global batch does not divide."""
        world, accum, global_batch = accelerator.num_processes, cfg.optim.grad_accum, cfg.data.batch_size
        if global_batch % (world * accum):
            raise TrainError(
                f"data.batch_size={global_batch} (global) is not divisible by processes ({world}) x "
                f"optim.grad_accum ({accum}); choose a multiple of {world * accum}"
            )
        return cls(
            world=world,
            rank=accelerator.process_index,
            main=accelerator.is_main_process,
            accum=accum,
            global_batch=global_batch,
            micro_batch=global_batch // (world * accum),
        )


@dataclasses.dataclass
class Networks:
    """The networks and their optimisation: prepared UNet (``raw_unet`` unwrapped), frozen autoencoder, EMA."""

    unet: nn.Module
    raw_unet: nn.Module
    autoencoder: nn.Module | None
    ema: EMA
    diffusion: Any
    optimizer: Any
    scheduler: Any
    grad_scaler: Any | None
    x_size: int
    conditioner: Conditioner

    @classmethod
    def build(cls, accelerator: Any, cfg: TrainConfig, preset: ModelPreset) -> Networks:
        """Seeded networks, AdamW and the warm-up schedule, prepared by Accelerate on its device."""
        from difiisr.diffusion import ResShiftDiffusion

        unet, autoencoder, multiple = _build_networks(cfg, preset)
        x_size = _check_sizes(cfg, preset, multiple)
        ema = EMA(unet, cfg.ema_decay)
        optimizer = torch.optim.AdamW(
            unet.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
        )
        scheduler = make_scheduler(
            optimizer,
            cfg.optim.warmup_steps,
            cfg.max_steps,
            cfg.optim.schedule,
            cfg.optim.min_lr / cfg.optim.lr,
        )
        if cfg.compile:
            unet.compile()
        unet, optimizer = accelerator.prepare(unet, optimizer)
        ema.module.to(accelerator.device)
        if autoencoder is not None:
            autoencoder.to(accelerator.device)
        return cls(
            unet=unet,
            raw_unet=accelerator.unwrap_model(unet),
            autoencoder=autoencoder,
            ema=ema,
            diffusion=ResShiftDiffusion(preset.diffusion),
            optimizer=optimizer,
            scheduler=scheduler,
            grad_scaler=accelerator.scaler,
            x_size=x_size,
            conditioner=Conditioner(preset, autoencoder),
        )

    @property
    def checkpointed(self) -> TrainingObjects:
        """What a checkpoint saves and restores."""
        return TrainingObjects(self.raw_unet, self.ema, self.optimizer, self.scheduler, self.grad_scaler)


@dataclasses.dataclass
class DataFeed:
    """This rank's micro-batch stream from the current step, the sampler (data positions), online degradation."""

    sampler: ResumableBatchSampler
    stream: Iterator[tuple[int, int, dict[str, torch.Tensor]]]
    degrader: Degrader | None

    @classmethod
    def open(
        cls, cfg: TrainConfig, preset: ModelPreset, geometry: Geometry, state: TrainingState, device: Any
    ) -> DataFeed:
        """Items of ``data.train_dir``; refuses a saved data position that no longer fits the data."""
        train_dir = Path(cfg.data.train_dir)
        items = pair_items(train_dir) if cfg.data.mode == "paired" else hr_items(train_dir)
        dataset = PatchDataset(items, cfg.data.gt_size, preset.sf, cfg.data.hflip, cfg.seed)
        g = geometry
        sampler = ResumableBatchSampler(
            len(items), g.global_batch, g.micro_batch, g.world, g.rank, g.accum, cfg.seed
        )
        if (state.epoch, state.batch) != sampler.position_of(state.step):
            raise ResumeError(
                f"saved data position (epoch {state.epoch}, batch {state.batch}) does not match step {state.step} "
                f"with {len(items)} images and data.batch_size={g.global_batch}; the data or batch size changed"
            )
        stream = MicroBatchStream(dataset, sampler, cfg.data.workers, pin_memory=device.type == "cuda")
        online = cfg.data.mode == "online"
        degrader = Degrader(cfg.data.degradation, preset.sf, cfg.data.gt_size) if online else None
        return cls(sampler=sampler, stream=stream.iterate(state.step), degrader=degrader)


def start_tracking(
    cfg: TrainConfig, preset: ModelPreset, out_dir: Path, geometry: Geometry, *, resume: bool
) -> tuple[NullTracker, dict[str, Any]]:
    """Main process: write ``train_config.yaml``, open the MLflow run, log params and lineage tags."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    train_dir = Path(cfg.data.train_dir)
    tags: dict[str, Any] = {
        names.RUN_TAG_DATASET_MD5: dataset_md5(train_dir),
        names.RUN_TAG_DATASET_NAME: train_dir.resolve().name,
        names.RUN_TAG_DATASET_MODE: cfg.data.mode,
        names.RUN_TAG_CODE_VERSION: code_version(),
        names.RUN_TAG_PRESET: preset.name,
        names.RUN_TAG_NUM_PROCESSES: geometry.world,
    }
    if cfg.validation.dir:
        tags[names.RUN_TAG_VALIDATION_MD5] = dataset_md5(cfg.validation.dir)
    if not cfg.mlflow.enabled:
        return NullTracker(), tags
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
        {"num_processes": geometry.world, "micro_batch": geometry.micro_batch, "preset.resolved": preset.name}
    )
    tracker.log_params(params)
    tracker.set_tags(tags)
    return tracker, tags
