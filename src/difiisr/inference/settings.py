"""``InferenceSettings``: how a model turns LR into SR. One definition, one set of defaults, one validation.

Every path that upscales takes these settings: ``difiisr upscale``, ``difiisr evaluate``, the MLflow pyfunc
(``params``), training validation, the batch job and the pipelines. They convert to and from

- CLI flags (``add_arguments`` / ``from_args``),
- pyfunc / pipeline ``params`` (``to_params`` / ``from_params``: JSON scalars, ``0`` meaning "none" for
  ``steps`` and ``tile``),
- MLflow tags and output-file records (``to_record`` / ``from_record``: strings),

and ``digest()`` names the settings that change output pixels (everything but ``batch`` and
``guidance_checkpoint``; the ``guidance_*`` fields only when guidance is on, so unguided settings keep the digest
they had before guidance existed), so an output made with other settings is recognised as such.

Gradient guidance (``guidance``, ``guidance_*``; the math is in ``difiisr.diffusion.guidance``) takes a gradient
step ``-lambda_t grad ||A(D(x0_hat)) - y||^2 (+ mu spectral prior)`` at ``guidance_steps`` ddim/ancestral steps,
on the estimate x0_hat (``guidance_space`` ``x0``, the default) or on the state z_t (``xt``, the paper's form),
with ``lambda_t = guidance_scale x`` the ``guidance_schedule`` factor.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

from difiisr.errors import DifiisrError

SamplerName = Literal["onestep", "ddim", "ancestral"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
GuidanceName = Literal["none", "lr-consistency"]
GuidanceScheduleName = Literal["constant", "linear", "eta"]
GuidanceSpaceName = Literal["x0", "xt"]
SAMPLER_NAMES: tuple[str, ...] = get_args(SamplerName)
GUIDANCE_NAMES: tuple[str, ...] = get_args(GuidanceName)
GUIDANCE_SCHEDULES: tuple[str, ...] = get_args(GuidanceScheduleName)
GUIDANCE_SPACES: tuple[str, ...] = get_args(GuidanceSpaceName)
#: Device choices of every verb that runs a model (``auto`` = CUDA when available, else CPU; ``cuda:N`` also works).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = get_args(Precision)

#: Prefix of the keys in MLflow tags and output-file records.
RECORD_PREFIX = "inference."


class SettingsError(DifiisrError, ValueError):
    """Inference settings that cannot run (bad value or combination); the message names the field and the fix."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# Per field: CLI help, and whether 0 in params/CLI means None ("the preset's steps", "no tiling").
_FIELD_DOC: dict[str, tuple[str, bool]] = {
    "sampler": ("reverse process: onestep (one network call at the noisiest step), ddim or ancestral", False),
    "steps": (
        "respace ddim/ancestral to N >= 1 steps; not with onestep",
        True,
    ),
    "seed": ("seed of all sampling noise (recorded with every output)", False),
    "tile": ("tile side in LR pixels, rounded to the network's size multiple; 0 = never tile", True),
    "tile_overlap": ("overlap of neighbouring tiles in LR pixels", False),
    "batch": ("tiles (of one or several images) per network call; raise on a GPU", False),
    "precision": ("compute precision: auto = bf16 on CUDA (fp16 without bf16), fp32 on CPU", False),
    "guidance": (
        "gradient guidance of ddim/ancestral: lr-consistency pulls each guided step towards "
        "||A(SR) - LR||^2 = 0 (A = the bicubic x1/4 protocol); none = off",
        False,
    ),
    "guidance_scale": ("guidance step size lambda (0 = no correction)", False),
    "guidance_steps": (
        "guide the K least-noisy steps that can move the sample (t = K-1..0 in x0, K..1 in xt); default and 0: "
        "all of them",
        True,
    ),
    "guidance_space": (
        "where the gradient step is taken: x0 corrects the estimate x0_hat before each update (gradient through "
        "the decoder only; also the last step), xt corrects the state z_t through the denoiser (the paper's form)",
        False,
    ),
    "guidance_schedule": (
        "lambda_t over the steps: constant, linear (grows as the noise falls) or eta (follows the noise level)",
        False,
    ),
    "guidance_spectral": (
        "weight mu of the thermal-spectrum prior added to the guidance loss (0 = off)",
        False,
    ),
    "guidance_checkpoint": (
        "recompute the VQGAN decoder's activations in the guidance backward pass (less memory, slower)",
        False,
    ),
}

