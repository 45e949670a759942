"""Read and write PNG, TIFF and JPEG images, 8- or 16-bit, grey or RGB, as numpy arrays.

Reading decides the format from the file's first bytes (not its extension) and checks the header's
width x height against ``max_pixels`` before any pixel is decoded (decompression-bomb protection).
Every failure becomes :class:`ImageReadError` naming the file and the reason.

Mode policy: grey (``L``, ``I;16*``, 16-bit TIFF/PNG), RGB, palette (converted to RGB) and bilevel
(converted to 0/255 grey) are read. An alpha channel (``RGBA``, ``LA``, ``PA``, TIFF extra sample)
is dropped with a logged warning: super-resolution works on the colour/grey values only.
32-bit integer data is accepted when every value fits 16 bits (it becomes uint16). Float, CMYK,
signed and 2-channel data are refused: convert them to 8- or 16-bit grey/RGB first.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from difiisr.io.errors import ImageReadError
from difiisr.storage import atomic_write_bytes

if TYPE_CHECKING:  # imported lazily at run time: reading a PNG must not pay for tifffile, and vice versa
    import tifffile
    from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
# Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS): about 179 megapixels, e.g. 13,377 x 13,377.
DEFAULT_MAX_PIXELS: int = 178_956_970

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_GREY_ALPHA = 4  # IHDR colour types
_PNG_16BIT_COLOUR_TYPES = (2, 4, 6)  # RGB, grey+alpha, RGBA: Pillow reduces these to 8 bit at 16 bit depth


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """Decoded pixels: ``(H,W)`` grey or ``(H,W,3)`` RGB, uint8 (bit_depth 8) or uint16 (bit_depth 16)."""

    pixels: np.ndarray
    bit_depth: int
    path: Path | None = None

    @property
    def height(self) -> int:
        """Rows (pixels)."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Columns (pixels)."""
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        """1 for ``(H,W)`` grey, 3 for ``(H,W,3)`` RGB."""
        return 1 if self.pixels.ndim == 2 else int(self.pixels.shape[2])

    @cached_property
    def is_grey(self) -> bool:
        """True for one channel, or for RGB with R = G = B at every pixel."""
        if self.channels == 1:
            return True
        p = self.pixels
        return bool(np.array_equal(p[..., 0], p[..., 1]) and np.array_equal(p[..., 0], p[..., 2]))

    @property
    def max_value(self) -> int:
        """Full-scale value: 255 for 8-bit, 65535 for 16-bit (the scale used by ``image_to_tensor``)."""
        return (1 << self.bit_depth) - 1


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), sorted by name, matched by extension case-insensitively.

    Hidden files (names starting with ``.``, which includes interrupted atomic-write temp files) are skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder of images (does it exist?)")
    return sorted(
        p
        for p in root.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode an image file to ``(H,W)`` or ``(H,W,3)`` uint8/uint16; any failure raises ``ImageReadError``.

    ``max_pixels`` (width x height) is checked from the header before decoding; ``None`` disables our check
    (Pillow's own limit of ``DEFAULT_MAX_PIXELS`` still applies to the formats Pillow decodes).
    """
    p = Path(path)
    head = _read_head(p)
    if head.startswith(_TIFF_SIGNATURES):
        pixels = _read_tiff(p, max_pixels)
    elif head.startswith(_PNG_SIGNATURE):
        pixels = _read_png(p, head, max_pixels)
    elif head.startswith(_JPEG_SIGNATURE):
        size = _jpeg_size(p)
        if size is not None:
            _check_size(p, size[0], size[1], max_pixels)
        pixels = _read_with_pillow(p, max_pixels, is_jpeg=True)
    else:  # anything else Pillow recognises (BMP, WebP, ...)
        pixels = _read_with_pillow(p, max_pixels)
    bit_depth = 8 if pixels.dtype == np.uint8 else 16
    return LoadedImage(pixels=np.ascontiguousarray(pixels), bit_depth=bit_depth, path=p)


def write_image(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    jpeg_quality: int = 95,
    text: Mapping[str, object] | None = None,
) -> Path:
    """Write ``(H,W)`` grey or ``(H,W,3)`` RGB uint8/uint16 pixels atomically; the format follows the extension.

    uint8 gives an 8-bit file, uint16 a 16-bit PNG/TIFF (JPEG is 8-bit only: uint16 raises ``ValueError``).
    ``text`` (values written with ``str``) is stored as PNG tEXt/iTXt chunks, the TIFF ImageDescription (JSON)
    or a JPEG comment (JSON).
    """
    p = Path(path)
    ext = p.suffix.lower()
    arr = _pixels_for_write(p, pixels)
    if ext == ".png":
        try:
            data = _encode_png(arr, text)
        except ValueError as exc:
            raise ValueError(f"{p}: {exc}") from None
    elif ext in (".tif", ".tiff"):
        data = _encode_tiff(arr, text)
    elif ext in (".jpg", ".jpeg"):
        if arr.dtype == np.uint16:
            raise ValueError(
                f"{p}: JPEG holds 8-bit data only, got uint16 pixels; write 16-bit data as .png or .tif, "
                "or convert to uint8 first (e.g. (pixels // 257).astype(np.uint8))"
            )
        data = _encode_jpeg(arr, jpeg_quality, text)
    else:
        raise ValueError(
            f"{p}: cannot choose an image format for extension {p.suffix!r}; use one of {IMAGE_EXTENSIONS}"
        )
    return atomic_write_bytes(p, data)


# ----------------------------------------------------------------------------------------------- reading


def _read_head(path: Path) -> bytes:
    """The first 64 bytes, after the checks every format shares (exists, regular file, not empty)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot access the file: {exc.strerror or exc}") from None
    if not path.is_file():
        raise ImageReadError(path, "not a regular file (a folder?)")
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes); re-export or re-download it")
    try:
        with open(path, "rb") as fh:
            return fh.read(64)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open the file: {exc.strerror or exc}") from None


def _check_size(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse empty or over-limit dimensions read from a header, before any decoding."""
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"header gives an empty image ({width}x{height}); the file is corrupt")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            path,
            f"{width}x{height} = {width * height:,} pixels is over the limit max_pixels={max_pixels:,} "
            "(decompression-bomb protection); raise max_pixels only for files you trust",
        )


def _png_ihdr(path: Path, head: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk."""
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise ImageReadError(path, "truncated or corrupt PNG header (no IHDR chunk)")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, colour


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame marker, walking the segments; None if not found."""
    sof_markers = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    with open(path, "rb") as fh:
        fh.seek(2)
        for _ in range(1000):  # a JPEG has a few dozen segments before the frame header
            marker = fh.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                return None
            if marker[1] == 0xFF:  # fill byte
                fh.seek(-1, os.SEEK_CUR)
                continue
            length_bytes = fh.read(2)
            if len(length_bytes) < 2:
                return None
            (length,) = struct.unpack(">H", length_bytes)
            if marker[1] in sof_markers:
                frame = fh.read(5)
                if len(frame) < 5:
                    return None
                height, width = struct.unpack(">HH", frame[1:5])
                return width, height
            if length < 2:
                return None
            fh.seek(length - 2, os.SEEK_CUR)
    return None


def _read_png(path: Path, head: bytes, max_pixels: int | None) -> np.ndarray:
    width, height, depth, colour = _png_ihdr(path, head)
    _check_size(path, width, height, max_pixels)
    if depth == 16 and colour in _PNG_16BIT_COLOUR_TYPES:
        return _read_png16_colour(path, colour)
    return _read_with_pillow(path, max_pixels)


def _read_png16_colour(path: Path, colour: int) -> np.ndarray:
    """16-bit RGB / RGBA / grey+alpha PNG through OpenCV (Pillow truncates these to 8 bit)."""
    import cv2

    try:
        buf = np.fromfile(path, dtype=np.uint8)
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except Exception as exc:  # cv2.error, MemoryError
        raise ImageReadError(path, f"cannot decode 16-bit PNG (truncated or corrupt file?): {exc}") from None
    if arr is None:
        raise ImageReadError(path, "cannot decode 16-bit PNG (truncated or corrupt file?)")
    if arr.dtype != np.uint16:
        raise ImageReadError(path, f"16-bit PNG decoded as {arr.dtype}; the file is corrupt")
    if arr.ndim == 3 and arr.shape[2] == 4:
        logger.warning("%s: dropping the alpha channel (only grey/colour values are used)", path)
        arr = arr[..., :3]
    if colour == _PNG_GREY_ALPHA:
        return arr if arr.ndim == 2 else arr[..., 0].copy()
    if arr.ndim == 2:
        return arr
    return arr[..., ::-1].copy()  # BGR -> RGB


def _read_with_pillow(path: Path, max_pixels: int | None, *, is_jpeg: bool = False) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces Pillow's warning; its hard limit still raises below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size(path, im.width, im.height, max_pixels)
                im.load()
                return _pillow_to_array(path, im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"over Pillow's decompression-bomb limit: {exc}") from None
    except UnidentifiedImageError:
        if is_jpeg:
            raise ImageReadError(
                path, "cannot decode: corrupt JPEG (starts like a JPEG, header unreadable)"
            ) from None
        raise ImageReadError(path, "not a recognised image file (expected PNG, TIFF or JPEG data)") from None
    except Exception as exc:  # OSError (truncated), SyntaxError (bad chunk), ValueError, MemoryError ...
        raise ImageReadError(path, f"cannot decode (truncated or corrupt file?): {exc}") from None


def _pillow_to_array(path: Path, im: Image.Image) -> np.ndarray:
    """Pillow image in any supported mode -> (H,W) / (H,W,3) uint8 / uint16."""
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode == "P":
        has_alpha = "transparency" in im.info
        im, mode = (im.convert("RGBA"), "RGBA") if has_alpha else (im.convert("RGB"), "RGB")
    elif mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode == "YCbCr":
        im, mode = im.convert("RGB"), "RGB"
    if mode in ("RGBA", "RGBa", "LA", "La"):
        logger.warning("%s: dropping the alpha channel (only grey/colour values are used)", path)
        im, mode = im.convert(mode[0] if mode[0] == "L" else "RGB"), mode[0] if mode[0] == "L" else "RGB"
    if mode in ("L", "RGB"):
        return np.asarray(im, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":
        arr = np.asarray(im)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageReadError(
                path,
                f"32-bit integer pixels range {lo}..{hi}, which does not fit 16 bits; rescale to 0..65535",
            )
        return arr.astype(np.uint16)
    if mode == "F":
        raise ImageReadError(
            path, "unsupported mode F (32-bit float pixels); convert to 8- or 16-bit integers"
        )
    if mode == "CMYK":
        raise ImageReadError(path, "unsupported mode CMYK; convert the image to RGB or greyscale")
    raise ImageReadError(path, f"unsupported mode {mode}; convert the image to 8/16-bit greyscale or RGB")


def _read_tiff(path: Path, max_pixels: int | None) -> np.ndarray:
    """TIFF through tifffile (8/16-bit, grey/RGB, any bit depth up to 16 unpacked to uint16)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise ImageReadError(path, "TIFF file holds no image")
            page = tif.pages.first
            _check_size(path, int(page.imagewidth), int(page.imagelength), max_pixels)
            photometric = int(page.photometric)
            if photometric not in (0, 1, 2):  # MINISWHITE, MINISBLACK, RGB; palette/YCbCr/CMYK via Pillow
                return _read_with_pillow(path, max_pixels)
            _check_tiff_extent(path, page)
            if len(tif.pages) > 1:
                logger.warning("%s: multi-page TIFF, reading the first page only", path)
            arr = page.asarray()
            return _tiff_to_array(path, page, arr, photometric)
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile.TiffFileError, ValueError, struct.error, MemoryError ...
        raise ImageReadError(path, f"cannot decode TIFF (truncated or corrupt file?): {exc}") from None


def _check_tiff_extent(path: Path, page: tifffile.TiffPage) -> None:
    """Refuse a TIFF whose strips/tiles point past the end of the file (tifffile would zero-fill)."""
    size = path.stat().st_size
    ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
    if not ends or max(ends) > size:
        raise ImageReadError(
            path, f"truncated TIFF: image data extends past the end of the file ({size} bytes)"
        )


def _tiff_to_array(path: Path, page: tifffile.TiffPage, arr: np.ndarray, photometric: int) -> np.ndarray:
    axes = str(page.axes)
    if axes.startswith("S") and arr.ndim == 3:  # planar configuration: samples first
        arr, axes = np.moveaxis(arr, 0, -1), axes[1:] + "S"
    if axes not in ("YX", "YXS"):
        raise ImageReadError(
            path, f"unsupported TIFF layout (axes {axes}, shape {arr.shape}); expected one 2-D image"
        )
    if arr.ndim == 3:
        samples = arr.shape[2]
        has_alpha = any(int(s) in (1, 2) for s in page.extrasamples)
        if has_alpha and ((samples == 4 and photometric == 2) or (samples == 2 and photometric in (0, 1))):
            logger.warning("%s: dropping the alpha channel (only grey/colour values are used)", path)
            arr = arr[..., : samples - 1]
        elif samples not in (1, 3):
            raise ImageReadError(
                path, f"unsupported TIFF with {samples} channels; expected 1 (grey) or 3 (RGB) channels"
            )
        if arr.shape[2] == 1:
            arr = arr[..., 0]
    dtype = arr.dtype
    if dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif dtype.kind == "f":
        raise ImageReadError(
            path, f"unsupported TIFF sample format {dtype} (float pixels); convert to 8- or 16-bit integers"
        )
    elif dtype.kind in "iu" and dtype not in (np.uint8, np.uint16):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageReadError(
                path, f"TIFF {dtype} pixels range {lo}..{hi}, which does not fit 16 bits; rescale to 0..65535"
            )
        arr = arr.astype(np.uint16)
    elif dtype.kind not in "u":
        raise ImageReadError(path, f"unsupported TIFF sample format {dtype}")
    if photometric == 0:  # MINISWHITE: 0 is white
        arr = np.iinfo(arr.dtype).max - arr
    return arr


# ----------------------------------------------------------------------------------------------- writing


def _pixels_for_write(path: Path, pixels: np.ndarray) -> np.ndarray:
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"{path}: pixels must be a numpy array, got {type(pixels).__name__}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"{path}: pixels must be uint8 or uint16, got {pixels.dtype}; convert with tensor_to_image or astype"
        )
    arr = pixels
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{path}: pixels must be (H,W) grey or (H,W,3) RGB, got shape {pixels.shape}")
    return np.ascontiguousarray(arr)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_text_chunk(key: str, value: str) -> bytes:
    """A tEXt chunk (Latin-1 value) or an iTXt chunk (UTF-8 value); keys are 1-79 Latin-1 characters."""
    try:
        keyword = key.encode("latin-1")
    except UnicodeEncodeError:
        keyword = b""
    if not 1 <= len(keyword) <= 79 or b"\x00" in keyword:
        raise ValueError(f"PNG text key {key!r} must be 1-79 Latin-1 characters without NUL")
    try:
        return _png_chunk(b"tEXt", keyword + b"\x00" + value.encode("latin-1"))
    except UnicodeEncodeError:
        # iTXt: keyword, NUL, compression flag + method (0, 0), empty language tag and translated keyword
        return _png_chunk(b"iTXt", keyword + b"\x00\x00\x00\x00\x00" + value.encode("utf-8"))


def _encode_png(arr: np.ndarray, text: Mapping[str, object] | None) -> bytes:
    if arr.dtype == np.uint16 and arr.ndim == 3:
        import cv2

        ok, buf = cv2.imencode(".png", arr[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 6])
        if not ok:
            raise ValueError("OpenCV could not encode the 16-bit RGB PNG")
        data = buf.tobytes()
    else:
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(arr).save(out, format="PNG", compress_level=6)
        data = out.getvalue()
    if text:
        chunks = b"".join(_png_text_chunk(str(k), str(v)) for k, v in text.items())
        ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
        data = data[:ihdr_end] + chunks + data[ihdr_end:]
    return data


def _encode_tiff(arr: np.ndarray, text: Mapping[str, object] | None) -> bytes:
    import tifffile

    out = io.BytesIO()
    tifffile.imwrite(
        out,
        arr,
        photometric="rgb" if arr.ndim == 3 else "minisblack",
        compression="zlib",
        description=json.dumps({str(k): str(v) for k, v in text.items()}) if text else None,
        metadata=None,
    )
    return out.getvalue()


def _encode_jpeg(arr: np.ndarray, quality: int, text: Mapping[str, object] | None) -> bytes:
    from PIL import Image

    if not 1 <= quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {quality}")
    out = io.BytesIO()
    extra = {"comment": json.dumps({str(k): str(v) for k, v in text.items()})} if text else {}
    Image.fromarray(arr).save(out, format="JPEG", quality=quality, subsampling=0, **extra)
    return out.getvalue()
