"""Evaluation outputs: per-image CSV, aggregate JSON and a self-contained HTML report (all written atomically).

The HTML report embeds its images as base64 PNG (no external files or scripts), so it can be attached to an
MLflow run and opened anywhere.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from difiisr.storage import atomic_write_text

CROP_SIZE = 96  # HR pixels per side of the report crops


@dataclasses.dataclass(frozen=True)
class CropSet:
    """Side-by-side crops of one image for the report: ``panels`` is ``[(label, (h,w)|(h,w,3) uint8/uint16)]``."""

    name: str
    box: tuple[int, int, int, int]  # top, left, height, width in HR pixels
    panels: tuple[tuple[str, np.ndarray], ...]
    caption: str = ""


def format_value(value: float | None) -> str:
    """Text form of a metric value for CSV/HTML: full precision, ``inf``/``nan`` spelled out, ``''`` for None."""
    if value is None:
        return ""
    v = float(value)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def json_safe(value: Any) -> Any:
    """Recursively replace non-finite floats with None so the document is strict JSON (RFC 8259)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return format_value(float(value))
    return "" if value is None else str(value)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` (one dict per image and method) as CSV with ``columns``; floats at full precision."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return atomic_write_text(path, buf.getvalue())


def write_json(path: str | Path, document: Mapping[str, Any]) -> Path:
    """Write ``document`` as indented strict JSON (non-finite floats become null)."""
    return atomic_write_text(path, json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n")


def to_display_uint8(pixels: np.ndarray) -> np.ndarray:
    """``(h,w)``/``(h,w,3)`` uint8/uint16 -> uint8 for display (uint16 scaled by 255/65535, rounded)."""
    arr = np.asarray(pixels)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return np.rint(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    raise ValueError(f"cannot display dtype {arr.dtype}; expected uint8 or uint16")


def png_data_uri(pixels: np.ndarray) -> str:
    """``data:image/png;base64,...`` of a uint8/uint16 ``(h,w)``/``(h,w,3)`` image (shown as 8 bit)."""
    buf = io.BytesIO()
    Image.fromarray(to_display_uint8(pixels)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def choose_crop(hr: np.ndarray, size: int = CROP_SIZE) -> tuple[int, int, int, int]:
    """Most detailed ``size`` x ``size`` window of the HR (largest variance on a half-window grid), deterministic."""
    grey = np.asarray(hr, dtype=np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    h, w = grey.shape
    ch, cw = min(size, h), min(size, w)
    step_y, step_x = max(1, ch // 2), max(1, cw // 2)
    best, best_var = (0, 0), -1.0
    for top in sorted({*range(0, h - ch + 1, step_y), h - ch}):
        for left in sorted({*range(0, w - cw + 1, step_x), w - cw}):
            var = float(grey[top : top + ch, left : left + cw].var())
            if var > best_var:
                best, best_var = (top, left), var
    return best[0], best[1], ch, cw


def make_crop_set(name: str, panels: Sequence[tuple[str, np.ndarray]], caption: str = "") -> CropSet:
    """Crop every panel (all HR-sized) at the window chosen on the last panel (the HR)."""
    top, left, ch, cw = choose_crop(panels[-1][1])
    cut = tuple((label, np.ascontiguousarray(px[top : top + ch, left : left + cw])) for label, px in panels)
    return CropSet(name=name, box=(top, left, ch, cw), panels=cut, caption=caption)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:28px}
.meta{color:#555;font-size:13px} code{font-size:12px;background:#f3f3f3;padding:1px 4px}
table{border-collapse:collapse;font-size:13px;margin-top:8px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right} th{background:#f0f0f0}
td.l,th.l{text-align:left} td.conv{text-align:left;color:#555;font-size:12px;max-width:420px}
.better{color:#0a7a28;font-weight:600} .worse{color:#b3261e;font-weight:600}
figure{margin:12px 0 22px 0} .row{display:flex;gap:10px;flex-wrap:wrap}
.panel{text-align:center;font-size:13px}
.panel img{height:auto;image-rendering:pixelated;border:1px solid #999;display:block}
figcaption{font-size:13px;color:#333;margin-top:4px}
"""


def _delta_class(delta: float | None, higher_is_better: bool) -> str:
    if delta is None or not math.isfinite(delta) or delta == 0:
        return ""
    return "better" if (delta > 0) == higher_is_better else "worse"


def render_html(
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    crops: Sequence[CropSet],
) -> str:
    """The report as one self-contained HTML page: summary, metrics table, crops (bicubic | SR | HR), per image."""
    esc = html.escape
    methods: list[str] = list(summary["methods"])
    metrics: list[str] = list(summary["metric_names"])
    means: Mapping[str, Mapping[str, float | None]] = summary["metrics"]
    deltas: Mapping[str, float | None] = summary.get("delta_vs_bicubic") or {}
    hib: Mapping[str, bool] = summary["higher_is_better"]
    conv: Mapping[str, str] = summary["conventions"]
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>difiisr evaluation: {esc(str(summary['name']))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Evaluation of {esc(str(summary['name']))} against bicubic</h1>",
        '<p class="meta">',
        f"{summary['n_images']} image pairs from <code>{esc(str(summary['pairs_dir']))}</code>, "
        f"evaluation set md5 <code>{esc(str(summary['dataset_md5']))}</code>, x{summary['sf']}, "
        f"written {esc(str(summary['created_utc']))}.",
        "</p>",
        "<h2>Mean metrics</h2>",
        "<table><tr><th class='l'>metric</th>",
    ]
    out += [f"<th>{esc(m)}</th>" for m in methods]
    has_delta = len(methods) > 1
    if has_delta:
        out.append(f"<th>{esc(methods[-1])} &minus; bicubic</th>")
    out.append("<th class='l'>better</th><th class='l'>convention</th></tr>")
    for metric in metrics:
        out.append(f"<tr><td class='l'>{esc(metric)}</td>")
        for m in methods:
            out.append(f"<td>{_fmt(means[m].get(metric))}</td>")
        if has_delta:
            d = deltas.get(metric)
            cls = _delta_class(d, hib[metric])
            out.append(f"<td class='{cls}'>{_fmt(d, signed=True)}</td>")
        out.append(f"<td class='l'>{'higher' if hib[metric] else 'lower'}</td>")
        out.append(f"<td class='conv'>{esc(conv.get(metric, ''))}</td></tr>")
    out.append("</table>")
    not_computed: Mapping[str, str] = summary.get("not_computed") or {}
    if not_computed:
        out.append(
            "<p class='meta'>" + "; ".join(f"{esc(k)}: {esc(v)}" for k, v in not_computed.items()) + "</p>"
        )

    if crops:
        out.append(f"<h2>Crops ({CROP_SIZE}x{CROP_SIZE} HR pixels, shown x3, nearest)</h2>")
        for crop in crops:
            top, left, ch, cw = crop.box
            out.append("<figure><div class='row'>")
            for label, px in crop.panels:
                out.append(
                    f"<div class='panel'><img alt='{esc(label)} {esc(crop.name)}' "
                    f"style='width:{3 * cw}px' src='{png_data_uri(px)}'>{esc(label)}</div>"
                )
            out.append(
                f"</div><figcaption><b>{esc(crop.name)}</b> at ({left},{top}) {cw}x{ch}. {esc(crop.caption)}"
                "</figcaption></figure>"
            )

    out.append("<h2>Per image</h2><table><tr><th class='l'>image</th><th class='l'>method</th>")
    out += [f"<th>{esc(m)}</th>" for m in metrics]
    out.append("</tr>")
    for row in rows:
        out.append(
            f"<tr><td class='l'>{esc(str(row['image']))}</td><td class='l'>{esc(str(row['method']))}</td>"
        )
        out += [f"<td>{_fmt(row.get(m))}</td>" for m in metrics]
        out.append("</tr>")
    out.append("</table>")
    out.append(f"<p class='meta'>Evaluation set md5: {esc(str(summary.get('md5_definition', '')))}.</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _fmt(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "&ndash;"
    v = float(value)
    if not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def write_html(
    path: str | Path, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], crops: Sequence[CropSet]
) -> Path:
    """Write the self-contained HTML report (see ``render_html``) atomically."""
    return atomic_write_text(path, render_html(summary, rows, crops))
