"""Reading inputs: `read_image` (whole) and `iter_row_bands` (top to bottom in bands, for huge inputs).

Both give float32 (rows, W, C) in [0, 1] (8-bit / 255, 16-bit / 65535). `read_image` decodes whole:
PNG and JPEG with Pillow (16-bit colour PNG with pypng), TIFF with tifffile, zarr with zarr.
`iter_row_bands` never holds the image: TIFFs strip/tile row by strip/tile row, zarr arrays chunk row
by chunk row (each decoded once, through the one `Rebander`), PNGs beyond Pillow's limit row by row
(streamsr.io.png), JPEGs beyond it with libvips (`pyvips`, sequential); smaller PNG/JPEG are decoded
whole and sliced. What a file is, and what is refused, is decided by `streamsr.io.probe`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import ImageOps

from .depth import to_float, uint_dtype
from .info import ImageInfo
from .png import png_bands, read_png16
from .probe import DECODE_ERRORS, open_pillow, open_tiff, over_pillow_limit, pillow_pixels, probe, pyvips_or_none
from .problems import bad_input, one_line, reason
from .pyramid import Rebander
from .zarr_input import open_zarr_image, zarr_decode

Bands = Iterator[tuple[int, np.ndarray]]  # (y0, float32 (rows, W, C) in [0, 1]), top to bottom


# ----------------------------------------------------------------------------- whole images


def _read_pillow(info: ImageInfo) -> np.ndarray:
    with open_pillow(info.path, info.format) as im:
        try:
            im.load()
            if im.mode == "CMYK":
                im = cmyk_to_srgb(im)
            if info.format in ("JPEG", "WEBP"):
                im = ImageOps.exif_transpose(im)
            return pillow_pixels(im, info)
        except DECODE_ERRORS as e:
            raise bad_input(info.path, f"is a corrupt or truncated {info.format}: {reason(e)}") from e


def cmyk_to_srgb(im):
    """A CMYK image in sRGB: through its embedded ICC profile when it has one (littleCMS, perceptual),
    else Pillow's plain conversion."""
    from PIL import ImageCms

    icc = im.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            out.info = dict(im.info)
            return out
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    out = im.convert("RGB")
    out.info = dict(im.info)
    return out


def _tiff_decode(path: Path, read) -> np.ndarray:
    """`read()` (a tifffile or zarr decode) with any decoder failure reported as BadInput."""
    try:
        return np.asarray(read())
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure means a broken input file
        raise bad_input(path, f"is a corrupt TIFF: {type(e).__name__}: {reason(e)}") from e


def _tiff_hwc(data: np.ndarray, page: tifffile.TiffPage, channels: int) -> np.ndarray:
    """Decoded TIFF rows as (rows, W, C); planar-separate pages come as (S, rows, W)."""
    if page.planarconfig == 2 and page.samplesperpixel > 1:
        data = np.moveaxis(data, 0, -1)  # (S, rows, W) -> (rows, W, S)
    return data.reshape(data.shape[0], data.shape[1], channels)  # (rows, W, C)


def _read_tiff(info: ImageInfo) -> np.ndarray:
    with open_tiff(info.path) as tf:
        page = tf.pages.first
        return _tiff_hwc(_tiff_decode(info.path, page.asarray), page, info.channels)


def _read_zarr(info: ImageInfo) -> np.ndarray:
    image, _ = open_zarr_image(info.path)
    return zarr_decode(info.path, lambda: image.read(0, info.height))


def _decode(info: ImageInfo) -> np.ndarray:
    if info.format == "TIFF":
        return _read_tiff(info)
    if info.format == "ZARR":
        return _read_zarr(info)
    if info.format == "PNG" and info.bit_depth == 16 and info.mode != "L":
        return read_png16(info)
    return _read_pillow(info)


def read_image(path: os.PathLike | str) -> tuple[np.ndarray, ImageInfo]:
    """The whole image as float32 (H, W, C) in [0, 1] (8-bit / 255, 16-bit / 65535) and its info."""
    info = probe(path)
    return to_float(_decode(info), info.bit_depth), info


# ----------------------------------------------------------------------------- by bands


def _tiff_row_reader(path: Path, page: tifffile.TiffPage, channels: int):
    """read(y0, y1) -> integer (rows, W, C), decoding only the strips/tiles of those rows."""
    import zarr  # imported here: only band reading of TIFFs needs it

    arr = zarr.open_array(page.aszarr(), mode="r")
    separate = page.planarconfig == 2 and page.samplesperpixel > 1
    key = (lambda y0, y1: (slice(None), slice(y0, y1))) if separate else (lambda y0, y1: slice(y0, y1))

    def read(y0: int, y1: int) -> np.ndarray:
        return _tiff_hwc(_tiff_decode(path, lambda: arr[key(y0, y1)]), page, channels)

    return read


