"""streamsr.io.export (and streamsr.jobs.export): pyramids, formats, output paths, atomicity, bounded memory.

The big case is a 9500 x 9500 RGB output (90.25 MP, above Pillow's 89.5 MP limit) in a zarr array
padded to 9600 x 9600 like a job's; it is exported to TIFF, OME-Zarr and DZI by child processes
whose peak RSS (VmHWM) is compared with that of a 4x smaller crop (4750 x 4750) of the same array.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from streamsr.errors import BadInput
from streamsr.io import export as ex
from streamsr.io.depth import to_uint
from streamsr.io.export import base, check_export_path
from streamsr.io.export.dzi import dzi_sizes, dzi_tile_counts
from streamsr.io.probe import probe
from streamsr.io.problems import OutputError
from streamsr.io.pyramid import pyramid_sizes
from streamsr.io.read import iter_row_bands, read_image
from streamsr.jobs.export import export_job

ROOT = Path(__file__).resolve().parents[1]
BIG = 9500  # 90.25 MP > PIL.Image.MAX_IMAGE_PIXELS (89.48 MP)
BIG_PADDED = 9600
SMALL = BIG // 2  # a 4x smaller image: the top-left crop of the same array


def pattern(y0: int, rows: int, width: int, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    """Cheap synthetic pixels with detail at every scale (so that box reduction is not trivial)."""
    y = np.arange(y0, y0 + rows, dtype=np.uint32)[:, None]
    x = np.arange(width, dtype=np.uint32)[None, :]
    planes = [(x * 7 + y * 13) ^ (x >> 3), (x * y) >> 5, (x + 3 * y) >> 2, (x ^ y) | 1]
    out = np.empty((rows, width, channels), dtype)
    scale = 257 if dtype == np.uint16 else 1
    for c in range(channels):
        out[:, :, c] = (planes[c] & 255) * scale + (planes[(c + 1) % 4] & 255 if scale > 1 else 0)
    return out


def make_source(path: Path, height: int, width: int, channels: int = 3, dtype="uint8", chunks=(128, 128)):
    arr = zarr.create_array(store=os.fspath(path), shape=(height, width, channels), chunks=(*chunks, channels),
                            dtype=dtype, fill_value=0, compressors=None)
    for y0 in range(0, height, chunks[0]):
        arr[y0: y0 + chunks[0]] = pattern(y0, min(chunks[0], height - y0), width, channels, np.dtype(dtype))
    return arr


def box(img: np.ndarray, factor: int) -> np.ndarray:
    """Reference box reduction by `factor` (a power of two) through repeated 2x2 means, round half
    up, odd edges replicated: what one level of the cascade is defined to be."""
    out = img.astype(np.uint32)
    while factor > 1:
        if out.shape[0] % 2:
            out = np.concatenate([out, out[-1:]], axis=0)
        if out.shape[1] % 2:
            out = np.concatenate([out, out[:, -1:]], axis=1)
        h, w = out.shape[0] // 2, out.shape[1] // 2
        out = (out.reshape(h, 2, w, 2, -1).sum(axis=(1, 3)) + 2) // 4
        factor //= 2
    return out.astype(img.dtype)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert message and "\n" not in message
    return message


def assert_one_line(exc_info, path) -> str:
    """The error's message: one line, no outer blanks, naming `path`."""
    message = one_line(exc_info)
    assert message.strip() == message and str(path) in message
    return message


# --------------------------------------------------------------------------- the big case


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "output.zarr"
    make_source(path, BIG_PADDED, BIG_PADDED, chunks=(128, 960))
    return path


CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import zarr
from streamsr.io.export import export_array
src, fmt, small, out, opts, big = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], json.loads(sys.argv[6]), int(sys.argv[7])

def peak():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024

