"""LPIPS v0.1 with the AlexNet trunk, loaded only from local weight files (never downloaded).

The network is torchvision's AlexNet ``features`` (its architecture only, ``weights=None``), cut after the five
ReLUs (feature indices 1, 4, 7, 9, 11), plus five 1x1 linear layers without bias. Inputs are RGB in [-1,1],
shifted by ``(-.030, -.088, -.188)`` and divided by ``(.458, .448, .450)``; each layer's features are unit-normalised
over channels, squared differences go through the linear layer, are averaged over space and summed over layers.

Accepted weight files (``torch.load``-able or ``.safetensors``; several files are merged, later ones win):

- a full LPIPS state dict as pyiqa/``lpips`` save it: ``net.slice{1..5}.{i}.weight|bias`` and
  ``lin{k}.model.1.weight`` (or ``lins.{k}.model.1.weight``); optionally wrapped in ``params``/``state_dict``
  and/or prefixed ``module.``;
- the ``lpips`` package's ``alex.pth`` (linear layers only) together with a torchvision AlexNet state dict
  (``features.{i}.weight|bias``): pass both files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from difiisr.errors import DifiisrError

LPIPS_ENV: Final = "DIFIISR_LPIPS_WEIGHTS"
_RELU_ENDS: Final = (2, 5, 8, 10, 12)  # AlexNet features[0:2], [2:5], [5:8], [8:10], [10:12]
_CHANNELS: Final = (64, 192, 384, 256, 256)
_CONV_INDICES: Final = (0, 3, 6, 8, 10)
_SHIFT: Final = (-0.030, -0.088, -0.188)
_SCALE: Final = (0.458, 0.448, 0.450)


class LPIPSWeightsError(DifiisrError, ValueError):
    """LPIPS weight files are missing, unreadable or incomplete; the message names the file(s) and the fix."""


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 (AlexNet): ``forward(x, y)`` with ``(B,3,H,W)`` in [-1,1] -> ``(B,)`` distance (0 = identical)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import alexnet

        self.features = alexnet(weights=None).features[: _RELU_ENDS[-1]]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def _layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, start, h = [], 0, (x - self.shift) / self.scale
        for end in _RELU_ENDS:
            h = self.features[start:end](h)
            outs.append(h)
            start = end
        return outs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per image: ``(B,3,H,W)`` pair in [-1,1] -> ``(B,)`` float, >= 0 for non-negative lins."""
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for lin, fx, fy in zip(self.lins, self._layers(x), self._layers(y), strict=True):
            nx = fx / (torch.sqrt(torch.sum(fx**2, dim=1, keepdim=True)) + 1e-10)
            ny = fy / (torch.sqrt(torch.sum(fy**2, dim=1, keepdim=True)) + 1e-10)
            total = total + lin((nx - ny) ** 2).mean(dim=(1, 2, 3))
        return total


def _read_any(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LPIPSWeightsError(
            f"{path}: LPIPS weight file not found; pass an existing file to --lpips-weights"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for a bad file
        raise LPIPSWeightsError(
            f"{path}: cannot read LPIPS weights ({exc}); give a state-dict file"
        ) from None
    for wrapper in ("params", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise LPIPSWeightsError(
            f"{path}: expected a state dict (mapping of tensors), got {type(state).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _canonical(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map pyiqa/lpips/torchvision key names onto ``LPIPSAlex`` names (``features.{i}.*``, ``lins.{k}.weight``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"net\.slice\d\.(\d+)\.(weight|bias)", key):
            out[f"features.{m[1]}.{m[2]}"] = value
        elif m := re.fullmatch(r"features\.(\d+)\.(weight|bias)", key):
            out[key] = value
        elif m := re.fullmatch(r"lins?\.?(\d)\.model\.\d\.weight", key):
            out[f"lins.{m[1]}.weight"] = value
    return out


def load_lpips_alex(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> LPIPSAlex:
    """Build ``LPIPSAlex`` from one or more local weight files (merged); raises ``LPIPSWeightsError`` if incomplete."""
    files = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    merged: dict[str, torch.Tensor] = {}
    for f in files:
        merged.update(_canonical(_read_any(f)))
    model = LPIPSAlex()
    expected = set(model.state_dict())
    missing = sorted(expected - set(merged))
    if missing:
        names = ", ".join(str(f) for f in files)
        trunk = any(k.startswith("features.") for k in missing)
        hint = (
            "the AlexNet trunk is missing: also pass a torchvision AlexNet state dict (features.N.*) or a full "
            "LPIPS file (net.sliceN.*)"
            if trunk
            else "the linear layers are missing: also pass the LPIPS v0.1 alex linear-layer weights (linN.model.1.weight)"
        )
        raise LPIPSWeightsError(
            f"{names}: incomplete LPIPS AlexNet weights ({len(missing)} tensors missing); {hint}"
        )
    try:
        model.load_state_dict({k: merged[k] for k in expected}, strict=True)
    except RuntimeError as exc:
        raise LPIPSWeightsError(
            f"{', '.join(map(str, files))}: LPIPS weights do not fit AlexNet-LPIPS: {exc}"
        ) from None
    return model.eval()


def lpips_weights_from_env(explicit: Sequence[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Weight files to use: ``explicit`` if given, else ``$DIFIISR_LPIPS_WEIGHTS`` (os.pathsep-separated), else []."""
    if explicit:
        return [Path(p) for p in explicit]
    env = os.environ.get(LPIPS_ENV, "").strip()
    return [Path(p) for p in env.split(os.pathsep) if p] if env else []


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    from difiisr.evaluation.metrics import to_unit_float

    unit = to_unit_float(img)
    rgb = np.repeat(unit[..., None], 3, axis=2) if unit.ndim == 2 else unit
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()[None] * 2.0 - 1.0


@torch.no_grad()
def lpips_distance(model: LPIPSAlex, sr: np.ndarray, hr: np.ndarray) -> float:
    """LPIPS (lower is better) of ``(H,W)``/``(H,W,3)`` uint8/uint16/[0,1] images; grey is replicated to RGB."""
    x, y = _to_tensor(sr), _to_tensor(hr)
    if x.shape != y.shape:
        raise ValueError(f"LPIPS: image sizes differ: {tuple(x.shape[2:])} vs {tuple(y.shape[2:])}")
    param = next(model.parameters())
    return float(model(x.to(param), y.to(param))[0].item())
