"""streamsr.io.png: the streaming PNG reader (any size, by row bands) equals the whole decode for every
PNG kind, reads our own Paeth writer, and refuses what it cannot stream."""

from __future__ import annotations

import numpy as np
import png
import pytest
from PIL import Image
from test_export import make_source, one_line, pattern

from streamsr.errors import BadInput
from streamsr.io.depth import to_uint
from streamsr.io.export import export_array
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


def test_streaming_png_of_our_paeth_writer_16_bit(tmp_path, monkeypatch):
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
