"""The files of one training checkpoint folder, written and read without pickle.

A folder ``OUT_DIR/checkpoints/checkpoint_N`` holds exactly::

    model.safetensors       the UNet weights being trained (loads strictly into the preset's UNet)
    ema.safetensors         the EMA shadow weights
    optimizer.safetensors   every tensor of the optimizer (and scheduler / grad-scaler) state
    training_state.json     the rest of that state as plain JSON: optimizer hyper-parameters and param groups,
                            LR schedule counters, EMA decay and update count, fp16 grad-scaler counters
    difiisr_state.json      the completion marker, written last: step, data position, samples, processes, seed

Reading uses only safetensors and JSON, so a checkpoint folder can never run code: a file that is not what its
name says, a missing file or any other file in the folder stops the resume with a ``ResumeError`` naming it.
Accelerate's ``save_state``/``load_state`` are not used: its ``load_state`` unpickles ``custom_checkpoint_N.pkl``
with ``weights_only=False``. No random-number state is stored: every random draw of training is seeded from the
run seed and the step or sample position (``difiisr.training.seeds``).

Tensor-bearing state dicts (optimizer, scheduler) are split into tensors (safetensors) and a JSON skeleton in
which a tensor is ``{"tensor": NAME}``, a mapping ``{"map": [[KEY, VALUE], ...]}`` (keys ``str`` or ``int``) and a
tuple ``{"tuple": [...]}``; lists, strings, numbers, booleans and null stay as they are.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from difiisr.storage import atomic_write_text
from difiisr.training.checkpointing import COMPLETE_MARKER, ResumeError, read_marker, write_marker
from difiisr.training.ema import EMA

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "training_state.json"
#: Every file of a complete checkpoint folder, in the order they are written (the marker last).
CHECKPOINT_FILES = (MODEL_FILE, EMA_FILE, OPTIMIZER_FILE, STATE_FILE, COMPLETE_MARKER)
FORMAT = "difiisr-train-checkpoint/1"
#: Marker fields that hold the training counters (``TrainingState``).
COUNTERS = ("step", "epoch", "batch", "samples")

_SCALARS = (bool, int, float, str, type(None))


@dataclasses.dataclass(frozen=True)
class TrainingObjects:
    """What a checkpoint saves and restores in place.

    ``model``: the unwrapped network being trained; ``optimizer``, ``scheduler``, ``grad_scaler``: objects with
    ``state_dict()``/``load_state_dict()`` (``grad_scaler`` is None unless training in fp16).
    """

    model: nn.Module
    ema: EMA
    optimizer: Any
    scheduler: Any
    grad_scaler: Any | None = None


def write_checkpoint(folder: str | Path, objects: TrainingObjects, record: Mapping[str, Any]) -> Path:
    """Write every file of a checkpoint folder (each atomically), then the marker ``record``; returns the folder.

    ``record`` must hold the ``COUNTERS`` as non-negative ints.
    """
    from difiisr.models.checkpoint import save_safetensors

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(objects.model, out / MODEL_FILE, {"format": FORMAT})
    save_safetensors(objects.ema.module, out / EMA_FILE, {"format": FORMAT})
    tensors: dict[str, torch.Tensor] = {}
    scaler = objects.grad_scaler
    doc = {
        "format": FORMAT,
        "optimizer": _to_plain(objects.optimizer.state_dict(), tensors, "optimizer"),
        "scheduler": _to_plain(objects.scheduler.state_dict(), tensors, "scheduler"),
        "grad_scaler": None if scaler is None else _to_plain(scaler.state_dict(), tensors, "scaler"),
        "ema": {"decay": objects.ema.decay, "num_updates": objects.ema.num_updates},
    }
    save_safetensors(tensors, out / OPTIMIZER_FILE, {"format": FORMAT})
    atomic_write_text(out / STATE_FILE, json.dumps(doc, indent=1) + "\n")
    write_marker(out, dict(record))
    return out


def read_checkpoint(folder: str | Path, objects: TrainingObjects) -> dict[str, Any]:
    """Load a complete checkpoint folder into ``objects`` in place; returns its marker record.

    Raises ``ResumeError`` naming the file when the folder holds anything else than ``CHECKPOINT_FILES``, or a
    file is missing, unreadable, malformed or does not fit the model.
    """
    root = Path(folder)
    _check_listing(root)
    record = _checked_record(root)
    _load_weights(objects.model, root / MODEL_FILE)
    _load_weights(objects.ema.module, root / EMA_FILE)
    state_path, tensor_path = root / STATE_FILE, root / OPTIMIZER_FILE
    doc = _read_json(state_path)
    try:
        tensors = load_file(str(tensor_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ResumeError(f"{tensor_path}: not a readable safetensors file ({exc}); {_REFUSED}") from None
    used: set[str] = set()
    try:
        if doc.get("format") != FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
        opt_state = _from_plain(doc["optimizer"], tensors, used)
        sched_state = _from_plain(doc["scheduler"], tensors, used)
        scaler_state = None if doc["grad_scaler"] is None else _from_plain(doc["grad_scaler"], tensors, used)
        decay, num_updates = doc["ema"]["decay"], doc["ema"]["num_updates"]
        if not isinstance(decay, float) or not isinstance(num_updates, int) or isinstance(num_updates, bool):
            raise ValueError("ema.decay must be a number and ema.num_updates an integer")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ResumeError(f"{state_path}: malformed training state ({exc}); {_REFUSED}") from None
    if set(tensors) - used:
        extra = ", ".join(sorted(set(tensors) - used)[:5])
        raise ResumeError(
            f"{tensor_path}: holds tensors that {STATE_FILE} does not use ({extra}); {_REFUSED}"
        )
    _check_optimizer_state(opt_state, objects.optimizer, tensor_path)
    try:
        objects.optimizer.load_state_dict(opt_state)
        objects.scheduler.load_state_dict(sched_state)
        if objects.grad_scaler is not None and scaler_state is not None:
            objects.grad_scaler.load_state_dict(scaler_state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ResumeError(
            f"{state_path}: the optimizer or schedule state does not fit this run ({exc}); {_REFUSED}"
        ) from None
    objects.ema.decay, objects.ema.num_updates = decay, num_updates
    return record


_REFUSED = (
    "the checkpoint was not written by this version of difiisr training, or was altered; resume refused"
)


def _check_listing(root: Path) -> None:
    """Every expected file is present, and nothing else is (a planted or foreign file is never read)."""
    for path in sorted(root.iterdir()):
        if path.name not in CHECKPOINT_FILES or not path.is_file():
            raise ResumeError(
                f"{path}: not a file of a difiisr checkpoint folder (it holds only {', '.join(CHECKPOINT_FILES)}); "
                "resume refused: files such as Accelerate's pickles are never loaded because unpickling can run "
                "code. Delete this checkpoint folder to resume from the previous one, or start in a new out_dir"
            )
    for name in CHECKPOINT_FILES:
        if not (root / name).is_file():
            raise ResumeError(f"{root / name}: missing from the checkpoint folder; {_REFUSED}")


def _checked_record(root: Path) -> dict[str, Any]:
    """The marker record with its counters checked (non-negative ints)."""
    path = root / COMPLETE_MARKER
    record = read_marker(root)
    if record is None:
        raise ResumeError(f"{path}: missing; the checkpoint folder is incomplete")
    for key in COUNTERS:
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ResumeError(f"{path}: {key}={value!r} is not a step counter (an integer >= 0); {_REFUSED}")
    return record


def _load_weights(module: nn.Module, path: Path) -> None:
    from difiisr.models.checkpoint import CheckpointError, load_checkpoint

    try:
        load_checkpoint(module, path, strict=True)
    except CheckpointError as exc:
        raise ResumeError(f"{exc}; {_REFUSED}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{path}: not a readable JSON file ({type(exc).__name__}); {_REFUSED}") from None
    if not isinstance(doc, dict):
        raise ResumeError(f"{path}: top level is a {type(doc).__name__}, not a mapping; {_REFUSED}")
    return doc


def _check_optimizer_state(state: Any, optimizer: Any, path: Path) -> None:
    """Parameter count and state-tensor shapes agree with ``optimizer``'s parameters (another model is refused)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    try:
        ids = [i for group in state["param_groups"] for i in group["params"]]
        entries = state["state"].items()
    except (KeyError, TypeError, AttributeError) as exc:
        raise ResumeError(f"{path}: malformed optimizer state ({exc}); {_REFUSED}") from None
    if len(ids) != len(params):
        raise ResumeError(
            f"{path}: optimizer state for {len(ids)} parameters, but the model has {len(params)}; "
            "the checkpoint is from another model"
        )
    by_id = dict(zip(ids, params, strict=True))
    for pid, entry in entries:
        param = by_id.get(pid)
        if param is None or not isinstance(entry, dict):
            raise ResumeError(f"{path}: optimizer state for unknown parameter {pid!r}; {_REFUSED}")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != param.shape:
                raise ResumeError(
                    f"{path}: {name} of parameter {pid} has shape {tuple(value.shape)} but the model's parameter "
                    f"has {tuple(param.shape)}; the checkpoint is from another model"
                )


