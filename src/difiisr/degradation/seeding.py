"""Per-image random streams for the degradation pipelines, derived from integer seeds.

Every image gets one 63-bit integer *image seed*. From it independent streams are derived with numpy's
``SeedSequence`` (so they never overlap): one for the degradation parameters, one for the crop/flip, and two
for the noise fields (a ``torch.Generator`` on the image's device and a numpy generator for CPU Poisson
draws). Nothing here touches numpy's, Python's or torch's global random state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from difiisr.degradation.noise import NoiseSource

_SEED_BITS = 63
_PARAMS, _CROP, _NOISE, _NOISE_NUMPY = 0, 1, 2, 3

SeedLike = int | Sequence[int] | torch.Generator


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed (int in [0, 2**63)) derived from integers and strings, e.g. ``(seed, name, variant)``."""
    entropy: list[int] = []
    for part in parts:
        if isinstance(part, str):
            entropy.append(int.from_bytes(hashlib.sha256(part.encode("utf-8")).digest()[:8], "little"))
        elif isinstance(part, bool) or not isinstance(part, int | np.integer):
            raise TypeError(f"derive_seed: parts must be int or str, got {type(part).__name__}")
        elif part < 0:
            raise ValueError(f"derive_seed: integer parts must be >= 0, got {part}")
        else:
            entropy.append(int(part))
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> (64 - _SEED_BITS)


def image_seeds(seed: SeedLike, count: int) -> list[int]:
    """``count`` image seeds; image ``i`` of an int ``seed`` gets ``derive_seed(seed, i)`` for any count.

    A sequence gives the image seeds directly (its length must be ``count``); a ``torch.Generator`` is asked
    for one int (advancing it), which is then used like an int seed.
    """
    if isinstance(seed, torch.Generator):
        drawn = int(torch.randint(0, 2**62, (1,), generator=seed, device=seed.device).item())
        return [derive_seed(drawn, i) for i in range(count)]
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        return [derive_seed(int(seed), i) for i in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(
            f"got {len(seeds)} per-image seeds for a batch of {count} images; pass one per image"
        )
    if any(s < 0 for s in seeds):
        raise ValueError(f"per-image seeds must be >= 0, got {seeds}")
    return seeds


def _child(image_seed: int, stream: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(int(image_seed), spawn_key=(stream,))


def params_rng(image_seed: int) -> np.random.Generator:
    """The numpy generator that draws an image's degradation parameters."""
    return np.random.Generator(np.random.PCG64(_child(image_seed, _PARAMS)))


def crop_rng(image_seed: int) -> np.random.Generator:
    """The numpy generator that draws an image's crop position and flips."""
    return np.random.Generator(np.random.PCG64(_child(image_seed, _CROP)))


def noise_source(image_seed: int, device: torch.device | str = "cpu") -> NoiseSource:
    """The generators of an image's noise fields on ``device`` (same seed -> same noise on that device)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(_child(image_seed, _NOISE).generate_state(1, dtype=np.uint64)[0]) >> 1)
    return NoiseSource(gen, np.random.Generator(np.random.PCG64(_child(image_seed, _NOISE_NUMPY))))
