"""Training-time guidance losses (DifIISR's visual and perceptual priors), optional and weighted (``losses:``).

Both compare the decoded prediction ``D(x0_hat)`` with the HR crop, in pixels in [-1,1]:

- ``spectral`` (visual / thermal-spectrum prior): ``difiisr.diffusion.guidance.log_amplitude_distance``, the L1
  distance of ``log(1 + |FFT|)`` (orthonormal 2-D FFT) with an optional radial weighting ``(f / f_max)^gamma``;
- ``perceptual``: the mean squared distance of VGG features (torchvision's vgg16/vgg19 ``features`` layout) at
  the configured ReLU layers, each layer's distance averaged and the layers averaged. The network comes only
  from a local weights file (``losses.perceptual.weights_file``; a torchvision ``vgg16-*.pth``/``vgg19-*.pth``
  state dict or the same as safetensors; classifier keys are ignored). Without one the term is skipped with
  one warning: nothing is ever downloaded.

Memory: latent presets decode through the frozen VQGAN with autograd (``Conditioner.decode_differentiable``,
straight-through quantiser, optional activation checkpointing) only a random ``decode_crop`` x ``decode_crop``
sub-crop of the latent per micro-batch (one position for the batch, drawn from the given generator), against
the matching HR region. Pixel presets compare the whole crop.

``TrainingLosses.terms`` returns each term unweighted (for logging as ``loss_spectral`` / ``loss_perceptual``)
and their weighted sum; ``difiisr.training.loop.compute_losses`` adds that sum to the diffusion loss.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difiisr.config import ConfigError
from difiisr.diffusion.guidance import log_amplitude_distance
from difiisr.models.conditioning import Conditioner
from difiisr.registry import names
from difiisr.training.config import LossesConfig, PerceptualLossConfig

log = logging.getLogger(__name__)

#: torchvision's VGG configurations by architecture name (``torchvision.models.vgg.cfgs`` keys).
_VGG_CFG: Final = {"vgg16": "D", "vgg19": "E"}
_IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
_IMAGENET_STD: Final = (0.229, 0.224, 0.225)


def vgg_layer_names(arch: str) -> dict[str, int]:
    """``{"relu1_1": 1, "relu1_2": 3, ...}``: each ReLU of the ``features`` of torchvision's ``arch`` by index."""
    from torchvision.models.vgg import cfgs

    names: dict[str, int] = {}
    block, conv, index = 1, 0, 0
    for item in cfgs[_VGG_CFG[arch]]:
        if item == "M":
            block, conv, index = block + 1, 0, index + 1
            continue
        conv += 1
        names[f"relu{block}_{conv}"] = index + 1  # conv at index, its ReLU right after
        index += 2
    return names


class VGGFeatures(nn.Module):
    """Frozen VGG ``features`` up to the deepest requested ReLU; ``forward`` -> the requested feature maps.

    Input ``(B,3,H,W)`` (or ``(B,1,H,W)``, replicated) in [-1,1]; mapped to [0,1] and ImageNet-normalised.
    """

    def __init__(self, arch: str, layers: tuple[str, ...], state: dict[str, Tensor]) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        index = vgg_layer_names(arch)
        self.taps = sorted(index[name] for name in layers)
        self.features = make_layers(cfgs[_VGG_CFG[arch]])[: self.taps[-1] + 1]
        wanted = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        own = self.features.state_dict()
        missing = sorted(set(own) - set(wanted))
        if missing:
            raise ConfigError(
                f"the VGG weights lack {len(missing)} tensors of {arch} features (e.g. features.{missing[0]}); "
                f"give a torchvision {arch} state dict",
                key="losses.perceptual.weights_file",
            )
        try:
            self.features.load_state_dict({k: wanted[k] for k in own}, strict=True)
        except RuntimeError as exc:
            raise ConfigError(
                f"the VGG weights do not fit {arch}: {exc}", key="losses.perceptual.weights_file"
            ) from None
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps at the requested ReLUs, shallow to deep."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = ((x + 1.0) * 0.5 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out


def perceptual_distance(net: VGGFeatures, x: Tensor, ref: Tensor) -> Tensor:
    """0-dim mean over layers of the mean squared feature difference; ``x``, ``ref`` ``(B,3,H,W)`` in [-1,1]."""
    with torch.no_grad():
        targets = net(ref)
    dists = [F.mse_loss(fx, ft) for fx, ft in zip(net(x), targets, strict=True)]
    return torch.stack(dists).mean()


