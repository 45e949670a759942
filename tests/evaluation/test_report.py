"""Report writers: CSV/JSON round trips, crop choice, and the self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difiisr.evaluation.report import (
    choose_crop,
    format_value,
    make_crop_set,
    render_html,
    to_display_uint8,
    write_csv,
    write_json,
)


def test_format_value_round_trips_and_spells_non_finite() -> None:
    for v in (0.1, 1 / 3, 28.123456789012345, -0.0, 1e-300):
        assert float(format_value(v)) == v
    assert format_value(math.inf) == "inf" and format_value(-math.inf) == "-inf"
    assert format_value(math.nan) == "nan" and format_value(None) == ""


def test_csv_round_trip(tmp_path: Path) -> None:
    rows = [
        {"image": "a,b.png", "method": "bicubic", "psnr_y": 1 / 3, "niqe": math.nan},
        {"image": "c.png", "method": "model", "psnr_y": math.inf, "niqe": np.float64(4.25)},
    ]
    path = write_csv(tmp_path / "x.csv", rows, ["image", "method", "psnr_y", "niqe"])
    with open(path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert back[0] == {"image": "a,b.png", "method": "bicubic", "psnr_y": repr(1 / 3), "niqe": "nan"}
    assert float(back[0]["psnr_y"]) == 1 / 3
    assert back[1] == {"image": "c.png", "method": "model", "psnr_y": "inf", "niqe": "4.25"}
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temp file


def test_json_is_strict_with_non_finite_as_null(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "a.json", {"m": {"psnr_y": math.inf, "niqe": math.nan, "ssim": 0.5}, "p": Path("/x")}
    )
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"m": {"psnr_y": None, "niqe": None, "ssim": 0.5}, "p": "/x"}


def test_display_conversion_of_16_bit() -> None:
    px = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    np.testing.assert_array_equal(to_display_uint8(px), np.array([[0, 1, 255, 128]], dtype=np.uint8))
    with pytest.raises(ValueError, match="cannot display dtype float32"):
        to_display_uint8(np.zeros((2, 2), np.float32))


def test_choose_crop_finds_the_detailed_region() -> None:
    img = np.full((200, 300), 100, dtype=np.uint8)
    rng = np.random.default_rng(0)
    img[120:200, 200:300] = rng.integers(0, 256, (80, 100))  # texture in the bottom-right corner
    top, left, h, w = choose_crop(img, size=96)
    assert (h, w) == (96, 96)
    assert top + h == 200 and left + w == 300  # the window inside the textured corner, clamped to the border
    assert choose_crop(np.zeros((40, 50), np.uint8), size=96) == (0, 0, 40, 50)  # smaller than the crop size


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag in ("a", "link") and any(k == "href" for k, _ in attrs):
            self.links.append(tag)
        if tag == "script":
            self.scripts += 1


def _summary(methods: list[str]) -> dict:
    metrics = ["psnr_y", "niqe"]
    return {
        "name": methods[-1],
        "pairs_dir": "/data/pairs",
        "dataset_md5": "0" * 32,
        "n_images": 1,
        "sf": 4,
        "created_utc": "2025-01-01T00:00:00Z",
        "methods": methods,
        "metric_names": metrics,
        "metrics": {m: {"psnr_y": 30.0 + i, "niqe": 6.0 - i} for i, m in enumerate(methods)},
        "delta_vs_bicubic": {"psnr_y": 1.0, "niqe": -1.0} if len(methods) > 1 else {},
        "higher_is_better": {"psnr_y": True, "niqe": False},
        "conventions": {"psnr_y": "BT.601 Y <unrounded>", "niqe": "basicsr"},
        "not_computed": {"lpips": "not computed: no weights"},
        "md5_definition": "md5 of things",
    }


def test_html_is_self_contained_with_exact_crops() -> None:
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 65536, (128, 160), dtype=np.uint16)
    sr = (hr // 2).astype(np.uint16)
    bic = np.zeros_like(hr)
    crop = make_crop_set("f.png", [("bicubic", bic), ("model", sr), ("HR", hr)], caption="psnr_y 1 dB")
    top, left, h, w = crop.box
    rows = [{"image": "f.png", "method": m, "psnr_y": 30.0, "niqe": math.nan} for m in ("bicubic", "model")]
    page = render_html(_summary(["bicubic", "model"]), rows, [crop])

    parser = _Collector()
    parser.feed(page)
    assert parser.scripts == 0 and parser.links == []
    assert "http" not in page
    assert [img["alt"] for img in parser.imgs] == ["bicubic f.png", "model f.png", "HR f.png"]
    for img, source in zip(parser.imgs, (bic, sr, hr), strict=True):
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,")
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
        np.testing.assert_array_equal(decoded, to_display_uint8(source[top : top + h, left : left + w]))
    # Metric table: means, signed deltas coloured by direction (niqe is lower-better, so -1 is better).
    assert "<td>30.0000</td>" in page and "<td>31.0000</td>" in page
    assert "<td class='better'>+1.0000</td>" in page and "<td class='better'>-1.0000</td>" in page
    assert "BT.601 Y &lt;unrounded&gt;" in page  # escaped
    assert "lpips: not computed: no weights" in page
    assert page.count("<td>nan</td>") == 2  # per-image NIQE not computed


def test_html_without_model_has_no_delta_column() -> None:
    page = render_html(_summary(["bicubic"]), [], [])
    assert "&minus; bicubic" not in page and "<img" not in page
