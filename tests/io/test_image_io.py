"""difiisr.io: round trips, mode handling, every bad-input case, pixel limit, tensor conversions."""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from difiisr.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    LoadedImage,
    image_to_tensor,
    list_images,
    read_image,
    tensor_to_image,
    write_image,
)
from difiisr.io.image import _pillow_to_array


def _pixels(dtype: type, channels: int, h: int = 24, w: int = 36, seed: int = 0) -> np.ndarray:
    """Random pixels spanning the full range of ``dtype``, with 0 and max present."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    shape = (h, w) if channels == 1 else (h, w, channels)
    arr = rng.integers(0, top, size=shape, endpoint=True).astype(dtype)
    arr.flat[0], arr.flat[-1] = 0, top
    return arr


def _smooth_u8(channels: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth 8-bit image (JPEG reproduces it closely)."""
    yy, xx = np.mgrid[0:h, 0:w]
    grey = (128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.uint8)
    if channels == 1:
        return grey
    return np.stack([grey, (grey * 0.8).astype(np.uint8), (255 - grey)], axis=-1)


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossless_round_trip_is_exact(tmp_path: Path, ext: str, dtype: type, channels: int) -> None:
    pixels = _pixels(dtype, channels)
    out = write_image(tmp_path / f"img{ext}", pixels)
    loaded = read_image(out)
    assert loaded.pixels.dtype == dtype
    assert loaded.bit_depth == (8 if dtype == np.uint8 else 16)
    assert loaded.channels == channels
    assert (loaded.height, loaded.width) == (24, 36)
    assert loaded.path == out
    np.testing.assert_array_equal(loaded.pixels, pixels)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_full_range_survives(tmp_path: Path, ext: str) -> None:
    pixels = np.array([[0, 1, 32767, 32768, 65534, 65535]], dtype=np.uint16).repeat(3, axis=0)
    loaded = read_image(write_image(tmp_path / f"full{ext}", pixels))
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.max_value == 65535 and loaded.pixels.min() == 0 and loaded.pixels.max() == 65535


@pytest.mark.parametrize("ext", [".jpg", ".jpeg"])
@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_round_trip_is_close(tmp_path: Path, ext: str, channels: int) -> None:
    pixels = _smooth_u8(channels)
    loaded = read_image(write_image(tmp_path / f"img{ext}", pixels))
    assert loaded.pixels.dtype == np.uint8 and loaded.bit_depth == 8 and loaded.channels == channels
    diff = np.abs(loaded.pixels.astype(int) - pixels.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8


def test_16bit_rgb_png_is_read_at_16_bits(tmp_path: Path) -> None:
    """Pillow reduces 16-bit RGB PNG to 8 bit; read_image must not."""
    pixels = _pixels(np.uint16, 3)
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), pixels[..., ::-1])  # written by another tool, BGR order on disk as RGB
    assert Image.open(path).mode == "RGB"  # Pillow's 8-bit view, the trap
    loaded = read_image(path)
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(loaded.pixels, pixels)


def test_16bit_rgba_png_drops_alpha(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rgb = _pixels(np.uint16, 3)
    bgra = np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 1234, np.uint16)], axis=-1)
    path = tmp_path / "rgba16.png"
    assert cv2.imwrite(str(path), bgra)
    with caplog.at_level(logging.WARNING, logger="difiisr.io.image"):
        loaded = read_image(path)
    np.testing.assert_array_equal(loaded.pixels, rgb)
    assert "alpha" in caplog.text and "rgba16.png" in caplog.text


@pytest.mark.parametrize(
    ("mode", "expected_channels"),
    [("RGBA", 3), ("LA", 1)],
)
def test_alpha_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, expected_channels: int
) -> None:
    colour = _pixels(np.uint8, 3) if expected_channels == 3 else _pixels(np.uint8, 1)
    alpha = np.full(colour.shape[:2], 7, np.uint8)
    stacked = np.dstack([colour, alpha])
    path = tmp_path / f"{mode}.png"
    Image.fromarray(stacked, mode=mode).save(path)
    with caplog.at_level(logging.WARNING, logger="difiisr.io.image"):
        loaded = read_image(path)
    assert loaded.channels == expected_channels
    np.testing.assert_array_equal(loaded.pixels, colour)
    assert "dropping the alpha channel" in caplog.text


def test_palette_png_becomes_rgb(tmp_path: Path) -> None:
    rgb = _smooth_u8(3)
    path = tmp_path / "pal.png"
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(path)
    loaded = read_image(path)
    assert loaded.channels == 3 and loaded.bit_depth == 8
    np.testing.assert_array_equal(loaded.pixels, np.asarray(pal.convert("RGB")))


