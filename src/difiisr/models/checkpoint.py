"""Read, check and write network weights: released ``.pth`` checkpoints and our ``.safetensors`` files.

Accepted layouts: a bare state_dict, or one wrapped as ``{"state_dict": ...}`` (ResShift/SinSR/DifIISR),
``{"params_ema": ...}`` / ``{"params": ...}`` (BasicSR), ``{"model": ...}`` or ``{"ema_state": ...}``; keys may carry
``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes. Pickled files are read with
``torch.load(weights_only=True)``: a file that needs any other Python object is refused, never executed.

A mismatch between a file and a network is reported in one readable error that lists missing and unexpected keys
and shape differences, and names the shipped preset (and part: unet or autoencoder) the file does fit.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from difiisr.config import ConfigError, from_mapping, load_yaml
from difiisr.errors import DifiisrError
from difiisr.models.swin_unet import SwinUNet, SwinUNetConfig
from difiisr.models.vqgan import VQGANConfig, VQGANf4
from difiisr.storage import atomic_path

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
WRAPPER_KEYS = ("state_dict", "params_ema", "params", "model", "ema_state")
KEY_PREFIXES = ("module.", "_orig_mod.")
LIST_LIMIT = 10  # keys shown per category in a mismatch message

Signature = dict[str, tuple[int, ...]]


class CheckpointError(DifiisrError):
    """A weights file cannot be read or does not fit the network; the message names the file and the fix."""


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a state_dict; save model.state_dict() instead of the model"
        )
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    top = ", ".join(repr(k) for k in list(obj)[:LIST_LIMIT])
    raise CheckpointError(
        f"{path}: no state_dict found (top-level keys: {top or 'none'}); expected a mapping of tensors, "
        f"optionally under one of {', '.join(WRAPPER_KEYS)}"
    )


def _strip_prefixes(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        name = str(key)
        while name.startswith(KEY_PREFIXES):
            name = name[len(next(p for p in KEY_PREFIXES if name.startswith(p))) :]
        if name in out:
            raise CheckpointError(
                f"{path}: keys {origin[name]!r} and {key!r} both become {name!r} once the "
                f"{' / '.join(KEY_PREFIXES)} prefixes are removed; the file mixes two models"
            )
        out[name] = value
        origin[name] = str(key)
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (``.safetensors``, or ``.pth/.pt/.ckpt/.bin`` read without unpickling code), on CPU."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    suffix = p.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        try:
            raw: Any = load_file(str(p), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{p}: not a readable safetensors file ({exc})") from None
    elif suffix in TORCH_SUFFIXES:
        try:
            raw = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported (?:global: GLOBAL|operand) \S+", str(exc))
            reason = found.group(0).strip() if found else type(exc).__name__
            raise CheckpointError(
                f"{p}: refused to load: the file needs Python objects other than tensors to unpickle ({reason}). "
                "Only weights are read (torch.load weights_only=True) and arbitrary code is never run; re-save "
                "it as a plain state_dict, or convert it to .safetensors in a trusted environment"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({exc})") from None
    else:
        raise CheckpointError(
            f"{p}: unknown weights format {suffix or '(no suffix)'!r}; use {SAFETENSORS_SUFFIX} or one of "
            f"{', '.join(TORCH_SUFFIXES)}"
        )
    return _strip_prefixes(_unwrap(raw, p), p)


def signature(state: Mapping[str, torch.Tensor]) -> Signature:
    """Key -> shape map of a state_dict (what decides whether a file fits a network)."""
    return {k: tuple(v.shape) for k, v in state.items()}


def shipped_preset_signatures() -> dict[str, Signature]:
    """Signatures of the networks of every shipped model preset: ``{"x4 unet": ..., "x4 autoencoder": ...}``.

    A YAML file in ``difiisr/presets`` is a model preset when it has a ``unet`` section.

    Networks are built on the ``meta`` device (no memory, no initialisation cost).
    """
    root = resources.files("difiisr") / "presets"
    out: dict[str, Signature] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        name = entry.name[: -len(".yaml")]
        try:
            doc = load_yaml(Path(str(entry)))
            if not isinstance(doc.get("unet"), dict):
                continue  # not a model preset (e.g. a training preset in the same folder)
            unet_cfg = from_mapping(SwinUNetConfig, doc["unet"], f"{entry.name}:unet")
            ae_doc = doc.get("autoencoder")
            ae_cfg = (
                None if ae_doc is None else from_mapping(VQGANConfig, ae_doc, f"{entry.name}:autoencoder")
            )
            with torch.device("meta"):
                out[f"{name} unet"] = signature(SwinUNet(unet_cfg).state_dict())
                if ae_cfg is not None:
                    out[f"{name} autoencoder"] = signature(VQGANf4(ae_cfg).state_dict())
        except (ConfigError, KeyError, ValueError) as exc:
            log.warning("shipped preset %s could not be built for checkpoint matching: %s", entry.name, exc)
    return out


def matching_presets(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Shipped preset parts (``"x4 unet"``, ``"x4 autoencoder"``, ...) whose keys and shapes equal ``state``."""
    sig = signature(state)
    return [name for name, ref in shipped_preset_signatures().items() if ref == sig]


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:LIST_LIMIT])
    more = f", ... ({len(items) - LIST_LIMIT} more)" if len(items) > LIST_LIMIT else ""
    return f"{len(items)} {title}: {shown}{more}"