arr = zarr.open_array(src, mode="r")
stem, _, suffix = out.rpartition(".")
export_array(arr, (small, small), f"{stem}-small.{suffix}", fmt=fmt, **opts)
hwm = [peak()]
export_array(arr, (big, big), out, fmt=fmt, **opts)
hwm.append(peak())
print(json.dumps(hwm))
"""


def export_in_child(src: Path, fmt: str, out: Path, **opts) -> tuple[int, int]:
    """Peak RSS of a fresh process after exporting the small crop, then after the big image."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(src), fmt, str(SMALL), str(out),
                           json.dumps(opts), str(BIG)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    small, big = json.loads(proc.stdout.strip().splitlines()[-1])
    return small, big


def assert_bounded(small: int, big: int) -> None:
    assert big < 600 * 2**20, f"peak RSS {big / 2**20:.0f} MiB for {BIG}x{BIG}"
    assert big / small < 1.3, f"peak RSS {small / 2**20:.0f} -> {big / 2**20:.0f} MiB for a 4x larger image"


def source_bands(src: Path, size: int, rows: int = 512):
    arr = zarr.open_array(os.fspath(src), mode="r")
    for y0 in range(0, size, rows):
        yield y0, arr[y0: min(size, y0 + rows), :size]


def test_big_tiff_pyramid_bounded_rss(big_source, tmp_path):
    out = tmp_path / "big.tif"
    assert_bounded(*export_in_child(big_source, "tiff", out))
    sizes = pyramid_sizes(BIG, BIG)
    assert sizes[-1] == (297, 297) and all(max(s) >= 512 for s in sizes[:-1])
    with tifffile.TiffFile(out) as tf:
        assert tf.is_bigtiff
        page = tf.pages.first
        assert (page.tilewidth, page.tilelength) == (512, 512) and page.compression == 50000  # zstd
        levels = tf.series[0].levels
        assert [lv.shape for lv in levels] == [(h, w, 3) for h, w in sizes]
        level0 = zarr.open_array(tf.aszarr(level=0), mode="r")
        for y0, ref in source_bands(big_source, BIG, 1024):
            assert np.array_equal(level0[y0: y0 + len(ref)], ref), y0
        level1 = zarr.open_array(tf.aszarr(level=1), mode="r")
        ref = zarr.open_array(os.fspath(big_source), mode="r")[BIG - 1000: BIG, BIG - 1002: BIG]
        np.testing.assert_array_equal(level1[-500:, -501:], box(ref, 2))
        np.testing.assert_array_equal(levels[-1].asarray(), box(levels[-2].asarray(), 2))