def test_bilevel_png_becomes_0_and_255(tmp_path: Path) -> None:
    bits = (np.indices((8, 8)).sum(axis=0) % 2).astype(bool)
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    loaded = read_image(path)
    np.testing.assert_array_equal(loaded.pixels, bits.astype(np.uint8) * 255)


@pytest.mark.parametrize("raw_mode", ["I;16B", "I;16L"])
def test_16bit_byte_orders(tmp_path: Path, raw_mode: str) -> None:
    pixels = _pixels(np.uint16, 1)
    order = ">" if raw_mode.endswith("B") else "<"
    im = Image.frombytes(raw_mode, (pixels.shape[1], pixels.shape[0]), pixels.astype(f"{order}u2").tobytes())
    path = tmp_path / "grey16.tif"
    im.save(path)
    np.testing.assert_array_equal(read_image(path).pixels, pixels)


def test_pillow_mode_i_within_16_bits_becomes_uint16() -> None:
    values = np.array([[0, 300, 65535]], dtype=np.int32)
    arr = _pillow_to_array(Path("x.png"), Image.fromarray(values))
    assert arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, values)


def test_pillow_mode_i_out_of_range_is_refused() -> None:
    with pytest.raises(ImageReadError, match=r"x\.png: 32-bit integer pixels range -5\.\.70000"):
        _pillow_to_array(Path("x.png"), Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)))


def test_uint32_tiff_that_fits_16_bits(tmp_path: Path) -> None:
    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint32)
    tifffile.imwrite(tmp_path / "u32.tif", values)
    loaded = read_image(tmp_path / "u32.tif")
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(loaded.pixels, values)


def test_planar_rgb_tiff(tmp_path: Path) -> None:
    rgb = _pixels(np.uint16, 3)
    tifffile.imwrite(
        tmp_path / "planar.tif", rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate"
    )
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif").pixels, rgb)


def test_miniswhite_tiff_is_inverted(tmp_path: Path) -> None:
    grey = _pixels(np.uint8, 1)
    tifffile.imwrite(tmp_path / "white.tif", grey, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "white.tif").pixels, 255 - grey)


def test_format_comes_from_content_not_extension(tmp_path: Path) -> None:
    pixels = _pixels(np.uint16, 1)
    png_named_tif = tmp_path / "really_png.tif"
    write_image(tmp_path / "a.png", pixels).rename(png_named_tif)
    np.testing.assert_array_equal(read_image(png_named_tif).pixels, pixels)


def test_loaded_image_properties() -> None:
    grey_rgb = np.dstack([_pixels(np.uint8, 1)] * 3)
    img = LoadedImage(pixels=grey_rgb, bit_depth=8, path=None)
    assert (img.height, img.width, img.channels, img.is_grey, img.max_value) == (24, 36, 3, True, 255)
    colour = LoadedImage(pixels=_pixels(np.uint16, 3), bit_depth=16)
    assert (colour.channels, colour.is_grey, colour.max_value) == (3, False, 65535)
    assert LoadedImage(pixels=_pixels(np.uint8, 1), bit_depth=8).is_grey


def test_text_metadata_is_stored(tmp_path: Path) -> None:
    text = {"difiisr:seed": "42", "Software": "difiisr"}
    for pixels in (_pixels(np.uint8, 1), _pixels(np.uint16, 1), _pixels(np.uint16, 3)):
        path = write_image(tmp_path / f"m{pixels.ndim}{pixels.dtype}.png", pixels, text=text)
        with Image.open(path) as im:
            im.load()
            assert im.text == text  # chunks sit in the decodable PNG with valid CRCs
        np.testing.assert_array_equal(read_image(path).pixels, pixels)
    unicode = write_image(
        tmp_path / "u.png", _pixels(np.uint8, 1), text={"source": "Wärmebild_東京.png", "steps": 4}
    )
    with Image.open(unicode) as im:
        im.load()
        assert im.text == {"source": "Wärmebild_東京.png", "steps": "4"}  # iTXt for non-Latin-1, str() values
    with pytest.raises(ValueError, match=r"k\.png: PNG text key '' must be 1-79 Latin-1 characters"):
        write_image(tmp_path / "k.png", _pixels(np.uint8, 1), text={"": "x"})
    tif = write_image(tmp_path / "m.tif", _pixels(np.uint8, 1), text=text)
    with tifffile.TiffFile(tif) as tf:
        assert '"difiisr:seed": "42"' in tf.pages.first.description