def mismatch_report(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> str | None:
    """Readable description of why ``state`` does not fit ``module`` (None when keys and shapes all match)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} (file {tuple(state[k].shape)} vs network {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = [f"{source} does not fit {type(module).__name__}"]
    if missing:
        parts.append(_listing("missing keys", missing))
    if unexpected:
        parts.append(_listing("unexpected keys", unexpected))
    if shapes:
        parts.append(_listing("shape mismatches", shapes))
    shipped = shipped_preset_signatures()
    fits = [name for name, ref in shipped.items() if ref == signature(state)]
    kind = "unet" if isinstance(module, SwinUNet) else "autoencoder" if isinstance(module, VQGANf4) else None
    same_kind = [f.split(" ")[0] for f in fits if f.split(" ")[1] == kind]
    other_kind = [f for f in fits if f.split(" ")[1] != kind]
    if same_kind:
        parts.append(
            f"it fits the {kind} of the shipped preset {', '.join(same_kind)}: use --preset {same_kind[0]}"
        )
    elif other_kind:
        flag = "--vae-ckpt" if other_kind[0].endswith("autoencoder") else "--unet-ckpt"
        parts.append(
            f"it is the {other_kind[0]} checkpoint, not a {kind or 'matching'} one: pass it with {flag}"
        )
    else:
        names = sorted({n.split(" ")[0] for n in shipped})
        parts.append(
            f"no shipped preset ({', '.join(names)}) fits it either; check that it is a DifIISR/ResShift/SinSR "
            "Swin-UNet or VQGAN-f4 checkpoint, or write a preset YAML with its hyper-parameters"
        )
    return "; ".join(parts)


def load_checkpoint(module: nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Load a weights file into ``module`` in place (strict: keys and shapes must match exactly).

    With ``strict=False`` matching tensors are loaded and the rest are skipped with a warning.
    """
    state = read_state_dict(path)
    report = mismatch_report(module, state, str(path))
    if report is not None:
        if strict:
            raise CheckpointError(report)
        log.warning("loading the matching part of %s only: %s", path, report)
        expected = module.state_dict()
        state = {
            k: v for k, v in state.items() if k in expected and tuple(v.shape) == tuple(expected[k].shape)
        }
    module.load_state_dict(state, strict=strict)
    log.info("loaded %d tensors from %s into %s", len(state), path, type(module).__name__)


def save_safetensors(
    module_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write weights (all tensors of the state_dict, on CPU, contiguous) to ``path`` atomically; returns the path.

    ``metadata`` values are stored as strings in the safetensors header.
    """
    state = (
        module_or_state_dict.state_dict()
        if isinstance(module_or_state_dict, nn.Module)
        else module_or_state_dict
    )
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    out = Path(path)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return out
