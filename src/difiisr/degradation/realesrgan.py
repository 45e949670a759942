"""The Real-ESRGAN second-order degradation (method.md section 1), batched, seeded, on CPU or CUDA.

    stage 1: blur -> random resize -> Gaussian|Poisson noise -> JPEG
    stage 2 (second_order_prob): blur (second_blur_prob) -> random resize -> noise
    final:  [resize to HR/sf + sinc] then JPEG, or JPEG then [resize to HR/sf + sinc] (each with p=0.5)
    output: clamp to [0,1] and round to 1/levels (levels=255 for 8-bit, 65535 for 16-bit)

Built on basicsr (``filter2D``'s arithmetic with one kernel per image, ``DiffJPEG`` with one quality per
image, the kernel builders) plus ``torch.nn.functional.interpolate``, as the reference ResShift/DifIISR code
does.

Batching. A call does each step once for the whole batch where the math allows, and per image only where it
must: blurs run one grouped depthwise conv per kernel size (``blur.py``; kernels at their own size, not padded
to 21), noise arithmetic runs batched around per-image seeded draws (``noise.py``; the draws run on
``torch.get_num_threads()`` threads), JPEG runs in cache-sized chunks with a per-image quality tensor, and
each resize is one ``interpolate`` per shared size and mode. An image's pixels never depend on its position
in the batch or on the other images, apart from the shared resizes below; a batch of one is the same code.

Randomness. Every image has an integer seed (``seeding.image_seeds``). Its parameters come from
``sample_params`` with a numpy generator derived from that seed, its noise fields from a ``torch.Generator``
derived from it; numpy's, Python's and torch's global RNGs are never used. The same seeds give byte-identical
LR on the same device type (CPU and CUDA draw noise with different samplers and round differently, so their
outputs differ).

Per-batch draws. Kernels, noise, JPEG qualities, second order on/off, second blur on/off, final sinc, final
order and final resize mode are applied per image (the reference draws several of these once per batch). The
stage-1 and stage-2 *resize* (scale and mode) decide the intermediate image size, which a batch must share:

* ``resize_scope="batch"`` (default, as the reference): every image of the call uses the resize drawn by the
  first image (stage 2: the first image that has a second stage). Each record's ``resize1``/``resize2`` holds
  the resize actually applied, with ``"shared": true`` where it came from another image of the batch.
* ``resize_scope="image"``: every image uses its own draw and is processed alone (slower), so its LR depends
  only on its own seed, never on the rest of the batch. A call with one image is the same in both scopes.

Grey input. Blur, resize and JPEG keep R=G=B images grey, and so does grey noise (``gray_noise_prob``); colour
noise (the other draws) adds chroma noise, so the LR of a grey HR is then not exactly grey. For IR data, set
``gray_noise_prob=1`` (and ``gray_noise_prob2=1``) to keep every LR grey, or ``force_gray=True`` to replace
the output by its channel mean (then rounded) replicated to R=G=B.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from difiisr.degradation.blur import filter_per_image
from difiisr.degradation.config import RESIZE_MODES, RealESRGANConfig
from difiisr.degradation.crop import apply_crop, sample_crop
from difiisr.degradation.noise import add_noise
from difiisr.degradation.params import FINAL_ORDERS, build_kernel, import_basicsr, sample_params
from difiisr.degradation.seeding import SeedLike, crop_rng, image_seeds, noise_source, params_rng

log = logging.getLogger(__name__)

_RANGE_TOL = 1e-6
_CPU_JPEG_CHUNK_PIXELS = 4 * 256 * 256


class RealESRGANDegradation:
    """Seeded Real-ESRGAN second-order degradation of ``(B,3,H,W)`` float images in [0,1] (see module doc)."""

    def __init__(self, config: RealESRGANConfig | None = None) -> None:
        self.config = config if config is not None else RealESRGANConfig()
        self._jpeger: torch.nn.Module | None = None

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """One image's random draws (the record the pipeline applies and returns), without any image work."""
        return sample_params(self.config, rng)

    @torch.no_grad()
    def __call__(
        self, hr: torch.Tensor, generator: SeedLike, *, levels: int = 255
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """``hr`` (B,3,H,W) float in [0,1] -> (LR (B,3,H/sf,W/sf) float32 in [0,1], 1/levels steps, records).

        ``generator``: an int seed, one int seed per image, or a ``torch.Generator`` (one int is drawn from
        it). H and W must be multiples of sf and at least ``config.min_side``. Records: see ``params.py``,
        plus ``"seed"`` (the image seed that reproduces this image alone: ``self(hr[i:i+1], [seed])``).
        """
        x = self._check_input(hr, levels)
        seeds = image_seeds(generator, x.shape[0])
        records = [dict(seed=s, **self.sample_params(params_rng(s))) for s in seeds]
        if self.config.resize_scope == "image" and x.shape[0] > 1:
            lr = torch.cat(
                [
                    self._degrade(x[i : i + 1], records[i : i + 1], seeds[i : i + 1], levels)
                    for i in range(len(seeds))
                ]
            )
        else:
            lr = self._degrade(x, records, seeds, levels)
        log.debug("degraded %d images of %dx%d on %s", x.shape[0], x.shape[2], x.shape[3], x.device)
        return lr, records

    def crop_and_degrade(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        generator: SeedLike,
        *,
        crop: int | None | str = "gt_size",
        levels: int = 255,
    ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        """Seeded pad/crop/flip of each HR, then degrade: -> (HR (B,3,c,c), LR (B,3,c/sf,c/sf), records).

        ``images``: (B,3,H,W) or a list of (3,H_i,W_i) float in [0,1]. ``crop``: the square crop size
        (``"gt_size"``: config.gt_size); None keeps each whole image cut to a multiple of sf (the cut images
        must then share a size; otherwise call once per image). Each record gains ``"crop"``.
        """
        c = self.config
        items = list(images.unbind(0)) if isinstance(images, torch.Tensor) else list(images)
        if not items:
            raise ValueError("crop_and_degrade: got no images")
        size = c.gt_size if crop == "gt_size" else crop
        if isinstance(size, str):
            raise ValueError(f"crop_and_degrade: crop must be an int, None or 'gt_size', got {crop!r}")
        seeds = image_seeds(generator, len(items))
        crops, hrs = [], []
        for i, (img, seed) in enumerate(zip(items, seeds, strict=True)):
            if img.ndim != 3:
                raise ValueError(f"crop_and_degrade: image {i} must be (3,H,W), got shape {tuple(img.shape)}")
            cp = sample_crop(
                crop_rng(seed),
                int(img.shape[-2]),
                int(img.shape[-1]),
                crop=size,
                sf=c.sf,
                crop_pad_size=c.crop_pad_size,
                use_hflip=c.use_hflip,
                use_rot=c.use_rot,
            )
            crops.append(cp)
            hrs.append(apply_crop(img, cp))
        shapes = sorted({tuple(h.shape) for h in hrs})
        if len(shapes) > 1:
            raise ValueError(
                f"crop_and_degrade: the cropped images differ in size {shapes}; pass a crop size, or images "
                "of one size, or degrade them one per call"
            )
        hr = torch.stack(hrs)
        lr, records = self(hr, seeds, levels=levels)
        for rec, cp in zip(records, crops, strict=True):
            rec["crop"] = cp.to_dict()
        return hr, lr, records

    # ----------------------------------------------------------------------------------------- internals

    def _check_input(self, hr: torch.Tensor, levels: int) -> torch.Tensor:
        c = self.config
        if not isinstance(hr, torch.Tensor):
            raise TypeError(f"RealESRGANDegradation: expected a (B,3,H,W) tensor, got {type(hr).__name__}")
        if hr.ndim != 4 or hr.shape[1] != 3:
            raise ValueError(f"RealESRGANDegradation: expected shape (B,3,H,W), got {tuple(hr.shape)}")
        if not hr.is_floating_point():
            raise ValueError(f"RealESRGANDegradation: expected float pixels in [0,1], got dtype {hr.dtype}")
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(
                f"RealESRGANDegradation: levels must be a positive int (255 or 65535), got {levels!r}"
            )
        _, _, h, w = hr.shape
        if h % c.sf or w % c.sf:
            raise ValueError(
                f"RealESRGANDegradation: HR size {h}x{w} is not a multiple of sf={c.sf}; crop it first "
                "(crop_and_degrade(..., crop=None) cuts to a multiple of sf)"
            )
        if min(h, w) < c.min_side:
            raise ValueError(
                f"RealESRGANDegradation: HR size {h}x{w} is below the minimum side {c.min_side} that the "
                "blur kernels and resize ranges of this config need; use larger crops"
            )
        x = hr.detach().to(torch.float32)
        lo, hi = torch.aminmax(x)
        if lo.item() < -_RANGE_TOL or hi.item() > 1 + _RANGE_TOL:
            raise ValueError(
                f"RealESRGANDegradation: HR values span [{lo.item():.4g}, {hi.item():.4g}], expected [0,1]; "
                "for the model's [-1,1] form pass (x + 1) / 2"
            )
        return x.clamp(0.0, 1.0)

    def _jpeg(self, x: torch.Tensor, qualities: Sequence[float]) -> torch.Tensor:
        """basicsr ``DiffJPEG`` of (B,3,H,W) in [0,1], one quality per image (CPU: cache-sized chunks)."""
        if self._jpeger is None:
            import_basicsr()
            from basicsr.utils import DiffJPEG

            self._jpeger = DiffJPEG(differentiable=False)
        # DiffJPEG's quantisation tables are module-level Parameters shared by every instance, so move them to
        # this call's device each time (a no-op when they are already there).
        jpeger = self._jpeger.to(x.device)
        b, _, h, w = x.shape
        # DiffJPEG makes ~30 full passes over its input; on CPU a 32-image batch falls out of cache and runs
        # at half the per-image speed; ~256k pixels per call measured fastest there (each image's result is
        # the same).
        chunk = b if x.device.type != "cpu" else max(1, _CPU_JPEG_CHUNK_PIXELS // (h * w))
        # DiffJPEG returns a cropped view in channels-last order; later resizes and blurs run several times
        # faster on a contiguous tensor, so the chunks are copied into one
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        for i in range(0, b, chunk):
            q = torch.tensor(list(qualities[i : i + chunk]), dtype=torch.float32, device=x.device)
            out[i : i + chunk] = jpeger(x[i : i + chunk].clamp(0.0, 1.0), quality=q)  # it rewrites q in place
        return out

    @staticmethod
    def _blur(x: torch.Tensor, specs: Sequence[dict[str, Any] | None]) -> torch.Tensor:
        """Image i of (B,3,H,W) blurred by the kernel of ``specs[i]`` at its own size (None: unchanged)."""
        return filter_per_image(x, [None if s is None else build_kernel(s) for s in specs])

    def _workers(self, device: torch.device) -> int:
        """Threads for the per-image noise draws: torch's intra-op thread count on CPU, else 1."""
        return torch.get_num_threads() if device.type == "cpu" else 1

    def _degrade(
        self, x: torch.Tensor, recs: list[dict[str, Any]], seeds: Sequence[int], levels: int
    ) -> torch.Tensor:
        c = self.config
        dev = x.device
        b, _, h, w = x.shape
        lr_size = (h // c.sf, w // c.sf)
        gens = [noise_source(s, dev) for s in seeds]
        workers = self._workers(dev)

        # ---- stage 1: blur, resize (shared), noise, JPEG
        out = self._blur(x, [r["kernel1"] for r in recs])
        lead = recs[0]["resize1"]
        out = F.interpolate(out, scale_factor=lead["scale"], mode=lead["mode"])
        for i, r in enumerate(recs):
            r["resize1"] = {**lead, "size": list(out.shape[-2:]), "shared": i > 0}
        out = add_noise(out, [r["noise1"] for r in recs], gens, workers=workers)
        out = self._jpeg(out, [r["jpeg1"] for r in recs])

        # ---- stage 2 on the images that have one; `parts` holds (image indices, images of one size)
        parts: list[tuple[list[int], torch.Tensor]] = []
        second = [i for i, r in enumerate(recs) if r["second_order"]]
        first = [i for i, r in enumerate(recs) if not r["second_order"]]
        if first:
            parts.append((first, _take(out, first, b)))
        if second:
            sub = self._blur(_take(out, second, b), [recs[i]["kernel2"] for i in second])
            lead2 = recs[second[0]]["resize2"]
            size2 = (int(h / c.sf * lead2["scale"]), int(w / c.sf * lead2["scale"]))
            sub = F.interpolate(sub, size=size2, mode=lead2["mode"])
            for k, i in enumerate(second):
                recs[i]["resize2"] = {**lead2, "size": list(size2), "shared": k > 0}
            sub = add_noise(
                sub, [recs[i]["noise2"] for i in second], [gens[i] for i in second], workers=workers
            )
            parts.append((second, sub))

        # ---- final, in each image's order: "resize_sinc_then_jpeg" or "jpeg_then_resize_sinc". Every image
        # is resized to the LR size and sinc-filtered there, so the images that JPEG first are compressed at
        # their own size, then all images are resized (one call per size and mode), sinc-filtered together,
        # and those that JPEG last are compressed together at the LR size.
        lr = torch.empty((b, 3, *lr_size), dtype=torch.float32, device=dev)
        for idx, t in parts:
            early = [k for k, i in enumerate(idx) if recs[i]["final_order"] == FINAL_ORDERS[1]]
            if early:
                jpeg = self._jpeg(_take(t, early, len(idx)), [recs[idx[k]]["jpeg2"] for k in early])
                if len(early) == len(idx):
                    t = jpeg
                else:  # in place: t is a tensor of this call that nothing reads afterwards
                    t[early] = jpeg
            for mode in RESIZE_MODES:
                pos = [k for k, i in enumerate(idx) if recs[i]["final_resize_mode"] == mode]
                if pos:
                    lr[[idx[k] for k in pos]] = F.interpolate(
                        _take(t, pos, len(idx)), size=lr_size, mode=mode
                    )
        lr = self._blur(lr, [r["final_sinc"] for r in recs])
        late = [i for i, r in enumerate(recs) if r["final_order"] == FINAL_ORDERS[0]]
        if late:
            jpeg = self._jpeg(_take(lr, late, b), [recs[i]["jpeg2"] for i in late])
            if len(late) == b:
                lr = jpeg
            else:
                lr[late] = jpeg

        if c.force_gray:
            lr = lr.mean(dim=1, keepdim=True)
        lr = torch.clamp((lr * levels).round(), 0, levels) / levels
        return lr.expand(b, 3, -1, -1).contiguous() if c.force_gray else lr


def _take(x: torch.Tensor, idx: list[int], total: int) -> torch.Tensor:
    """``x[idx]`` along dim 0, or ``x`` itself when ``idx`` is all ``total`` images in order."""
    return x if len(idx) == total else x[idx]
