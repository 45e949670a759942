"""Read back the text record ``write_image(..., text=...)`` stored in an image file, without decoding pixels.

PNG: the tEXt/iTXt chunks before the first IDAT; TIFF: the JSON ImageDescription of the first page; JPEG: the
JSON COM segment. A file with no record (or one this module cannot parse) gives ``None``: callers treat it as
"made by something else".
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_text_record(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The text record of the image file at ``path`` (None when absent, unreadable or not an image)."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".png":
            with open(p, "rb") as fh:
                return _png_record(fh)
        data = p.read_bytes()
    except OSError:
        return None
    return text_record_of_bytes(data)


def text_record_of_bytes(data: bytes) -> dict[str, str] | None:
    """The text record of an encoded image held in memory (PNG, TIFF or JPEG), or None."""
    if data.startswith(_PNG_SIGNATURE):
        return _png_record(io.BytesIO(data))
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_record(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_record(data)
    return None


def _png_record(fh: io.BufferedIOBase | io.BytesIO) -> dict[str, str] | None:
    if fh.read(8) != _PNG_SIGNATURE:
        return None
    out: dict[str, str] = {}
    while True:
        head = fh.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if kind in (b"IDAT", b"IEND"):
            break
        body = fh.read(length)
        fh.read(4)  # CRC
        if len(body) < length:
            break
        if kind == b"tEXt" and b"\x00" in body:
            key, value = body.split(b"\x00", 1)
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt" and b"\x00" in body:
            key, rest = body.split(b"\x00", 1)
            if len(rest) >= 2 and rest[0] == 0:  # uncompressed only (what write_image writes)
                _lang, _, rest = rest[2:].partition(b"\x00")
                _translated, _, value = rest.partition(b"\x00")
                out[key.decode("latin-1")] = value.decode("utf-8", errors="replace")
    return out or None


def _json_record(text: str | bytes | None) -> dict[str, str] | None:
    if not text:
        return None
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else None


def _tiff_record(data: bytes) -> dict[str, str] | None:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            return _json_record(tif.pages[0].description)
    except Exception:  # noqa: BLE001 - any unreadable TIFF simply has no record
        return None


def _jpeg_record(data: bytes) -> dict[str, str] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _json_record(im.info.get("comment"))
    except Exception:  # noqa: BLE001 - any unreadable JPEG simply has no record
        return None


__all__ = ["read_text_record", "text_record_of_bytes"]
