"""streamsr.io.png: the streaming PNG reader (any size, by row bands) equals the whole decode for every
PNG kind, reads our own writer, and refuses what it cannot stream; the writer (Up filter, one zlib stream
deflated on several threads by streamsr.io.deflate) is read back bit-exactly by Pillow and pypng, and its
bytes do not depend on the thread count."""

from __future__ import annotations

import zlib

import numpy as np
import png
import pytest
from PIL import Image
from test_export import make_source, one_line, pattern

from streamsr.errors import BadInput
from streamsr.io import deflate
from streamsr.io import png as png_module
from streamsr.io.deflate import ParallelDeflate, zlib_header
from streamsr.io.depth import to_uint
from streamsr.io.export import export_array
from streamsr.io.png import PngWriter
from streamsr.io.probe import probe
from streamsr.io.read import iter_row_bands, read_image
from streamsr.io.write import open_writer


def test_png_export_beyond_pillow_limit_reads_back_by_rows(tmp_path, monkeypatch):
    arr = make_source(tmp_path / "src.zarr", 640, 896, 3)
    out = export_array(arr, (600, 850), tmp_path / "o.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 0.51 MP is "huge" now
    with pytest.raises(BadInput) as exc_info:
        read_image(out)
    assert "850x600" in one_line(exc_info)
    info = probe(out, stream=True)
    assert (info.width, info.height, info.format) == (850, 600, "PNG")
    bands = list(iter_row_bands(out, 77))
    assert [y0 for y0, _ in bands] == list(range(0, 600, 77))
    np.testing.assert_array_equal(to_uint(np.concatenate([b for _, b in bands]), 8), arr[:600, :850])


def _write_pypng(path, width, height, rng, **kwargs):
    depth = kwargs.get("bitdepth", 8)
    planes = (1 if kwargs.get("greyscale", True) or "palette" in kwargs else 3) + bool(kwargs.get("alpha"))
    top = len(kwargs["palette"]) if "palette" in kwargs else 2 ** depth
    rows = rng.integers(0, top, (height, width * planes))
    rows[: height // 2, : width * planes // 2] = top // 3  # flat areas: other filter types
    with open(path, "wb") as fh:
        png.Writer(width, height, **kwargs).write(fh, rows.tolist())
    return path


PNG_KINDS = {
    "grey1": dict(greyscale=True, bitdepth=1), "grey4": dict(greyscale=True, bitdepth=4),
    "grey8": dict(greyscale=True, bitdepth=8), "grey16": dict(greyscale=True, bitdepth=16),
    "la16": dict(greyscale=True, alpha=True, bitdepth=16), "rgb8": dict(greyscale=False, bitdepth=8),
    "rgb16": dict(greyscale=False, bitdepth=16), "rgba8": dict(greyscale=False, alpha=True, bitdepth=8),
    "rgba16": dict(greyscale=False, alpha=True, bitdepth=16),
    "palette2": dict(palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0), (9, 9, 200)], bitdepth=2),
    "palette8-alpha": dict(palette=[(i, 255 - i, i // 2, i) for i in range(200)], bitdepth=8),
}


@pytest.mark.parametrize("kind", list(PNG_KINDS))
def test_streaming_png_reader_equals_whole_decode(tmp_path, monkeypatch, kind):
    rng = np.random.default_rng(len(kind))
    path = _write_pypng(tmp_path / f"{kind}.png", 83, 70, rng, **PNG_KINDS[kind])
    whole, info = read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert probe(path, stream=True) == info
    for band_rows in (1, 16, 100):
        got = np.concatenate([b for _, b in iter_row_bands(path, band_rows)])
        np.testing.assert_array_equal(got, whole)


def test_streaming_png_of_our_writer_16_bit(tmp_path, monkeypatch):
    pixels = pattern(0, 130, 77, 4, np.uint16)
    with open_writer(tmp_path / "p.png", 77, 130, 4, 16) as writer:
        writer.write_rows(pixels)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    got = np.concatenate([b for _, b in iter_row_bands(tmp_path / "p.png", 50)])
    np.testing.assert_array_equal(to_uint(got, 16), pixels)


def test_huge_png_refusals(tmp_path, monkeypatch):
    path = tmp_path / "i.png"
    with open(path, "wb") as fh:
        png.Writer(50, 40, greyscale=False, interlace=True).write(fh, pattern(0, 40, 50).reshape(40, -1).tolist())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadInput) as exc_info:
        probe(path, stream=True)
    assert "interlaced" in one_line(exc_info)
    good = _write_pypng(tmp_path / "g.png", 50, 40, np.random.default_rng(0), greyscale=False)
    data = bytearray(good.read_bytes())
    data[-40:-30] = bytes(10)  # break the last IDAT's CRC
    good.write_bytes(bytes(data))
    with pytest.raises(BadInput) as exc_info:
        list(iter_row_bands(good, 8))
    assert "corrupt or truncated PNG" in one_line(exc_info)
    short = tmp_path / "s.png"
    short.write_bytes(good.read_bytes()[: len(data) // 2])
    with pytest.raises(BadInput) as exc_info:
        list(iter_row_bands(short, 8))
    assert "corrupt or truncated PNG" in one_line(exc_info)


@pytest.mark.parametrize("impl", ["default", "stdlib"])
def test_parallel_deflate_is_one_zlib_stream(monkeypatch, impl):
    if impl == "stdlib":  # the fallback where zlib-ng has no wheel
        monkeypatch.setattr(deflate, "zlib_impl", zlib)
    rng = np.random.default_rng(5)
    data = (rng.integers(0, 6, 1_000_003, dtype=np.uint8) * 40).tobytes()  # compressible, odd length
    streams = []
    for workers in (1, 3):
        zip_, out, most = ParallelDeflate(4, workers=workers, piece_bytes=1 << 15), [], 0
        for i in range(0, len(data), 77_777):
            out += zip_.feed(data[i: i + 77_777])
            most = max(most, len(zip_._pending))
        streams.append(b"".join(out + zip_.finish()))
        assert most <= workers + 1  # bounded memory: pieces in flight
    assert streams[0] == streams[1]  # the bytes do not depend on the thread count
    assert zlib.decompress(streams[0]) == data  # one valid stream: header, sync-flushed pieces, Adler-32
    assert len(streams[0]) < len(zlib.compress(data, 1)) * 1.05  # priming keeps the ratio across cuts
    for level in range(10):
        assert int.from_bytes(zlib_header(level), "big") % 31 == 0
    assert zlib.decompress(b"".join(ParallelDeflate(6).finish())) == b""


@pytest.mark.parametrize("channels,depth", [(1, 8), (2, 8), (3, 8), (4, 8), (1, 16), (2, 16), (3, 16), (4, 16)])
def test_png_writer_reads_back_bit_exactly_whatever_the_threads(tmp_path, monkeypatch, channels, depth):
    monkeypatch.setattr(deflate, "PIECE_BYTES", 1 << 15)  # many pieces on a small image
    monkeypatch.setattr(png_module, "_IDAT_BYTES", 997)  # and many IDAT chunks: cut where the threads had pieces?
    dtype = np.uint8 if depth == 8 else np.uint16
    pixels = np.random.default_rng(channels * depth).integers(0, 1 << depth, (157, 211, channels), dtype=dtype)
    pixels[:60] //= 9  # smoother rows: long matches across the piece cuts
    blobs = []
    for workers in (1, 4):
        path = tmp_path / f"w{workers}.png"
        with PngWriter(path, 211, 157, channels, depth, workers=workers) as writer:
            for y0 in range(0, 157, 40):
                writer.write_rows(pixels[y0: y0 + 40])
        blobs.append(path.read_bytes())
    assert blobs[0] == blobs[1]
    if depth == 8 or channels == 1:  # Pillow reads 16-bit grey as I;16, other 16-bit modes as 8-bit
        with Image.open(path) as im:
            got = np.asarray(im).reshape(pixels.shape)
        np.testing.assert_array_equal(got, pixels)
    _, _, rows, _ = png.Reader(filename=str(path)).asDirect()
    np.testing.assert_array_equal(np.array(list(rows), dtype).reshape(pixels.shape), pixels)