# ------------------------------------------------------------------------------------------- listing


def test_list_images_sorted_case_insensitive_non_recursive(tmp_path: Path) -> None:
    pix = _pixels(np.uint8, 1, 4, 4)
    for name in ["b.PNG", "a.tif", "c.JPEG", "d.Tiff", "e.jpg"]:
        (tmp_path / name).write_bytes(b"x")  # listing goes by name only
    (tmp_path / "notes.txt").write_text("no")
    (tmp_path / ".hidden.tmp.png").write_bytes(b"x")  # interrupted atomic write
    (tmp_path / "sub").mkdir()
    write_image(tmp_path / "sub" / "deep.png", pix)
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.tif", "b.PNG", "c.JPEG", "d.Tiff", "e.jpg"]
    assert set(IMAGE_EXTENSIONS) == {".png", ".tif", ".tiff", ".jpg", ".jpeg"}


def test_list_images_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="nope: not a folder of images"):
        list_images(tmp_path / "nope")


# ------------------------------------------------------------------------------------------- bad input


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _make_bad(kind: str, folder: Path) -> Path:
    """Create one bad input file of ``kind``; returns its path."""
    grey = _pixels(np.uint8, 1, 64, 64)
    if kind == "missing":
        return folder / "missing.png"
    if kind == "zero_byte":
        path = folder / "empty.png"
        path.write_bytes(b"")
        return path
    if kind == "folder":
        path = folder / "folder.png"
        path.mkdir()
        return path
    if kind == "text_as_png":
        path = folder / "notes.png"
        path.write_text("this is not an image\n")
        return path
    if kind == "text_as_tif":
        path = folder / "notes.tif"
        path.write_text("still not an image\n")
        return path
    if kind == "garbage_jpg":
        path = folder / "garbage.jpg"
        path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
        return path
    if kind == "png_header_only":
        path = folder / "header.png"
        path.write_bytes(_png_bytes(grey)[:20])
        return path
    if kind in ("truncated_png", "truncated_png16_rgb", "truncated_tif", "truncated_jpg"):
        src = {
            "truncated_png": ("t8.png", grey),
            "truncated_png16_rgb": ("t16.png", _pixels(np.uint16, 3, 64, 64)),
            "truncated_tif": ("t.tif", grey),
            "truncated_jpg": ("t.jpg", grey),
        }[kind]
        path = write_image(folder / src[0], src[1])
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    if kind == "float32_tif":
        path = folder / "float.tif"
        tifffile.imwrite(path, np.ones((8, 8), np.float32))
        return path
    if kind == "int16_negative_tif":
        path = folder / "signed.tif"
        tifffile.imwrite(path, np.array([[-3, 5]], np.int16))
        return path
    if kind == "two_channel_tif":
        path = folder / "two.tif"
        tifffile.imwrite(path, np.zeros((8, 8, 2), np.uint8), photometric="minisblack", planarconfig="contig")
        return path
    if kind == "cmyk_jpg":
        path = folder / "cmyk.jpg"
        Image.fromarray(np.dstack([grey] * 3)).convert("CMYK").save(path)
        return path
    if kind == "float_mode_tif_pillow":
        path = folder / "modef.tif"
        Image.fromarray(np.ones((4, 4), np.float32)).save(path)
        return path
    raise AssertionError(kind)


BAD_CASES = {
    "missing": "file not found",
    "zero_byte": "empty file (0 bytes)",
    "folder": "not a regular file",
    "text_as_png": "not a recognised image file",
    "text_as_tif": "not a recognised image file",
    "garbage_jpg": "cannot decode",
    "png_header_only": "truncated or corrupt PNG header",
    "truncated_png": "cannot decode (truncated or corrupt file?)",
    "truncated_png16_rgb": "cannot decode 16-bit PNG (truncated or corrupt file?)",
    "truncated_tif": "truncated TIFF",
    "truncated_jpg": "cannot decode (truncated or corrupt file?)",
    "float32_tif": "unsupported TIFF sample format float32",
    "int16_negative_tif": "does not fit 16 bits",
    "two_channel_tif": "unsupported TIFF with 2 channels",
    "cmyk_jpg": "unsupported mode CMYK",
    "float_mode_tif_pillow": "unsupported TIFF sample format float32",
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_input_raises_image_read_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = _make_bad(kind, tmp_path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    err = info.value
    assert err.path == path
    assert BAD_CASES[kind] in err.reason
    assert str(err) == f"{path}: {err.reason}"
    assert path.name in str(err)
    # no chained PIL/numpy traceback is shown
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_image_read_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ImageReadError("/x/y.png", "file not found")))
    assert (err.path, err.reason, str(err)) == (
        Path("/x/y.png"),
        "file not found",
        "/x/y.png: file not found",
    )