def load_vgg(cfg: PerceptualLossConfig, *, warn: bool = True) -> VGGFeatures | None:
    """The VGG of ``cfg`` from its local weights file, or None when no file is given or found (then one
    warning, if ``warn``: the main process of a run warns, the others stay quiet)."""
    names = vgg_layer_names(cfg.arch)
    unknown = [layer for layer in cfg.layers if layer not in names]
    if unknown or not cfg.layers:
        raise ConfigError(
            f"losses.perceptual.layers={list(cfg.layers)}: {', '.join(unknown) or 'empty'}; {cfg.arch} has "
            f"{', '.join(names)}",
            key="losses.perceptual.layers",
        )
    path = Path(cfg.weights_file) if cfg.weights_file else None
    if path is None or not path.is_file():
        where = "no losses.perceptual.weights_file is set" if path is None else f"{path} does not exist"
        if not warn:
            return None
        log.warning(
            "perceptual loss skipped: %s. It needs a local torchvision %s state dict (e.g. %s-*.pth); "
            "difiisr never downloads weights",
            where,
            cfg.arch,
            cfg.arch,
        )
        return None
    from difiisr.models.checkpoint import CheckpointError, read_state_dict

    try:
        state = read_state_dict(path)
    except CheckpointError as exc:
        raise ConfigError(str(exc), key="losses.perceptual.weights_file") from None
    return VGGFeatures(cfg.arch, cfg.layers, state)


def random_crop_box(
    height: int, width: int, side: int | None, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """``(top, left, crop_h, crop_w)`` of a random ``side`` square inside ``height x width`` (the whole when
    ``side`` is None or not smaller)."""
    ch, cw = (height, width) if side is None else (min(side, height), min(side, width))
    top = int(torch.randint(0, height - ch + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - cw + 1, (1,), generator=generator))
    return top, left, ch, cw


class TrainingLosses:
    """The ``losses:`` terms for one run: decode (sub-crop), compare with HR, weight. Build with ``build``."""

    def __init__(self, cfg: LossesConfig, conditioner: Conditioner, vgg: VGGFeatures | None) -> None:
        self.cfg = cfg
        self.conditioner = conditioner
        self.vgg = vgg

    @classmethod
    def build(
        cls, cfg: LossesConfig, conditioner: Conditioner, device: torch.device | str, *, warn: bool = True
    ) -> TrainingLosses | None:
        """The terms of ``cfg`` on ``device``, or None when every weight is 0 (or the only term was skipped;
        ``warn``: whether this process reports a skipped perceptual term)."""
        vgg = load_vgg(cfg.perceptual, warn=warn) if cfg.perceptual.weight > 0 else None
        if cfg.spectral.weight == 0 and vgg is None:
            return None
        return cls(cfg, conditioner, None if vgg is None else vgg.to(device))

    @property
    def names(self) -> tuple[str, ...]:
        """The logged term names, in order."""
        out = (names.METRIC_LOSS_SPECTRAL,) if self.cfg.spectral.weight > 0 else ()
        return out + ((names.METRIC_LOSS_PERCEPTUAL,) if self.vgg is not None else ())

    def terms(
        self, x0_hat: Tensor, hr: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(weighted sum, {name: unweighted 0-dim term})`` for x0_hat ``(B,C,h,w)`` (differentiable) and HR
        ``(B,3,H,W)`` in [-1,1]."""
        latent = self.conditioner.autoencoder is not None
        scale = hr.shape[-1] // x0_hat.shape[-1]
        side = self.cfg.decode_crop if latent else None
        top, left, ch, cw = random_crop_box(x0_hat.shape[-2], x0_hat.shape[-1], side, generator)
        crop = x0_hat[..., top : top + ch, left : left + cw]
        sr = self.conditioner.decode_differentiable(crop, checkpoint=self.cfg.decode_checkpoint)
        ref = hr[..., top * scale : (top + ch) * scale, left * scale : (left + cw) * scale].float()
        values: dict[str, Tensor] = {}
        total = sr.new_zeros(())
        if self.cfg.spectral.weight > 0:
            values[names.METRIC_LOSS_SPECTRAL] = log_amplitude_distance(
                sr, ref, radial_power=self.cfg.spectral.radial_power
            )
            total = total + self.cfg.spectral.weight * values[names.METRIC_LOSS_SPECTRAL]
        if self.vgg is not None:
            values[names.METRIC_LOSS_PERCEPTUAL] = perceptual_distance(self.vgg, sr, ref)
            total = total + self.cfg.perceptual.weight * values[names.METRIC_LOSS_PERCEPTUAL]
        return total, values


__all__ = [
    "TrainingLosses",
    "VGGFeatures",
    "load_vgg",
    "perceptual_distance",
    "random_crop_box",
    "vgg_layer_names",
]