def test_big_ome_zarr_bounded_rss(big_source, tmp_path):
    out = tmp_path / "big.ome.zarr"
    assert_bounded(*export_in_child(big_source, "zarr", out))
    sizes = pyramid_sizes(BIG, BIG)
    meta = json.loads((out / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [a["type"] for a in ms["axes"]] == ["channel", "space", "space"]
    assert [d["path"] for d in ms["datasets"]] == [str(k) for k in range(len(sizes))]
    for k, d in enumerate(ms["datasets"]):
        assert d["coordinateTransformations"] == [{"type": "scale", "scale": [1.0, 2.0 ** k, 2.0 ** k]}]
    group = zarr.open_group(os.fspath(out), mode="r")
    for k, (h, w) in enumerate(sizes):
        arr = group[str(k)]
        assert arr.shape == (3, h, w) and arr.chunks == (3, 512, 512) and arr.dtype == np.uint8
        assert list(arr.metadata.dimension_names) == ["c", "y", "x"]
    level0 = group["0"]
    for y0, ref in source_bands(big_source, BIG, 1024):
        assert np.array_equal(np.moveaxis(level0[:, y0: y0 + len(ref)], 0, -1), ref), y0
    np.testing.assert_array_equal(group[str(len(sizes) - 1)][...], np.moveaxis(
        box(np.moveaxis(group[str(len(sizes) - 2)][...], 0, -1), 2), -1, 0))
    # the OME-Zarr is itself a streamsr input: its level 0, read by bands
    info = probe(out)
    assert (info.width, info.height, info.mode, info.format) == (BIG, BIG, "RGB", "ZARR")
    y0, band = next(iter(iter_row_bands(out, 300)))
    assert y0 == 0 and np.array_equal(to_uint(band, 8), zarr.open_array(os.fspath(big_source), mode="r")[:300, :BIG])


def read_dzi(path: Path):
    root = ET.parse(path).getroot()
    ns = "{http://schemas.microsoft.com/deepzoom/2008}"
    size = root.find(f"{ns}Size")
    return root.attrib, int(size.attrib["Width"]), int(size.attrib["Height"])


def assemble_dzi_level(files: Path, level: int, height: int, width: int, suffix: str) -> np.ndarray:
    """Stitch a DeepZoom level from its tiles (dropping the overlaps); checks every tile's extent."""
    out = None
    for row in range(-(-height // 254)):
        for col in range(-(-width // 254)):
            tile = np.asarray(Image.open(files / str(level) / f"{col}_{row}.{suffix}"))
            tile = tile[:, :, None] if tile.ndim == 2 else tile
            x0, y0 = max(0, col * 254 - 1), max(0, row * 254 - 1)
            x1, y1 = min(width, (col + 1) * 254 + 1), min(height, (row + 1) * 254 + 1)
            assert tile.shape[:2] == (y1 - y0, x1 - x0), (level, col, row, tile.shape)
            if out is None:
                out = np.zeros((height, width, tile.shape[2]), np.uint8)
            out[y0:y1, x0:x1] = tile
    return out


def test_big_dzi_bounded_rss(big_source, tmp_path):
    out = tmp_path / "big.dzi"
    assert_bounded(*export_in_child(big_source, "dzi", out))
    attrib, width, height = read_dzi(out)
    assert (width, height) == (BIG, BIG)
    assert attrib["TileSize"] == "254" and attrib["Overlap"] == "1" and attrib["Format"] == "jpg"
    files = tmp_path / "big_files"
    counts = dzi_tile_counts(BIG, BIG)
    assert len(counts) == 15 == (BIG - 1).bit_length() + 1  # levels 0 (1x1) .. 14 (full size)
    assert sorted(int(p.name) for p in files.iterdir()) == list(range(15))
    for level, (cols, rows) in enumerate(counts):
        names = {p.name for p in (files / str(level)).iterdir()}
        assert names == {f"{c}_{r}.jpg" for c in range(cols) for r in range(rows)}
    assert Image.open(files / "0" / "0_0.jpg").size == (1, 1)
    # Tiles of a mid level (11: 1188 x 1188, an 8x reduction) and of full size (14) are byte for byte
    # the JPEG (quality 90, as exported) of the reference pixels: exact, despite JPEG's losses.
    sizes = dzi_sizes(BIG, BIG)
    assert sizes[3] == (1188, 1188)
    src = zarr.open_array(os.fspath(big_source), mode="r")
    for level, factor in ((11, 8), (14, 1)):
        h, w = sizes[14 - level]
        cols, rows = -(-w // 254), -(-h // 254)
        for col, row in ((0, 0), (2, 3), (cols - 1, rows - 1)):
            y0, y1 = max(0, row * 254 - 1), min(h, (row + 1) * 254 + 1)
            x0, x1 = max(0, col * 254 - 1), min(w, (col + 1) * 254 + 1)
            region = src[y0 * factor: min(BIG, y1 * factor), x0 * factor: min(BIG, x1 * factor)]
            ref = box(region, factor)
            assert ref.shape == (y1 - y0, x1 - x0, 3)
            encoded = io.BytesIO()
            Image.fromarray(ref).save(encoded, "JPEG", quality=90)
            assert (files / str(level) / f"{col}_{row}.jpg").read_bytes() == encoded.getvalue(), (level, col, row)


# --------------------------------------------------------------------------- formats, small


def test_dzi_levels_are_exact_with_png_tiles_and_16_bit_becomes_8_bit(tmp_path):
    arr = make_source(tmp_path / "src.zarr", 768, 1024, 4, "uint16")
    h, w = 700, 1001  # odd width, cropped from the padded array
    out = ex.export_array(arr, (h, w), tmp_path / "x.dzi", tile_format="png", workers=2)
    attrib, width, height = read_dzi(out)
    assert (width, height, attrib["Format"]) == (w, h, "png")
    ref8 = ((arr[:h, :w].astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    top = (w - 1).bit_length()
    for k, (lh, lw) in enumerate(dzi_sizes(h, w)):
        level = assemble_dzi_level(tmp_path / "x_files", top - k, lh, lw, "png")
        np.testing.assert_array_equal(level, box(ref8, 2 ** k))
    assert not list(tmp_path.glob("*partial*"))


def test_dzi_level_one_row_past_a_tile_row(tmp_path):
    """Levels 509 and 255 (= 2 x 254 + 1, 254 + 1) rows high: their last tile row holds only rows that the
    tile row above also needed (as its overlap); it must still be cut."""
    arr = make_source(tmp_path / "src.zarr", 512, 384, 3)
    h, w = 509, 300
    ex.export_array(arr, (h, w), tmp_path / "x.dzi", tile_format="png")
    top = (h - 1).bit_length()
    for k, (lh, lw) in enumerate(dzi_sizes(h, w)):
        level = assemble_dzi_level(tmp_path / "x_files", top - k, lh, lw, "png")
        np.testing.assert_array_equal(level, box(arr[:h, :w], 2 ** k))


@pytest.mark.parametrize("channels,bit_depth,compression", [
    (1, 16, "auto"), (4, 8, "zlib"), (2, 16, "none"), (3, 8, "zstd")])
def test_tiff_pyramid_variants(tmp_path, channels, bit_depth, compression):
    dtype = "uint8" if bit_depth == 8 else "uint16"
    arr = make_source(tmp_path / "src.zarr", 1280, 1536, channels, dtype)
    h, w = 1100, 1499
    out = ex.export_array(arr, (h, w), tmp_path / "x.tiff", compression=compression)
    sizes = pyramid_sizes(h, w)
    assert sizes == [(1100, 1499), (550, 750), (275, 375)]
    with tifffile.TiffFile(out) as tf:
        levels = tf.series[0].levels
        assert len(tf.pages.first.subifds) == 2
        ref = arr[:h, :w]
        for k, level in enumerate(levels):
            data = level.asarray()
            data = data[:, :, None] if data.ndim == 2 else data
            np.testing.assert_array_equal(data, box(ref, 2 ** k))
        if channels in (2, 4):
            assert tf.pages.first.extrasamples == (2,)  # unassociated alpha
    info = probe(out)  # a streamsr input again (its full-resolution page)
    assert (info.width, info.height, info.channels, info.bit_depth) == (w, h, channels, bit_depth)


def test_tiff_jpeg_compression_and_refusals(tmp_path):
    arr = zarr.create_array(store=os.fspath(tmp_path / "src.zarr"), shape=(600, 700, 3), chunks=(128, 128, 3),
                            dtype="uint8")
    y, x = np.mgrid[0:600, 0:700]
    arr[...] = np.stack([x * 255 // 700, y * 255 // 600, (x + y) * 255 // 1300], axis=-1).astype(np.uint8)
    out = ex.export_array(arr, (600, 700), tmp_path / "j.tif", compression="jpeg", quality=95)
    with tifffile.TiffFile(out) as tf:
        assert tf.pages.first.compression == 7
        data = tf.series[0].levels[0].asarray().astype(int)
    assert np.abs(data - arr[...].astype(int)).mean() < 2
    rgba = make_source(tmp_path / "rgba.zarr", 64, 64, 4)
    with pytest.raises(BadInput) as exc_info:
        ex.export_array(rgba, (64, 64), tmp_path / "a.tif", compression="jpeg")
    assert "alpha" in one_line(exc_info)
    with pytest.raises(BadInput):
        ex.export_array(rgba, (64, 64), tmp_path / "a.tif", compression="lzw")
    assert not list(tmp_path.glob("a*"))


def test_ome_zarr_ngff_04_is_zarr_v2(tmp_path):
    arr = make_source(tmp_path / "src.zarr", 1100, 600, 2)
    out = ex.export_array(arr, (1100, 600), tmp_path / "o.zarr", ngff="0.4")
    attrs = json.loads((out / ".zattrs").read_text())
    (ms,) = attrs["multiscales"]
    assert ms["version"] == "0.4" and [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    zarray = json.loads((out / "0" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["dimension_separator"] == "/" and zarray["shape"] == [2, 1100, 600]
    image, info = read_image(out)  # read back through the OME metadata (c first)
    assert info.mode == "LA"
    np.testing.assert_array_equal(to_uint(image, 8), arr[...])


# --------------------------------------------------------------------------- paths, atomicity, jobs


def test_format_and_path_checks(tmp_path):
    assert [ex.export_format(f"a{s}") for s in (".png", ".TIF", ".tiff", ".ome.zarr", ".dzi")] == \
        ["png", "tiff", "tiff", "zarr", "dzi"]
    assert ex.export_format("a.tif", fmt="TIF") == "tiff"
    (tmp_path / "notzarr.zarr").mkdir()
    (tmp_path / "notzarr.zarr" / "x").write_text("x")
    (tmp_path / "d_files").mkdir()
    (tmp_path / "d_files" / "notes.txt").write_text("x")
    cases = [("a.bmp", None, "unsupported output format"), ("a.png", "tiff", "needs a name ending in .tif"),
             ("a.png", "webp", "needs a name ending in .webp"), ("a.png", "gif", "unknown export format"), ("missing/a.png", None, "does not exist"),
             ("notzarr.zarr", None, "not a zarr store"), ("d.dzi", None, "not a DeepZoom tile folder")]
    for name, fmt, expected in cases:
        with pytest.raises(BadInput) as exc_info:
            check_export_path(tmp_path / name, fmt=fmt)
        assert expected in one_line(exc_info)


@pytest.mark.parametrize("name", ["o.png", "o.tif", "o.zarr", "o.dzi"])
def test_disk_full_gives_output_error_and_keeps_the_old_target(tmp_path, monkeypatch, name):
    arr = make_source(tmp_path / "src.zarr", 1024, 700, 3)
    target = tmp_path / name
    ex.export_array(arr, (600, 700), target)  # an older export that must survive
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "src.zarr" not in p.parts)
    calls = {"n": 0}
    real = base.ArraySource.bands

    def failing(self, *args, **kwargs):
        for item in real(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(28, "No space left on device")
            yield item

    monkeypatch.setattr(base.ArraySource, "bands", failing)
    with pytest.raises(OutputError) as exc_info:
        ex.export_array(arr, (1000, 700), target)
    message = one_line(exc_info)
    assert "No space left on device" in message and str(target) in message
    assert exc_info.value.exit_code == 1
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "src.zarr" not in p.parts)
    assert after == before  # no temporary left, the old export untouched


def test_replacing_an_existing_export(tmp_path):
    arr = make_source(tmp_path / "src.zarr", 300, 300, 3)
    for size in (300, 200):
        ex.export_array(arr, (size, size), tmp_path / "o.zarr")
        ex.export_array(arr, (size, size), tmp_path / "o.dzi")
    assert zarr.open_group(os.fspath(tmp_path / "o.zarr"), mode="r")["0"].shape == (3, 200, 200)
    assert read_dzi(tmp_path / "o.dzi")[1:] == (200, 200)
    assert sorted(int(p.name) for p in (tmp_path / "o_files").iterdir()) == list(range(9))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.dzi", "o.zarr", "o_files", "src.zarr"]


def test_check_output_path_ok(tmp_path):
    assert check_export_path(str(tmp_path / "a.PNG")) == (tmp_path / "a.PNG", "png")
    assert check_export_path(tmp_path / "a.tiff") == (tmp_path / "a.tiff", "tiff")
    assert list(tmp_path.iterdir()) == []  # the writability probe cleaned up


@pytest.mark.parametrize("name,expected", [
    ("out.bmp", "supported: .png, .tif, .tiff, .zarr, .dzi, .jpg, .jpeg, .webp"),
    ("out", "(no suffix)"),
    ("missing/out.png", "does not exist"),
    ("adir.png", "is a directory"),
    ("afile/out.png", "is not a directory"),
])
def test_check_output_path_errors(tmp_path, name, expected):
    (tmp_path / "adir.png").mkdir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BadInput) as exc_info:
        check_export_path(tmp_path / name)
    assert expected in assert_one_line(exc_info, tmp_path / name)


def test_check_output_path_read_only_dir(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(BadInput) as exc_info:
        check_export_path(tmp_path / "out.png")
    message = assert_one_line(exc_info, tmp_path / "out.png")
    assert "cannot write to directory" in message and "Permission denied" in message


# --------------------------------------------------------------------------- jobs (streamsr.jobs.export)


def make_job(root: Path, status: str, mode: str = "RGBA", lr=(40, 50), block=64, cursor=10, total=10):
    """An x4 job dir with an output array and the manifest of a job in `status` at task `cursor` of
    `total` (what the export reads; the model, input and settings are placeholders)."""
    from streamsr.config import JobConfig, ModelConfig
    from streamsr.jobs.manifest import Geometry, InputInfo, Manifest, ModelRef, OutputRef
    from streamsr.jobs.store import JobDir

    job_dir, channels, (lh, lw) = JobDir(root), len(mode), lr
    geo = Geometry(lh, lw, block)
    hh, hw = geo.hr_padded
    root.mkdir(parents=True)
    group = zarr.open_group(os.fspath(job_dir.store), mode="w")
    out = group.create_array("output", shape=(hh, hw, channels), chunks=(block, block, channels), dtype="uint8",
                             fill_value=0)
    out[...] = pattern(0, hh, hw, channels)
    manifest = Manifest(stage="x4", status=status, created="", geometry=geo, total_tasks=total, cursor=cursor,
                        model=ModelRef("/models/none", "0" * 64, ModelConfig(block_size=block)),
                        input=InputInfo("/data/in.png", "1" * 64, lw, lh, mode, 8), output=OutputRef(None),
                        job=JobConfig(), sigmas=(80.0, 0.0))
    job_dir.manifest.write_text(json.dumps(manifest.to_json()))
    return out


def test_export_job(tmp_path):
    from streamsr.jobs.store import JobDir

    out = make_job(tmp_path / "job", "done")
    path = export_job(tmp_path / "job", tmp_path / "o.png")
    image, info = read_image(path)
    assert (info.width, info.height, info.mode) == (200, 160, "RGBA")  # cropped x4 size, alpha kept
    np.testing.assert_array_equal(to_uint(image, 8), out[:160, :200])
    export_job(tmp_path / "job", tmp_path / "o.dzi", tile_format="png")
    assert (tmp_path / "o_files" / "8" / "0_0.png").is_file()
    make_job(tmp_path / "running", "running", cursor=3, total=10)
    with pytest.raises(BadInput) as exc_info:
        export_job(tmp_path / "running", tmp_path / "r.png")
    assert "not finished" in one_line(exc_info) and "streamsr resume" in one_line(exc_info)
    make_job(tmp_path / "exporting", "running", "L", cursor=9, total=10)  # only the export task left
    assert probe(export_job(tmp_path / "exporting", tmp_path / "e.tif")).mode == "L"
    chain = JobDir(tmp_path / "chain")
    chain.root.mkdir()
    chain.chain.write_text("{}")
    with pytest.raises(BadInput) as exc_info:  # stage 2 has not started
        export_job(chain.root, tmp_path / "c.zarr")
    assert "second stage" in one_line(exc_info) and "streamsr resume" in one_line(exc_info)
    make_job(chain.stage(2).root, "done", "RGB")
    assert probe(export_job(chain.root, tmp_path / "c.zarr")).mode == "RGB"
    with pytest.raises(BadInput):
        export_job(tmp_path / "nowhere", tmp_path / "n.png")
    assert not list(tmp_path.glob("r.*")) and not list(tmp_path.glob("n.*"))
