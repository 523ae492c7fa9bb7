"""streamsr.io probe / read / write / atomic: probing, reading (whole, by bands; PNG, JPEG, TIFF, zarr),
streaming writers and their failure modes."""

from __future__ import annotations

import errno
import io
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from test_export import assert_one_line, make_source, one_line, pattern

from streamsr.errors import BadInput, StreamsrError
from streamsr.io import atomic
from streamsr.io import probe as probe_module
from streamsr.io.depth import to_uint
from streamsr.io.info import ImageInfo
from streamsr.io.probe import input_sha256, probe
from streamsr.io.problems import OutputError
from streamsr.io.read import iter_row_bands, read_image
from streamsr.io.write import open_writer

CHUNKS = (1, 7, 100, 3, 150, 1000)  # uneven write_rows sizes that cover every height used
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def random_pixels(height, width, channels, bit_depth, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return rng.integers(0, np.iinfo(dtype).max, (height, width, channels), endpoint=True).astype(dtype)


def write_in_chunks(path, pixels, bit_depth, **kwargs):
    height, width, channels = pixels.shape
    with open_writer(path, width, height, channels, bit_depth, **kwargs) as writer:
        y = 0
        for n in CHUNKS:
            writer.write_rows(pixels[y: y + n])
            y = min(height, y + n)
    return path


def small_png(path, size=(5, 4), mode="RGB"):
    Image.new(mode, size, 7).save(path)
    return path


def patch_ihdr(path, width, height):
    """Rewrite the IHDR size of a PNG and fix its CRC (no pixels are allocated or decoded)."""
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_round_trip(tmp_path, channels, bit_depth):
    pixels = random_pixels(61, 45, channels, bit_depth)
    path = write_in_chunks(tmp_path / "out.png", pixels, bit_depth)
    image, info = read_image(path)
    assert info == ImageInfo(path, 45, 61, channels, MODES[channels], bit_depth, "PNG")
    assert image.dtype == np.float32 and image.shape == (61, 45, channels)
    assert 0.0 <= image.min() and image.max() <= 1.0
    np.testing.assert_array_equal(to_uint(image, bit_depth), pixels)
    assert list(tmp_path.iterdir()) == [path]


def test_png_is_readable_by_pillow(tmp_path):
    pixels = random_pixels(20, 33, 3, 8)
    path = write_in_chunks(tmp_path / "out.png", pixels, 8, compress=False)
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), pixels)


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_tiff_round_trip_is_tiled_bigtiff(tmp_path, channels, bit_depth):
    pixels = random_pixels(300, 270, channels, bit_depth)  # partial edge tiles both ways
    path = write_in_chunks(tmp_path / "out.tif", pixels, bit_depth)
    image, info = read_image(path)
    assert info == ImageInfo(path, 270, 300, channels, MODES[channels], bit_depth, "TIFF")
    np.testing.assert_array_equal(to_uint(image, bit_depth), pixels)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert tif.is_bigtiff and page.is_tiled
        assert (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert list(tmp_path.iterdir()) == [path]


def test_tiff_uncompressed(tmp_path):
    pixels = random_pixels(40, 300, 3, 8)
    path = write_in_chunks(tmp_path / "out.tiff", pixels, 8, compress=False)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.pages.first.compression == tifffile.COMPRESSION.NONE
    np.testing.assert_array_equal(to_uint(read_image(path)[0], 8), pixels)


def test_read_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 256, (4, 5, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "in.jpg", quality=95, subsampling=0)
    Image.fromarray(smooth[..., 0]).save(tmp_path / "grey.jpeg", quality=95)
    image, info = read_image(tmp_path / "in.jpg")
    assert info == ImageInfo(tmp_path / "in.jpg", 80, 64, 3, "RGB", 8, "JPEG")
    assert image.shape == (64, 80, 3) and image.dtype == np.float32
    assert np.abs(image * 255 - smooth).mean() < 3
    assert probe(tmp_path / "grey.jpeg").mode == "L"
    assert read_image(tmp_path / "grey.jpeg")[0].shape == (64, 80, 1)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((32, 48, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "rot.jpg", exif=exif)
    info = probe(tmp_path / "rot.jpg")
    assert (info.width, info.height) == (32, 48)
    assert read_image(tmp_path / "rot.jpg")[0].shape == (48, 32, 3)


def test_palette_png_becomes_rgb_or_rgba(tmp_path):
    im = Image.new("P", (6, 5))
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((1, 1), 1)
    im.save(tmp_path / "p.png")
    im.save(tmp_path / "pt.png", transparency=0)
    image, info = read_image(tmp_path / "p.png")
    assert (info.mode, info.bit_depth) == ("RGB", 8)
    assert image[1, 1].tolist() == [1.0, 0.0, 0.0] and image[0, 0].tolist() == [0.0, 0.0, 0.0]
    image, info = read_image(tmp_path / "pt.png")
    assert info.mode == "RGBA" and image[0, 0, 3] == 0.0 and image[1, 1, 3] == 1.0


def test_to_uint_rounds_and_clips():
    x = np.array([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 0.5, 1.0, 2.0, np.nan], np.float32)
    assert to_uint(x, 8).tolist() == [0, 0, 0, 1, 128, 255, 255, 0]
    assert to_uint(x, 16).dtype == np.uint16 and to_uint(x, 16)[5] == 65535
    k = np.arange(65536)
    np.testing.assert_array_equal(to_uint((k / 65535).astype(np.float32), 16), k)
    with pytest.raises(ValueError):
        to_uint(x, 12)


# --------------------------------------------------------------------------- row bands


@pytest.mark.parametrize("band_rows", [1, 37, 64, 500])
@pytest.mark.parametrize("layout", ["tiled", "stripped", "separate", "png", "jpeg"])
def test_iter_row_bands_equals_read_image(tmp_path, layout, band_rows):
    pixels = random_pixels(150, 70, 3, 16 if layout != "jpeg" else 8)
    if layout == "tiled":
        path = tmp_path / "in.tif"
        tifffile.imwrite(path, pixels, tile=(32, 48), photometric="rgb", compression="zlib")
    elif layout == "stripped":
        path = tmp_path / "in.tif"
        tifffile.imwrite(path, pixels, rowsperstrip=20, photometric="rgb", bigtiff=True)
    elif layout == "separate":
        path = tmp_path / "in.tif"
        tifffile.imwrite(path, np.moveaxis(pixels, -1, 0), photometric="rgb", planarconfig="separate",
                         rowsperstrip=16)
    elif layout == "png":
        path = write_in_chunks(tmp_path / "in.png", pixels, 16)
    else:
        path = tmp_path / "in.jpg"
        Image.fromarray(pixels).save(path)
    whole, _ = read_image(path)
    bands = list(iter_row_bands(path, band_rows))
    assert [y0 for y0, _ in bands] == list(range(0, 150, band_rows))
    assert all(b.dtype == np.float32 and len(b) == min(band_rows, 150 - y0) for y0, b in bands)
    np.testing.assert_array_equal(np.concatenate([b for _, b in bands]), whole)
    if layout != "jpeg":
        np.testing.assert_array_equal(to_uint(whole, 16), pixels)


def test_iter_row_bands_grey_tiff_and_bad_input(tmp_path):
    pixels = random_pixels(50, 40, 1, 8)[..., 0]
    tifffile.imwrite(tmp_path / "g.tif", pixels, tile=(16, 16))
    bands = [b for _, b in iter_row_bands(tmp_path / "g.tif", 9)]
    assert bands[0].shape == (9, 40, 1)
    np.testing.assert_array_equal(to_uint(np.concatenate(bands), 8)[..., 0], pixels)
    with pytest.raises(BadInput):  # the header is probed before the first band is asked for
        iter_row_bands(tmp_path / "missing.tif", 8)
    with pytest.raises(ValueError):
        iter_row_bands(tmp_path / "g.tif", 0)


# --------------------------------------------------------------------------- atomic output


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_abort_midway_keeps_existing_target(tmp_path, suffix):
    target = tmp_path / f"out{suffix}"
    target.write_bytes(b"previous result")
    pixels = random_pixels(300, 40, 3, 8)
    with pytest.raises(RuntimeError, match="boom"):
        with open_writer(target, 40, 300, 3, 8) as writer:
            writer.write_rows(pixels[:260])  # one TIFF tile row already handed to tifffile
            assert atomic.partial_path(target).exists()
            raise RuntimeError("boom")
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_too_few_rows_leaves_nothing(tmp_path, suffix):
    target = tmp_path / f"out{suffix}"
    writer = open_writer(target, 40, 300, 1, 16)
    writer.write_rows(random_pixels(299, 40, 1, 16))
    with pytest.raises(OutputError) as exc_info:
        writer.close()
    assert "299 of 300 rows" in assert_one_line(exc_info, target)
    assert list(tmp_path.iterdir()) == []
    writer.abort()  # harmless after the fact


def test_explicit_abort_and_misuse(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    writer = open_writer(target, 10, 4, 3, 8)
    with pytest.raises(TypeError):
        writer.write_rows(np.zeros((1, 10, 3), np.uint16))
    with pytest.raises(ValueError):
        writer.write_rows(np.zeros((1, 11, 3), np.uint8))
    with pytest.raises(ValueError):
        writer.write_rows(np.zeros((5, 10, 3), np.uint8))
    writer.write_rows(np.zeros((2, 10, 3), np.uint8))  # misuse above did not abort the writer
    writer.abort()
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with pytest.raises(ValueError, match="aborted"):
        writer.write_rows(np.zeros((2, 10, 3), np.uint8))
    with pytest.raises(BadInput, match=r"\.png, \.tif, \.tiff"):
        open_writer(tmp_path / "out.bmp", 10, 4, 3, 8)


class _FullDisk(io.FileIO):
    """A file that runs out of space after `room` bytes."""

    room = 4096

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_disk_full_gives_output_error(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(atomic, "open_temp", lambda path: io.BufferedWriter(_FullDisk(path, "w")))
    target = tmp_path / f"out{suffix}"
    target.write_bytes(b"old")
    pixels = random_pixels(512, 300, 3, 8)  # noise: does not compress below 4 KiB
    with pytest.raises(OutputError) as exc_info:
        with open_writer(target, 300, 512, 3, 8) as writer:
            for y in range(0, 512, 64):
                writer.write_rows(pixels[y: y + 64])
    message = assert_one_line(exc_info, target)
    assert "No space left on device" in message
    assert exc_info.value.exit_code == 1 and isinstance(exc_info.value, StreamsrError)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


# --------------------------------------------------------------------------- bad inputs


def _truncated_png(tmp_path):
    path = write_in_chunks(tmp_path / "cut.png", random_pixels(64, 64, 3, 8), 8)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_jpeg(tmp_path):
    path = tmp_path / "bad.jpg"
    Image.fromarray(random_pixels(64, 80, 3, 8)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    # Stray frame markers inside the scan. (libjpeg decodes plain random bytes there into
    # wrong pixels with only a warning, which Pillow does not surface: that is undetectable.)
    data[middle: middle + 64] = b"\xff\xc0" * 32
    path.write_bytes(bytes(data))
    return path


def _truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(random_pixels(64, 80, 3, 8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    return path


def _text_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    return path


def _gif(tmp_path):
    path = tmp_path / "anim.png"
    Image.new("P", (4, 4)).save(path, format="GIF")
    return path


def _huge_png(tmp_path):
    return patch_ihdr(small_png(tmp_path / "huge.png"), 20000, 10000)  # 200 MP > Pillow's limit


def _absurd_png(tmp_path):
    return patch_ihdr(small_png(tmp_path / "absurd.png"), 3_000_000_000, 2)


def _zero_png(tmp_path):
    return patch_ihdr(small_png(tmp_path / "zero.png"), 0, 5)


def _animated_webp(tmp_path):  # (a CMYK JPEG is read now, converted to sRGB: tests/test_formats.py)
    path = tmp_path / "anim.webp"
    Image.new("RGB", (8, 8)).save(path, save_all=True, append_images=[Image.new("RGB", (8, 8), "red")])
    return path


def _apng(tmp_path):
    path = tmp_path / "anim.png"
    Image.new("RGB", (8, 8)).save(path, save_all=True, append_images=[Image.new("RGB", (8, 8), "red")] * 2)
    return path


def _two_page_tiff(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((8, 8, 3), np.uint8))
        tw.write(np.full((8, 8, 3), 255, np.uint8))
    return path


def _float_tiff(tmp_path):
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.float32))
    return path


def _palette_tiff(tmp_path):
    path = tmp_path / "palette.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), photometric="palette",
                     colormap=np.zeros((3, 256), np.uint16))
    return path


def _bad_ifd_tiff(tmp_path):
    path = tmp_path / "bad.tif"
    path.write_bytes(b"II*\x00" + struct.pack("<I", 10**6) + bytes(100))  # first IFD past the end
    return path


def _missing(tmp_path):
    return tmp_path / "nothing.png"


def _directory(tmp_path):
    path = tmp_path / "dir.png"
    path.mkdir()
    return path


BAD_INPUTS = {
    "truncated png": (_truncated_png, "corrupt or truncated PNG"),
    "corrupt jpeg": (_corrupt_jpeg, "corrupt or truncated JPEG"),
    "truncated jpeg": (_truncated_jpeg, "corrupt or truncated JPEG"),
    "zero-size file": (_empty, "empty (0 bytes)"),
    "text named .png": (_text_png, "not an image"),
    "gif named .png": (_gif, "is a GIF image"),
    "png over pillow's limit": (_huge_png, "20000x10000"),
    "absurd png": (_absurd_png, "absurd dimensions"),
    "zero-width png": (_zero_png, "empty size"),
    "animated webp": (_animated_webp, "animated WebP"),
    "animated png": (_apng, "animated PNG (APNG) of 3 frames"),
    "two-page tiff": (_two_page_tiff, "multi-page TIFF of 2 pages"),
    "float tiff": (_float_tiff, "floating-point"),
    "palette tiff": (_palette_tiff, "palette TIFF"),
    "tiff with a bad IFD offset": (_bad_ifd_tiff, "is not a valid TIFF"),
    "missing file": (_missing, "no such file"),
    "directory": (_directory, "is a directory"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_give_one_line_bad_input(tmp_path, case):
    make, expected = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(BadInput) as exc_info:
        read_image(path)
    assert expected in assert_one_line(exc_info, path)
    with pytest.raises(BadInput):
        list(iter_row_bands(path, 16))


def test_tiff_with_a_reduced_resolution_page_is_one_image(tmp_path):
    """A thumbnail or a pyramid stored as top-level pages (NewSubfileType 1) is not a second image."""
    pixels = random_pixels(20, 30, 3, 8)
    path = tmp_path / "thumb.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(pixels)
        tw.write(pixels[::2, ::2], subfiletype=1)
    assert (probe(path).width, probe(path).height) == (30, 20)
    np.testing.assert_array_equal(to_uint(read_image(path)[0], 8), pixels)


def test_pillow_limit_suggests_tiled_tiff_and_spares_tiff(tmp_path, monkeypatch):
    pixels = random_pixels(20, 30, 3, 8)
    png_path = write_in_chunks(tmp_path / "in.png", pixels, 8)
    tif_path = write_in_chunks(tmp_path / "in.tif", pixels, 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadInput) as exc_info:
        probe(png_path)
    message = assert_one_line(exc_info, png_path)
    assert "30x20" in message and "tiled TIFF" in message
    np.testing.assert_array_equal(to_uint(read_image(tif_path)[0], 8), pixels)


def test_truncated_tiff_data_gives_bad_input(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, random_pixels(256, 256, 3, 8), tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        last = page.dataoffsets[-1] + page.databytecounts[-1]
        first = page.dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[first: first + 64] = b"\x00" * 64  # break the zlib stream of the first tile
    path.write_bytes(bytes(data[:last]))
    with pytest.raises(BadInput) as exc_info:
        read_image(path)
    assert "corrupt TIFF" in assert_one_line(exc_info, path)
    with pytest.raises(BadInput) as exc_info:
        list(iter_row_bands(path, 64))
    assert "corrupt TIFF" in assert_one_line(exc_info, path)


# --------------------------------------------------------------------------- JPEG beyond Pillow's limit


def test_huge_jpeg_needs_pyvips(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.fromarray(pattern(0, 60, 80)).save(path, quality=92)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(probe_module, "pyvips_or_none", lambda: None)
    for stream in (False, True):
        with pytest.raises(BadInput) as exc_info:
            probe(path, stream=stream)
        assert "80x60" in one_line(exc_info) and "tiled TIFF" in one_line(exc_info)
    assert "pyvips" in one_line(exc_info)


def test_huge_jpeg_with_pyvips(tmp_path, monkeypatch):
    pytest.importorskip("pyvips")
    if probe_module.pyvips_or_none() is None:
        pytest.skip("libvips cannot be loaded")
    path = tmp_path / "big.jpg"
    Image.fromarray(pattern(0, 60, 80)).save(path, quality=92)
    whole, _ = read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    got = np.concatenate([b for _, b in iter_row_bands(path, 16)])
    assert np.abs(got - whole).max() <= 2 / 255


# --------------------------------------------------------------------------- zarr input (streamsr.io.zarr_input)


def test_zarr_input_layouts(tmp_path):
    img = pattern(0, 50, 40, 3)
    a = zarr.create_array(store=os.fspath(tmp_path / "hwc.zarr"), shape=img.shape, chunks=(16, 16, 3), dtype="uint8")
    a[...] = img
    b = zarr.create_array(store=os.fspath(tmp_path / "chw.zarr"), shape=(3, 50, 40), chunks=(3, 16, 16),
                          dtype="uint8", dimension_names=("c", "y", "x"))
    b[...] = np.moveaxis(img, -1, 0)
    c = zarr.create_array(store=os.fspath(tmp_path / "v2.zarr"), shape=img.shape, chunks=(7, 40, 3),
                          dtype="uint8", zarr_format=2)
    c[...] = img
    group = zarr.open_group(os.fspath(tmp_path / "group.zarr"), mode="w")
    group.create_array("image", shape=img.shape, chunks=(16, 16, 3), dtype="uint8")[...] = img
    five = zarr.create_array(store=os.fspath(tmp_path / "tczyx.zarr"), shape=(1, 3, 1, 50, 40),
                             chunks=(1, 3, 1, 16, 16), dtype="uint8", dimension_names=("t", "c", "z", "y", "x"))
    five[...] = np.moveaxis(img, -1, 0)[None, :, None]
    for name in ("hwc", "chw", "v2", "group", "tczyx"):
        path = tmp_path / f"{name}.zarr"
        image, info = read_image(path)
        assert (info.width, info.height, info.mode, info.format) == (40, 50, "RGB", "ZARR"), name
        np.testing.assert_array_equal(to_uint(image, 8), img)
        got = np.concatenate([band for _, band in iter_row_bands(path, 9)])
        np.testing.assert_array_equal(got, image)
    grey = zarr.create_array(store=os.fspath(tmp_path / "grey.zarr"), shape=(20, 30), chunks=(8, 8), dtype="uint16")
    grey[...] = 1000
    info = probe(tmp_path / "grey.zarr")
    assert (info.mode, info.bit_depth, info.channels) == ("L", 16, 1)


def test_input_sha256_of_files_and_zarr_stores(tmp_path):
    import hashlib

    (tmp_path / "f.bin").write_bytes(b"abc" * 1000)
    assert input_sha256(tmp_path / "f.bin") == hashlib.sha256(b"abc" * 1000).hexdigest()
    arr = make_source(tmp_path / "a.zarr", 40, 30, 3, chunks=(16, 16))
    first = input_sha256(tmp_path / "a.zarr")
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "b.zarr")
    (tmp_path / "b.zarr" / ".DS_Store").write_text("x")
    assert input_sha256(tmp_path / "b.zarr") == first  # a copy is the same input
    arr[0, 0, 0] = 255 - arr[0, 0, 0]
    assert input_sha256(tmp_path / "a.zarr") != first


def test_zarr_input_errors(tmp_path):
    two = zarr.open_group(os.fspath(tmp_path / "two.zarr"), mode="w")
    two.create_array("a", shape=(4, 4), dtype="uint8")
    two.create_array("b", shape=(4, 4), dtype="uint8")
    zarr.create_array(store=os.fspath(tmp_path / "float.zarr"), shape=(4, 4, 3), dtype="float32")
    zarr.create_array(store=os.fspath(tmp_path / "wide.zarr"), shape=(9, 8, 7), dtype="uint8")
    (tmp_path / "plain").mkdir()
    cases = {"two.zarr": "2 arrays", "float.zarr": "float32", "wide.zarr": "no channel axis",
             "plain": "is a directory"}
    for name, expected in cases.items():
        with pytest.raises(BadInput) as exc_info:
            probe(tmp_path / name)
        assert expected in one_line(exc_info) and str(tmp_path / name) in one_line(exc_info)
