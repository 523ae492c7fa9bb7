"""What every export format shares: the source (`ArraySource`, an (H_pad, W_pad, C) array read in bands
and cropped to (H, W)), the options (`ExportOptions`), progress reports, and band writes into chunked
zarr arrays (`write_band`), all bounded in memory whatever the image size."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..depth import convert_depth, depth_of
from ..metadata import ImageMeta
from ...errors import StreamsrError
from ..problems import bad_input, reason

MAX_SOURCE_BAND_BYTES = 64 << 20  # a source band is whole chunk rows, split if one is larger than this
SOURCE_PIECE_BYTES = 1 << 20  # bytes read from the source array per call (whole chunk columns)
ZARR_WRITE_BYTES = 1 << 20  # bytes written per zarr call, whole chunk columns (bounds zarr's buffers)
ZARR_CONCURRENCY = 4  # zarr's async.concurrency while exporting (fewer chunk buffers in flight)

Progress = Callable[[int, int], None]  # (rows of level 0 done, total rows)


@dataclass(frozen=True)
class ExportOptions:
    """Format options of an export; each format reads its own and ignores the others."""

    compression: str | None = None  # TIFF: "auto", "zstd", "zlib", "jpeg", "none"
    quality: int = 90  # JPEG quality (TIFF jpeg, DZI jpg tiles)
    tile_format: str | None = None  # DZI: "jpg" or "png" (default jpg, png with alpha)
    ngff: str = "0.5"  # OME-Zarr: "0.5" (zarr v3) or "0.4" (zarr v2)
    workers: int = 1  # DZI tile-encoding threads
    meta: ImageMeta | None = None  # ICC profile, EXIF, DPI to carry (PNG, TIFF, JPEG, WebP)


def report(progress: Progress | None, done: int, total: int) -> None:
    """Call `progress(done, total)` if there is one."""
    if progress is not None:
        progress(done, total)


class ArraySource:
    """The cropped (H, W) part of an (H_pad, W_pad, C) uint8|uint16 array, read in bands of whole chunk
    rows (any array-like with `.shape`, `.dtype` and numpy slicing; `.chunks` when it has them)."""

    def __init__(self, arr, hr_size: tuple[int, int], *, bit_depth: int | None = None,
                 band_rows: int | None = None, name: str | None = None):
        shape = tuple(int(n) for n in arr.shape)
        if len(shape) == 2:
            shape = shape + (1,)
        if len(shape) != 3 or not 1 <= shape[2] <= 4:
            raise ValueError(f"the output array must be (H, W, C) with 1-4 channels, not {arr.shape}")
        dtype = np.dtype(arr.dtype)
        if dtype not in (np.uint8, np.uint16):
            raise ValueError(f"the output array must be uint8 or uint16, not {dtype}")
        self.height, self.width = (int(n) for n in hr_size)
        if not (0 < self.height <= shape[0] and 0 < self.width <= shape[1]):
            raise ValueError(f"hr_size {hr_size} does not fit the array {arr.shape}")
        self.arr, self.channels, self.arr_dtype = arr, shape[2], dtype
        self.bit_depth = bit_depth or depth_of(dtype)
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, not {bit_depth!r}")
        self.dtype = np.dtype(np.uint8 if self.bit_depth == 8 else np.uint16)
        self.name = name or str(getattr(arr, "store_path", None) or "the output array")
        chunks = getattr(arr, "chunks", None)
        rows = band_rows or (int(chunks[0]) if chunks else 256)
        row_bytes = self.width * self.channels * dtype.itemsize
        if band_rows is None and rows * row_bytes > MAX_SOURCE_BAND_BYTES:
            rows = max(1, MAX_SOURCE_BAND_BYTES // row_bytes)
        self.band_rows = max(1, rows)

    def _piece_cols(self) -> int:
        """Columns read per array call: whole chunk columns, about SOURCE_PIECE_BYTES per call."""
        chunks = getattr(self.arr, "chunks", None)
        chunk_cols = int(chunks[1]) if chunks and len(chunks) > 1 else 256
        per_col = self.band_rows * self.channels * self.arr_dtype.itemsize
        return max(1, SOURCE_PIECE_BYTES // (per_col * chunk_cols)) * chunk_cols

    def bands(self, bit_depth: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(y0, (rows, W, C)) in the source's bit depth, or `bit_depth` if given.

        Each band is a view of one buffer that the next band overwrites: copy what you keep. It is
        filled by column pieces of whole chunks, so that the array library's own buffers stay small.
        """
        depth = bit_depth or self.bit_depth
        buffer = np.empty((min(self.band_rows, self.height), self.width, self.channels), self.arr_dtype)
        step = self._piece_cols()
        for y0 in range(0, self.height, self.band_rows):
            y1 = min(self.height, y0 + self.band_rows)
            band = buffer[: y1 - y0]  # (rows, W, C)
            for x0 in range(0, self.width, step):
                x1 = min(self.width, x0 + step)
                try:
                    piece = np.asarray(self.arr[y0:y1, x0:x1])
                except (MemoryError, OSError, StreamsrError):  # a disk error; DamagedData names the block
                    raise
                except Exception as e:  # noqa: BLE001 - a missing or corrupt chunk of the store
                    raise bad_input(self.name, f"cannot read rows {y0}-{y1}: {type(e).__name__}: "
                                               f"{reason(e)}") from e
                band[:, x0:x1] = piece.reshape(y1 - y0, x1 - x0, self.channels)
                del piece
            yield y0, convert_depth(band, depth)