def _is_key(key: Any) -> bool:
    """Mapping keys a checkpoint stores: strings and integers (not booleans)."""
    return isinstance(key, str | int) and not isinstance(key, bool)


def _to_plain(value: Any, tensors: dict[str, torch.Tensor], name: str) -> Any:
    """JSON-able skeleton of ``value``; its tensors go to ``tensors`` under dotted ``name`` paths."""
    if isinstance(value, torch.Tensor):
        if name in tensors:
            raise ValueError(f"two tensors of the training state are both named {name!r}")
        tensors[name] = value.detach().to("cpu").contiguous()
        return {"tensor": name}
    if isinstance(value, Mapping):
        pairs = []
        for key, item in value.items():
            if not _is_key(key):
                raise TypeError(f"{name}: key {key!r} is neither a string nor an integer")
            pairs.append([key, _to_plain(item, tensors, f"{name}.{key}")])
        return {"map": pairs}
    if isinstance(value, tuple):
        return {"tuple": [_to_plain(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_to_plain(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]
    if isinstance(value, _SCALARS):
        return value
    raise TypeError(
        f"{name}: a {type(value).__name__} cannot be stored in a checkpoint (tensors and plain data)"
    )


def _from_plain(node: Any, tensors: Mapping[str, torch.Tensor], used: set[str]) -> Any:
    """Inverse of ``_to_plain``; raises ``ValueError``/``TypeError`` on anything it would not have written."""
    if isinstance(node, list):
        return [_from_plain(v, tensors, used) for v in node]
    if isinstance(node, dict):
        if len(node) != 1 or next(iter(node)) not in ("tensor", "map", "tuple"):
            raise ValueError(f"unexpected object with keys {sorted(node)}")
        ((tag, body),) = node.items()
        if tag == "tensor":
            if not isinstance(body, str) or body not in tensors:
                raise ValueError(f"tensor {body!r} is not in {OPTIMIZER_FILE}")
            used.add(body)
            return tensors[body]
        if tag == "tuple":
            if not isinstance(body, list):
                raise TypeError("a tuple must be a list")
            return tuple(_from_plain(v, tensors, used) for v in body)
        if not isinstance(body, list):
            raise TypeError("a map must be a list of [key, value] pairs")
        out = {}
        for pair in body:
            if not isinstance(pair, list) or len(pair) != 2 or not _is_key(pair[0]):
                raise ValueError(f"map entry {pair!r} is not a [key, value] pair")
            out[pair[0]] = _from_plain(pair[1], tensors, used)
        return out
    if isinstance(node, _SCALARS):
        return node
    raise TypeError(f"unexpected {type(node).__name__}")