def _cached_bands(read: Callable[[int, int], np.ndarray], step: int, info: ImageInfo, band_rows: int) -> Bands:
    """Bands from `read(y0, y1)` (integer (rows, W, C)) called on whole runs of `step` rows (strips,
    tiles or chunks), at least a band long, so that each run is decoded once; at most one run plus
    one band is held."""
    step = max(1, min(step, info.height))
    run = -(-band_rows // step) * step
    ready: list[tuple[int, np.ndarray]] = []
    bands = Rebander(band_rows, info.height, info.width, info.channels, uint_dtype(info.bit_depth),
                     lambda y0, band: ready.append((y0, to_float(band, info.bit_depth))))
    for y0 in range(0, info.height, run):
        bands(read(y0, min(info.height, y0 + run)))  # (run, W, C)
        yield from ready
        ready.clear()


def _tiff_bands(info: ImageInfo, band_rows: int) -> Bands:
    """Bands of a TIFF; each strip/tile row is decoded once and at most one is kept."""
    with open_tiff(info.path) as tf:
        page = tf.pages.first
        read = _tiff_row_reader(info.path, page, info.channels)
        yield from _cached_bands(read, int(page.chunks[0]), info, band_rows)


def _zarr_bands(info: ImageInfo, band_rows: int) -> Bands:
    """Bands of a zarr array; each chunk row is decoded once and at most one is kept."""
    image, _ = open_zarr_image(info.path)

    def read(y0: int, y1: int) -> np.ndarray:
        return zarr_decode(info.path, lambda: image.read(y0, y1))

    yield from _cached_bands(read, image.chunk_rows, info, band_rows)


def _sliced_bands(info: ImageInfo, band_rows: int) -> Bands:
    """Bands of a PNG or JPEG within Pillow's limit: decoded whole, then sliced."""
    image = _decode(info)  # integers; each band is converted to float32 on its own
    for y0 in range(0, info.height, band_rows):
        yield y0, to_float(image[y0: y0 + band_rows], info.bit_depth)


def _vips_bands(info: ImageInfo, band_rows: int) -> Bands:
    """Bands of a JPEG beyond Pillow's limit, decoded top to bottom by libvips (sequential)."""
    pyvips = pyvips_or_none()
    try:
        try:  # a truncated or corrupt JPEG must fail, not decode as grey (libvips >= 8.12)
            image = pyvips.Image.new_from_file(os.fspath(info.path), access="sequential", fail_on="error")
        except pyvips.Error:
            image = pyvips.Image.new_from_file(os.fspath(info.path), access="sequential", fail=True)
        if (image.width, image.height) != (info.width, info.height):
            raise bad_input(info.path, f"libvips reads it as {image.width}x{image.height}, not "
                                       f"{info.width}x{info.height}")
        if image.format != "uchar":
            image = image.cast("uchar")
        region = pyvips.Region.new(image)
        for y0 in range(0, info.height, band_rows):
            n = min(band_rows, info.height - y0)
            data = np.frombuffer(region.fetch(0, y0, info.width, n), np.uint8)
            pixels = data.reshape(n, info.width, image.bands)[:, :, : info.channels]  # (n, W, C)
            yield y0, to_float(pixels, 8)
    except pyvips.Error as e:
        raise bad_input(info.path, f"is a corrupt or truncated JPEG: {one_line(e)}") from e


def iter_row_bands(path: os.PathLike | str, band_rows: int) -> Bands:
    """(y0, float32 (rows, W, C) in [0, 1]) bands top to bottom; the last may be shorter.

    The header is probed now (so a bad file fails here, not at the first band). TIFFs and zarr
    arrays are decoded band by band, and so are PNGs (non-interlaced) and JPEGs (with pyvips) beyond
    Pillow's limit; smaller PNG/JPEG are decoded whole and sliced.
    """
    if band_rows < 1:
        raise ValueError(f"band_rows must be >= 1, not {band_rows}")
    info = probe(path, stream=True)
    if info.format == "TIFF":
        return _tiff_bands(info, band_rows)
    if info.format == "ZARR":
        return _zarr_bands(info, band_rows)
    if over_pillow_limit(info.width, info.height):
        return png_bands(info, band_rows) if info.format == "PNG" else _vips_bands(info, band_rows)
    return _sliced_bands(info, band_rows)