def write_band(arr, y0: int, band: np.ndarray, *, channels_first: bool) -> None:
    """arr[y0:y0+rows] = band ((rows, w, C)), by pieces of whole chunk columns of about
    ZARR_WRITE_BYTES, so that zarr's encode buffers stay small whatever the width. channels_first:
    `arr` is (C, H, W)."""
    chunk_cols = int(arr.chunks[2 if channels_first else 1])
    per_col = band.shape[0] * band.shape[2] * band.dtype.itemsize
    step = max(1, ZARR_WRITE_BYTES // (per_col * chunk_cols)) * chunk_cols
    rows = slice(y0, y0 + band.shape[0])
    for x0 in range(0, band.shape[1], step):
        piece = band[:, x0: x0 + step]  # (rows, step, C)
        if channels_first:
            arr[:, rows, x0: x0 + piece.shape[1]] = np.moveaxis(piece, -1, 0)  # (C, rows, step)
        else:
            arr[rows, x0: x0 + piece.shape[1]] = piece


@contextlib.contextmanager
def zarr_limits():
    """Fewer zarr chunk operations in flight while exporting (peak memory; no loss on few cores)."""
    import zarr  # noqa: PLC0415

    with zarr.config.set({"async.concurrency": ZARR_CONCURRENCY}):
        yield


def pillow_save(src: ArraySource, path, options: ExportOptions, progress: Progress | None, *, fmt: str,
                max_side: int, alpha: bool, **save_args) -> None:
    """Write `src` as an 8-bit `fmt` ("JPEG", "WEBP") through Pillow: the image is gathered whole (these
    formats have no streaming encoder), so its side must be <= max_side; alpha dropped unless `alpha`."""
    from PIL import Image  # noqa: PLC0415

    from ..atomic import commit_file, open_temp, partial_path  # noqa: PLC0415

    if max(src.width, src.height) > max_side:
        raise bad_input(path, f"{fmt} holds at most {max_side} px a side, the output is {src.width}x{src.height}; "
                              "write .png or .tif (then `streamsr export JOB -o ...` from a kept job)")
    pixels = np.empty((src.height, src.width, src.channels), np.uint8)
    for y0, band in src.bands(8):
        pixels[y0: y0 + len(band)] = band
        report(progress, y0 + len(band), src.height)
    keep = src.channels if alpha or src.channels in (1, 3) else src.channels - 1
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[keep]
    image = Image.fromarray(np.ascontiguousarray(pixels[:, :, :keep]) if keep != src.channels else pixels, mode)
    if fmt == "WEBP" and mode in ("L", "LA"):
        image = image.convert("RGBA" if mode == "LA" else "RGB")
    meta = options.meta.pillow_args() if options.meta else {}
    tmp = partial_path(path)
    with open_temp(tmp) as fh:
        image.save(fh, format=fmt, quality=options.quality, **meta, **save_args)
        commit_file(fh, tmp, path)
