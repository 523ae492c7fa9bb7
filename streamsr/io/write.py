"""Writing output images by rows: `open_writer` picks the streaming writer for a .png, .tif or .tiff name.

Outputs (possibly gigapixel) are never held whole: a `RowWriter` (streamsr.io.atomic) takes rows top to
bottom into `<stem>.partial<suffix>` beside the target, renamed over it once every row has arrived.
PNG: `streamsr.io.png.PngWriter`. TIFF: `TiffRowWriter` here, a tiled (256 x 256) zlib BigTIFF written
by tifffile from a tile generator that holds one row of tiles. The tifffile options (`tiff_options`)
and the cutting of a band into tiles (`band_tiles`) are shared with the pyramidal TIFF export
(streamsr.io.export.tiff).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from .atomic import RowWriter, unsupported_suffix
from .depth import max_value
from .info import MAX_PIXELS, MAX_SIDE, MODES
from .png import PngWriter
from .pyramid import Rebander

OUTPUT_SUFFIXES = (".png", ".tif", ".tiff")
STREAM_TIFF_TILE = 256  # tile side of the TIFF row writer's output
TIFF_ZLIB_LEVEL = 6  # zlib level of TIFF outputs (row writer and export)
TIFF_ZSTD_LEVEL = 1  # zstd level of TIFF exports


def tiff_options(shape: tuple[int, int], channels: int, dtype, *, tile: int, compression: str,
                 quality: int = 90, buffer_tiles: int, maxworkers: int | None = None) -> dict:
    """Keyword arguments of tifffile's TiffWriter.write for one tiled image (H, W) of `channels`
    channels: compression "zlib", "zstd" (both with the horizontal predictor), "jpeg" (`quality`) or
    "none"; `buffer_tiles` tiles gathered before they are encoded; extra alpha is unassociated."""
    alpha = channels in (2, 4)
    opts = dict(
        shape=shape + ((channels,) if channels > 1 else ()), dtype=dtype, tile=(tile, tile),
        photometric="rgb" if channels >= 3 else "minisblack",
        planarconfig="contig" if channels > 1 else None,
        extrasamples=("unassalpha",) if alpha else None, metadata=None,
        buffersize=buffer_tiles * tile * tile * channels * np.dtype(dtype).itemsize,
    )
    if maxworkers is not None:
        opts.update(maxworkers=maxworkers)
    if compression == "jpeg":
        opts.update(compression="jpeg", compressionargs={"level": quality})
    elif compression == "zstd":
        opts.update(compression="zstd", compressionargs={"level": TIFF_ZSTD_LEVEL}, predictor=True)
    elif compression == "zlib":
        opts.update(compression="zlib", compressionargs={"level": TIFF_ZLIB_LEVEL}, predictor=True)
    return opts


def band_tiles(band: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """The tiles of a band (rows, W, C), left to right, as copies ((rows, tile) for one channel);
    tifffile pads the edge tiles. Copies: tifffile may hold a few tiles before it encodes them, and
    bands come from reused buffers."""
    band = band[:, :, 0] if band.shape[2] == 1 else band  # (rows, W) or (rows, W, C)
    for x0 in range(0, band.shape[1], tile):
        yield band[:, x0: x0 + tile].copy()


class _Cancelled(Exception):
    """Raised inside the tile generator to stop tifffile when the writer is aborted."""


class TiffRowWriter(RowWriter):
    """Tiled BigTIFF (zlib, or raw with compress=False): rows gather into one tile row, which a
    tifffile thread consumes.

    tifffile pulls tiles from a generator, so it runs in a worker thread; each complete tile row is
    handed over and `write_rows` waits until tifffile has taken all of its tiles, so one tile row
    (plus the tiles being compressed) is all that is ever held.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._inbox: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._bands = Rebander(STREAM_TIFF_TILE, self.height, self.width, self.channels, self.dtype,
                               lambda y0, band: self._handoff(band))
        self._thread = threading.Thread(target=self._run, name="streamsr-tiff-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        options = tiff_options((self.height, self.width), self.channels, self.dtype, tile=STREAM_TIFF_TILE,
                               compression="zlib" if self.compress else "none",
                               buffer_tiles=-(-self.width // STREAM_TIFF_TILE))
        try:
            with tifffile.TiffWriter(self._file, bigtiff=True) as tw:
                tw.write(self._tiles(), **options)
        except BaseException as e:  # noqa: BLE001 - handed to the producer thread
            self._error = e

    def _tiles(self) -> Iterator[np.ndarray]:
        for _ in range(self._bands.count):
            band = self._inbox.get()
            try:
                if band is None:
                    raise _Cancelled
                yield from band_tiles(band, STREAM_TIFF_TILE)
            finally:
                self._inbox.task_done()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._thread.is_alive():
            raise OSError("the TIFF writer thread stopped early")

    def _handoff(self, band: np.ndarray) -> None:
        """Give one tile row (rows, W, C) to the tifffile thread; return once it has taken every tile."""
        self._raise_failure()
        self._inbox.put(band)  # empty: the previous band was taken before the last handoff returned
        with self._inbox.all_tasks_done:
            while self._inbox.unfinished_tasks and self._thread.is_alive():
                self._inbox.all_tasks_done.wait(0.05)
        if self._error is not None:
            raise self._error
        # (the last band is never marked done: tifffile stops pulling, the thread simply ends)

    def _write(self, rows: np.ndarray) -> None:
        self._bands(rows)

    def _finish(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _cancel(self) -> None:
        while self._thread.is_alive():
            try:
                self._inbox.put(None, timeout=0.05)
                break
            except queue.Full:
                continue
        self._thread.join()


def open_writer(path: os.PathLike | str, width: int, height: int, channels: int, bit_depth: int, *,
                compress: bool = True, chunks: list[tuple[bytes, bytes]] = ()) -> RowWriter:
    """A RowWriter for `path`, chosen by suffix (.png, .tif, .tiff); compress=False stores raw; `chunks`:
    PNG chunks (type, data) written before the pixels (metadata: iCCP, pHYs, eXIf)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise unsupported_suffix(path, OUTPUT_SUFFIXES)
    if channels not in MODES:
        raise ValueError(f"channels must be 1-4, not {channels!r}")
    max_value(bit_depth)
    if not (0 < width < MAX_SIDE and 0 < height < MAX_SIDE and width * height <= MAX_PIXELS):
        raise ValueError(f"bad output size {width}x{height}")
    if suffix == ".png":
        return PngWriter(path, width, height, channels, bit_depth, compress=compress, chunks=chunks)
    return TiffRowWriter(path, width, height, channels, bit_depth, compress=compress)