# ------------------------------------------------------------------------------------------- pixel limit


def _huge_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but whose data is a few bytes: decoding it would fail."""
    real = _png_bytes(np.zeros((2, 2), np.uint8))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = (
        struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", __import__("zlib").crc32(b"IHDR" + ihdr))
    )
    path.write_bytes(real[:8] + chunk + real[33:])
    return path


def _patch_tiff_size(path: Path, width: int, height: int) -> Path:
    """Rewrite a small TIFF's ImageWidth/ImageLength tags in place (data stays tiny)."""
    with tifffile.TiffFile(path) as tf:
        tags = tf.pages.first.tags
        offsets = {name: (tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")}
    data = bytearray(path.read_bytes())
    for name, value in (("ImageWidth", width), ("ImageLength", height)):
        offset, dtype = offsets[name]
        fmt = "<H" if int(dtype) == 3 else "<I"
        struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))
    return path


def _huge_jpeg(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose SOF header is patched to claim width x height."""
    write_image(path, np.zeros((8, 8), np.uint8))
    data = bytearray(path.read_bytes())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("fmt", ["png", "tif", "jpg"])
def test_max_pixels_is_checked_from_the_header_before_decoding(tmp_path: Path, fmt: str) -> None:
    width, height = 60_000, 50_000  # 3e9 pixels: decoding would need gigabytes, the data is a few bytes
    if fmt == "png":
        path = _huge_png(tmp_path / "bomb.png", width, height)
    elif fmt == "tif":
        path = _patch_tiff_size(write_image(tmp_path / "bomb.tif", np.zeros((4, 4), np.uint8)), width, height)
    else:
        path = _huge_jpeg(tmp_path / "bomb.jpg", width, height)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(info.value) == (
        f"{path}: 60000x50000 = 3,000,000,000 pixels is over the limit max_pixels={DEFAULT_MAX_PIXELS:,} "
        "(decompression-bomb protection); raise max_pixels only for files you trust"
    )


def test_max_pixels_is_configurable(tmp_path: Path) -> None:
    path = write_image(tmp_path / "small.png", _pixels(np.uint8, 1, 10, 20))
    assert read_image(path, max_pixels=200).width == 20
    with pytest.raises(
        ImageReadError, match=r"small\.png: 20x10 = 200 pixels is over the limit max_pixels=199"
    ):
        read_image(path, max_pixels=199)


def test_pillow_decompression_bomb_error_becomes_image_read_error(tmp_path: Path) -> None:
    path = _huge_jpeg(tmp_path / "bomb.jpg", 60_000, 50_000)
    with pytest.raises(ImageReadError, match=r"bomb\.jpg: over Pillow's decompression-bomb limit"):
        read_image(path, max_pixels=None)


# ------------------------------------------------------------------------------------------- writing


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    first, second = _pixels(np.uint8, 1, seed=1), _pixels(np.uint8, 1, seed=2)
    for ext in (".png", ".tif", ".jpg"):
        target = tmp_path / f"out{ext}"
        assert write_image(target, first) == target
        write_image(target, second)  # overwrite in place
        assert read_image(target).pixels.shape == second.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg", "out.png", "out.tif"]
    np.testing.assert_array_equal(read_image(tmp_path / "out.png").pixels, second)


def test_write_creates_parent_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "img.png"
    write_image(target, _pixels(np.uint8, 3))
    assert target.is_file()


def test_jpeg_refuses_uint16_naming_path_and_fix(tmp_path: Path) -> None:
    target = tmp_path / "deep.jpg"
    with pytest.raises(
        ValueError, match=r"deep\.jpg: JPEG holds 8-bit data only.*write 16-bit data as \.png or \.tif"
    ):
        write_image(target, _pixels(np.uint16, 1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("pixels", "name", "message"),
    [
        (np.zeros((4, 4), np.float32), "f.png", r"f\.png: pixels must be uint8 or uint16, got float32"),
        (np.zeros((4, 4, 2), np.uint8), "c2.png", r"c2\.png: pixels must be \(H,W\) grey or \(H,W,3\) RGB"),
        (np.zeros((4,), np.uint8), "v.png", r"v\.png: pixels must be \(H,W\) grey"),
        (np.zeros((4, 4), np.uint8), "x.bmp", r"x\.bmp: cannot choose an image format for extension '\.bmp'"),
    ],
)
def test_write_rejects_bad_pixels(tmp_path: Path, pixels: np.ndarray, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_image(tmp_path / name, pixels)
    assert list(tmp_path.iterdir()) == []


def test_write_accepts_h_w_1_as_grey(tmp_path: Path) -> None:
    grey = _pixels(np.uint8, 1)
    loaded = read_image(write_image(tmp_path / "g.png", grey[..., None]))
    assert loaded.channels == 1
    np.testing.assert_array_equal(loaded.pixels, grey)


# ------------------------------------------------------------------------------------------- tensors


def test_image_to_tensor_grey_replicated_and_range() -> None:
    grey = np.array([[0, 51, 255]], dtype=np.uint8)
    t = image_to_tensor(grey)
    assert t.shape == (1, 3, 1, 3) and t.dtype == torch.float32
    expected = torch.tensor([-1.0, 51 / 255 * 2 - 1, 1.0])
    for c in range(3):
        torch.testing.assert_close(t[0, c, 0], expected)


def test_image_to_tensor_rgb_channel_order_and_uint16_scale() -> None:
    rgb = np.zeros((2, 2, 3), np.uint16)
    rgb[..., 0], rgb[..., 2] = 65535, 13107  # 13107 = 65535 / 5
    t = image_to_tensor(rgb)
    torch.testing.assert_close(t[0, :, 0, 0], torch.tensor([1.0, -1.0, -0.6]))


def test_image_to_tensor_batch_and_errors() -> None:
    a, b = _pixels(np.uint8, 1, 4, 5), _pixels(np.uint16, 3, 4, 5)
    batch = image_to_tensor([a, b])
    assert batch.shape == (2, 3, 4, 5)
    torch.testing.assert_close(batch[1], image_to_tensor(b)[0])
    with pytest.raises(ValueError, match=r"images in one batch must share \(H,W\)"):
        image_to_tensor([a, _pixels(np.uint8, 1, 5, 5)])
    with pytest.raises(ValueError, match="image 0: pixels must be uint8 or uint16, got float64"):
        image_to_tensor(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="empty list"):
        image_to_tensor([])


@pytest.mark.parametrize(("dtype", "bit_depth"), [(np.uint8, 8), (np.uint16, 16)])
def test_tensor_inverse_is_exact_for_every_value(dtype: type, bit_depth: int) -> None:
    top = np.iinfo(dtype).max
    every = np.arange(top + 1, dtype=np.int64).astype(dtype).reshape(-1, 256)  # all codes
    grey_back = tensor_to_image(image_to_tensor(every), bit_depth=bit_depth, channels=1)
    assert grey_back.dtype == dtype
    np.testing.assert_array_equal(grey_back, every)
    rgb = np.dstack([every, every[::-1], np.roll(every, 3, axis=1)])
    rgb_back = tensor_to_image(image_to_tensor(rgb)[0], bit_depth=bit_depth, channels=3)
    np.testing.assert_array_equal(rgb_back, rgb)


def test_tensor_to_image_clamps_rounds_and_averages() -> None:
    t = torch.tensor([[[-3.0, 2.0, 0.0]], [[-1.0, 1.0, 0.5]], [[-1.0, 1.0, -0.5]]])  # (3,1,3)
    rgb = tensor_to_image(t)
    np.testing.assert_array_equal(rgb[0], [[0, 0, 0], [255, 255, 255], [128, 191, 64]])
    grey = tensor_to_image(t[None], channels=1, bit_depth=16)
    # means: -5/3 -> clamp -1 -> 0; 4/3 -> 1 -> 65535; 0 -> 32767.5 -> rounds half to even: 32768
    np.testing.assert_array_equal(grey, [[0, 65535, 32768]])


def test_tensor_to_image_errors() -> None:
    with pytest.raises(ValueError, match="converts one image; got a batch of 2"):
        tensor_to_image(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"expected \(3,H,W\) or \(1,3,H,W\), got shape \(4, 4\)"):
        tensor_to_image(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="bit_depth must be 8 or 16, got 12"):
        tensor_to_image(torch.zeros(3, 4, 4), bit_depth=12)
    with pytest.raises(ValueError, match="NaN"):
        tensor_to_image(torch.full((3, 2, 2), float("nan")))