#: Fields that do not change output pixels (left out of ``digest``).
_PERFORMANCE_ONLY = frozenset({"batch", "guidance_checkpoint"})
#: Fields that only matter when ``guidance`` is on (left out of ``digest`` when it is off).
_GUIDANCE_FIELDS = frozenset(
    {
        "guidance_scale",
        "guidance_steps",
        "guidance_space",
        "guidance_schedule",
        "guidance_spectral",
        "guidance_checkpoint",
    }
)
_CHOICES: dict[str, tuple[str, ...]] = {
    "sampler": SAMPLER_NAMES,
    "precision": PRECISIONS,
    "guidance": GUIDANCE_NAMES,
    "guidance_space": GUIDANCE_SPACES,
    "guidance_schedule": GUIDANCE_SCHEDULES,
}
_FLOATS = frozenset({"guidance_scale", "guidance_spectral"})
_BOOLS = frozenset({"guidance_checkpoint"})


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """How to upscale: sampler, steps, seed, tiling, batching, precision and guidance (validated on construction).

    ``steps=None`` runs the preset's number of steps; ``onestep`` always runs at the trained schedule's noisiest
    step, so it takes no ``steps``. ``tile=None`` never tiles; images no larger than ``tile`` are never tiled.
    ``guidance`` other than ``none`` needs ``ddim`` or ``ancestral``; ``guidance_steps=None`` guides every step
    that can move the sample. The other ``guidance_*`` fields must keep their defaults while guidance is off.
    """

    sampler: SamplerName = "onestep"
    steps: int | None = None
    seed: int = 0
    tile: int | None = 256
    tile_overlap: int = 32
    batch: int = 1
    precision: Precision = "auto"
    guidance: GuidanceName = "none"
    guidance_scale: float = 8.0
    guidance_steps: int | None = None
    guidance_space: GuidanceSpaceName = "x0"
    guidance_schedule: GuidanceScheduleName = "constant"
    guidance_spectral: float = 0.0
    guidance_checkpoint: bool = False

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise SettingsError(
                    f"{name} {getattr(self, name)!r} is unknown; use one of {', '.join(choices)}"
                )
        for name in ("steps", "seed", "tile", "tile_overlap", "batch", "guidance_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise SettingsError(f"{name}={value!r}: must be a whole number")
        for name in _FLOATS:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise SettingsError(f"{name}={value!r}: must be a finite number >= 0")
            object.__setattr__(self, name, float(value))  # one type in params, records and the pyfunc schema
        if not isinstance(self.guidance_checkpoint, bool):
            raise SettingsError(f"guidance_checkpoint={self.guidance_checkpoint!r}: must be true or false")
        self._check_guidance()
        if self.steps is not None:
            if self.sampler == "onestep":
                raise SettingsError(
                    f"steps={self.steps} with sampler onestep: one-step sampling always runs at the trained "
                    "schedule's noisiest step, so it takes no steps; drop --steps, or use --sampler ddim/ancestral"
                )
            if self.steps < 1:
                raise SettingsError(
                    f"steps={self.steps}: must be >= 1 (or unset/0 for the preset's number of steps)"
                )
        if self.tile is not None and self.tile < 1:
            raise SettingsError(f"tile={self.tile}: must be >= 1 LR pixel (or unset/0 for no tiling)")
        if self.tile_overlap < 0:
            raise SettingsError(f"tile_overlap={self.tile_overlap}: must be >= 0 LR pixels")
        if self.tile is not None and self.tile_overlap >= self.tile:
            raise SettingsError(
                f"tile_overlap={self.tile_overlap} must be smaller than tile={self.tile}; lower --tile-overlap "
                "or raise --tile"
            )
        if self.batch < 1:
            raise SettingsError(f"batch={self.batch}: must be >= 1 (tiles per network call)")

    def _check_guidance(self) -> None:
        if self.guidance == "none":
            defaults = InferenceSettings.__dataclass_fields__
            changed = [
                name for name in sorted(_GUIDANCE_FIELDS) if getattr(self, name) != defaults[name].default
            ]
            if changed:
                flags = ", ".join(_flag(name) for name in changed)
                raise SettingsError(
                    f"{', '.join(changed)} set without guidance: they have no effect while guidance is none; add "
                    f"--guidance lr-consistency, or drop {flags}"
                )
            return
        if self.sampler == "onestep":
            raise SettingsError(
                f"guidance {self.guidance} with sampler onestep: one-step sampling makes a single network call, "
                "so there is no step to guide; use --sampler ddim or ancestral, or --guidance none"
            )
        if self.guidance_steps is not None and self.guidance_steps < 1:
            raise SettingsError(
                f"guidance_steps={self.guidance_steps}: must be >= 1 (or unset/0 to guide every step)"
            )

    # ------------------------------------------------------------------ checks against a model

    def check_steps(self, preset_steps: int) -> None:
        """Raise ``SettingsError`` when ``steps`` exceeds the model's ``preset_steps``, or ``guidance_steps`` the
        steps this run can guide (call before any work)."""
        if self.steps is not None and self.steps > preset_steps:
            raise SettingsError(
                f"steps={self.steps}: this model's schedule has {preset_steps} steps; use 1..{preset_steps} "
                "(or unset for all of them)"
            )
        total = preset_steps if self.steps is None else self.steps
        guidable = total if self.guidance_space == "x0" else total - 1
        if self.guidance != "none" and self.guidance_steps is not None and self.guidance_steps > guidable:
            first = "0" if self.guidance_space == "x0" else "1; the last update ignores its input z_0"
            where = f"t = {total - 1}..{first}"
            raise SettingsError(
                f"guidance_steps={self.guidance_steps}: this run has {total} steps, of which {guidable} can be "
                f"guided in space {self.guidance_space} ({where}); use 1..{max(guidable, 1)} or unset for all of "
                "them"
            )
        if self.guidance != "none" and self.guidance_space == "xt" and total < 2:
            raise SettingsError(
                f"guidance with {total} step: a one-step chain has no step that guidance can move; use "
                "--steps 2 or more, or --guidance none"
            )

    # ------------------------------------------------------------------ conversions

    def replace(self, **changes: Any) -> InferenceSettings:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_params(self) -> dict[str, Any]:
        """JSON scalars for pyfunc/pipeline ``params``: ``steps``/``tile`` None become 0."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = 0 if value is None and _FIELD_DOC[f.name][1] else value
        return out

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any] | None, base: InferenceSettings | None = None
    ) -> InferenceSettings:
        """Settings from ``params`` (missing keys keep ``base`` / the defaults); unknown keys are refused."""
        start = base or cls()
        if not params:
            return start
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise SettingsError(
                f"unknown inference parameter(s) {', '.join(unknown)}; accepted: {', '.join(names)}"
            )
        changes: dict[str, Any] = {}
        for key, raw in params.items():
            changes[key] = _parse_value(key, raw)
        return dataclasses.replace(start, **changes)

    def to_record(self) -> dict[str, str]:
        """String form for MLflow tags and output-file records: ``inference.<field>`` plus ``inference.digest``."""
        out = {f"{RECORD_PREFIX}{k}": str(v) for k, v in self.to_params().items()}
        out[f"{RECORD_PREFIX}digest"] = self.digest()
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, str]) -> InferenceSettings:
        """Inverse of ``to_record`` (keys without the prefix are ignored; a missing field keeps its default)."""
        params = {
            key[len(RECORD_PREFIX) :]: value
            for key, value in record.items()
            if key.startswith(RECORD_PREFIX) and key != f"{RECORD_PREFIX}digest"
        }
        return cls.from_params(params)

    def digest(self) -> str:
        """sha256 (hex, first 16) of the fields that change output pixels, in canonical JSON."""
        skip = _PERFORMANCE_ONLY | (
            _GUIDANCE_FIELDS | {"guidance"} if self.guidance == "none" else frozenset()
        )
        fields = {k: v for k, v in self.to_params().items() if k not in skip}
        blob = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        """Short human form for summaries: ``onestep, seed 0, tile 256/32, batch 1, auto`` (+ guidance when on,
        with its space: an x0 and an xt run of the same scale are different runs)."""
        steps = "" if self.steps is None else f" {self.steps} steps,"
        tile = "no tiling" if self.tile is None else f"tile {self.tile}/{self.tile_overlap}"
        text = f"{self.sampler},{steps} seed {self.seed}, {tile}, batch {self.batch}, {self.precision}"
        if self.guidance == "none":
            return text
        where = "all steps" if self.guidance_steps is None else f"{self.guidance_steps} steps"
        prior = f", spectral {self.guidance_spectral:g}" if self.guidance_spectral else ""
        return (
            f"{text}, {self.guidance_space}-space guidance {self.guidance} scale {self.guidance_scale:g} "
            f"{self.guidance_schedule} over {where}{prior}"
        )

    # ------------------------------------------------------------------ command line

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | Any, title: str = "sampling") -> None:
        """Add one flag per field (``--sampler``, ``--steps``, ...) with the defaults of this class."""
        group = parser.add_argument_group(title) if hasattr(parser, "add_argument_group") else parser
        defaults = cls()
        for f in dataclasses.fields(cls):
            doc, zero_is_none = _FIELD_DOC[f.name]
            default = getattr(defaults, f.name)
            shown = 0 if default is None and zero_is_none else default
            if f.name == "steps":  # on the command line 0 is refused (from_args): the default is "left out"
                shown = "the preset's"
            kwargs: dict[str, Any] = {"dest": f"inference_{f.name}", "default": None}
            if f.name in _CHOICES:
                kwargs["choices"] = _CHOICES[f.name]
            elif f.name in _BOOLS:
                kwargs["action"] = argparse.BooleanOptionalAction
                shown = "on" if default else "off"
            elif f.name in _FLOATS:
                kwargs["type"] = float
                kwargs["metavar"] = "X"
            else:
                kwargs["type"] = int
                kwargs["metavar"] = "N"
            group.add_argument(_flag(f.name), help=f"{doc} (default {shown})", **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InferenceSettings:
        """Settings from the flags added by ``add_arguments`` (unset flags keep the defaults).

        On the command line ``--steps`` must be >= 1 (leave it out for the preset's steps); ``--tile 0`` means
        "never tile", as in ``params``.
        """
        if getattr(args, "inference_steps", None) is not None and args.inference_steps < 1:
            raise SettingsError(
                f"--steps {args.inference_steps}: must be >= 1; leave --steps out to run the preset's steps"
            )
        params = {
            f.name: getattr(args, f"inference_{f.name}")
            for f in dataclasses.fields(cls)
            if getattr(args, f"inference_{f.name}", None) is not None
        }
        return cls.from_params(params)


def _parse_value(key: str, raw: Any) -> Any:
    """One params/record value for field ``key``: strings are parsed, ``0``/``None`` mean None where allowed."""
    zero_is_none = _FIELD_DOC[key][1]
    if key in _CHOICES:
        return str(raw)
    if key in _BOOLS:
        return _parse_bool(key, raw)
    if key in _FLOATS:
        return _parse_float(key, raw)
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
        if zero_is_none:
            return None
        raise SettingsError(f"inference parameter {key} must be a whole number, got {raw!r}")
    if isinstance(raw, bool):
        raise SettingsError(f"inference parameter {key} must be a whole number, got {raw!r}")
    try:
        value = int(raw) if not isinstance(raw, float) or float(raw).is_integer() else None
    except (TypeError, ValueError):
        value = None
    if value is None:
        raise SettingsError(f"inference parameter {key} must be a whole number, got {raw!r}")
    if zero_is_none and value == 0:
        return None
    return value


def _parse_float(key: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise SettingsError(f"inference parameter {key} must be a number, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"inference parameter {key} must be a number, got {raw!r}") from None
    return value


def _parse_bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"inference parameter {key} must be true or false, got {raw!r}")


__all__ = [
    "DEVICES",
    "GUIDANCE_NAMES",
    "GUIDANCE_SCHEDULES",
    "GuidanceName",
    "GuidanceScheduleName",
    "PRECISIONS",
    "RECORD_PREFIX",
    "SAMPLER_NAMES",
    "InferenceSettings",
    "Precision",
    "SamplerName",
    "SettingsError",
]
