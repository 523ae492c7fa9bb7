"""Export a job's output array to PNG, pyramidal TIFF, OME-Zarr or DeepZoom, streaming.

The source is a job's `output` array: zarr (H_pad, W_pad, C) uint8|uint16 chunked one block per
chunk (any array-like with `.shape`, `.dtype` and numpy slicing works). It is read top to bottom in
bands (one chunk row for png/dzi, 512 rows for tiff/zarr), each band filled into one reused buffer
by column pieces of whole chunks (about 1 MiB per read), and cropped to the unpadded (H, W); it is
never read whole.

Formats, chosen by name or by the path's suffix:

    png   .png          rows into the existing `RowWriter` (pypng chunks, Paeth, zlib)
    tiff  .tif .tiff    tiled (512 x 512) BigTIFF, full resolution plus 2x-reduced SubIFDs until the
                        longest side is below 512; compression "zstd" (default when imagecodecs is
                        installed, lossless), "zlib" (the default without it), "jpeg" (8-bit grey/RGB
                        only, lossy, `quality`) or "none"
    zarr  .zarr         OME-Zarr (NGFF 0.5: a zarr v3 group, "ome" attributes; or ngff="0.4": a zarr
                        v2 group, "multiscales" attributes): arrays "0", "1", ... of shape (C, h, w),
                        each level 2x reduced, down to a longest side below 512, chunks (C, 512, 512)
    dzi   .dzi          DeepZoom: `name.dzi` XML and `name_files/<level>/<col>_<row>.<jpg|png>`, tiles
                        of 254 px with 1 px overlap, every level down to 1 x 1; 8-bit only (16-bit
                        sources are rounded to 8 bits); JPEG tiles unless there is alpha (then PNG)

Pyramids are built by a cascade: each band of level k, as it arrives, is box-reduced 2x2 (round
half up, the last odd row/column averaged with itself) into level k + 1, so each level holds at most
one band (512 rows for zarr, 256 for DZI, 128 for a TIFF's sub-levels) besides the sink that writes
it. Memory is therefore O(width x a few hundred rows) whatever the height, and nothing is
proportional to the image area (about 80-100 MiB peak RSS at 9500 px wide, see
tools/bench_export.py). A TIFF's sub-levels must follow level 0 in the file: they are kept in a
temporary zstd zarr beside the output while level 0 is written, then copied in (a third of the
level-0 pixels, compressed; removed at the end).

Every writer writes to a temporary name beside the target (`out.partial.tif`, `out.partial.zarr`,
`out.partial.dzi` + `out.partial_files`) and renames it at the end; an existing target is replaced
only then. OSError while writing raises `OutputError` (one line, exit 1); bad arguments, paths and
unfinished jobs raise `BadInput` (one line, exit 2).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import BadInput
from .imageio import (OutputError, _fsync_dir, check_writable_dir, _one_line, _output_error, _reason, open_writer,
                      partial_path)

FORMATS = ("png", "tiff", "zarr", "dzi")
SUFFIXES = {"png": (".png",), "tiff": (".tif", ".tiff"), "zarr": (".zarr",), "dzi": (".dzi",)}
TIFF_COMPRESSIONS = ("auto", "zstd", "zlib", "jpeg", "none")
TILE = 512  # TIFF tile and zarr chunk side
SCRATCH_ROWS = 128  # rows per chunk of a TIFF's temporary sub-levels (and per band written there)
TIFF_BUFFER_TILES = 4  # tiles tifffile gathers before compressing and writing them
ZARR_WRITE_BYTES = 1 << 20  # bytes written per zarr call, whole chunk columns (bounds zarr's buffers)
ZARR_CONCURRENCY = 4  # zarr's async.concurrency while exporting (fewer chunk buffers in flight)
REDUCE_ROWS = 64  # rows reduced per call (bounds the reduction's temporaries)
MIN_LEVEL_SIDE = 512  # TIFF and zarr pyramids stop at the first level whose longest side is below it
DZI_TILE = 254
DZI_OVERLAP = 1
NGFF_VERSIONS = ("0.5", "0.4")
MAX_SOURCE_BAND_BYTES = 64 << 20  # a source band is whole chunk rows, split if one is larger than this
SOURCE_PIECE_BYTES = 1 << 20  # bytes read from the source array per call (whole chunk columns)

Progress = Callable[[int, int], None]  # (rows of level 0 done, total rows)


# ----------------------------------------------------------------------------- paths and options


def _bad(path, problem: str) -> BadInput:
    return BadInput(_one_line(f"{path}: {problem}"))


def export_format(path: os.PathLike | str, fmt: str | None = None) -> str:
    """The format for `path`: `fmt` if given (the suffix must then match it), else from the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if fmt is not None:
        fmt = fmt.lower()
        if fmt == "tif":
            fmt = "tiff"
        if fmt not in FORMATS:
            raise BadInput(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}")
        if suffix not in SUFFIXES[fmt]:
            raise _bad(path, f"a {fmt} export needs a name ending in {' or '.join(SUFFIXES[fmt])}")
        return fmt
    for name, suffixes in SUFFIXES.items():
        if suffix in suffixes:
            return name
    shown = f"'{path.suffix}'" if path.suffix else "(no suffix)"
    known = ", ".join(s for suffixes in SUFFIXES.values() for s in suffixes)
    raise _bad(path, f"unsupported output format {shown}; supported: {known}")


def dzi_files_dir(path: os.PathLike | str) -> Path:
    """The tile folder of a DeepZoom image: out.dzi -> out_files."""
    path = Path(path)
    return path.with_name(f"{path.stem}_files")


def _looks_like_zarr(path: Path) -> bool:
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray", ".zattrs"))


def _looks_like_dzi_tiles(path: Path) -> bool:
    try:
        return all(p.is_dir() and p.name.isdigit() for p in path.iterdir())
    except OSError:
        return False


def check_export_path(path: os.PathLike | str, fmt: str | None = None) -> tuple[Path, str]:
    """Fail early (BadInput) unless `path` can receive an export; returns (path, format).

    An existing target is replaced at the end of a successful export, but only if it is of the same
    kind: a file for png/tiff, a zarr store for zarr, a DZI (file and tile folder) for dzi.
    """
    path = Path(path)
    fmt = export_format(path, fmt)
    parent = path.parent
    if not parent.exists():
        raise _bad(path, f"output directory {parent} does not exist")
    if not parent.is_dir():
        raise _bad(path, f"{parent} is not a directory")
    if fmt == "zarr":
        if path.exists() and not (path.is_dir() and _looks_like_zarr(path)):
            raise _bad(path, "exists and is not a zarr store; remove it or choose another name")
    elif path.is_dir():
        raise _bad(path, f"is a directory; give a file name such as {path / ('out' + SUFFIXES[fmt][0])}")
    if fmt == "dzi":
        tiles = dzi_files_dir(path)
        if tiles.exists() and not (tiles.is_dir() and _looks_like_dzi_tiles(tiles)):
            raise _bad(path, f"{tiles} exists and is not a DeepZoom tile folder; remove it or choose another name")
    check_writable_dir(path, parent)
    return path, fmt


def _tiff_compression(compression: str | None, channels: int, bit_depth: int) -> str:
    compression = (compression or "auto").lower()
    if compression not in TIFF_COMPRESSIONS:
        raise BadInput(f"unknown TIFF compression {compression!r}; supported: {', '.join(TIFF_COMPRESSIONS)}")
    have_codecs = _imagecodecs_has("ZSTD")
    if compression == "auto":
        return "zstd" if have_codecs else "zlib"
    if compression == "zstd" and not have_codecs:
        raise BadInput("TIFF zstd compression needs the 'imagecodecs' package (pip install imagecodecs); "
                       "use --compression zlib")
    if compression == "jpeg":
        if not _imagecodecs_has("JPEG8"):
            raise BadInput("TIFF JPEG compression needs the 'imagecodecs' package (pip install imagecodecs); "
                           "use --compression zlib")
        if bit_depth != 8 or channels not in (1, 3):
            raise BadInput(f"TIFF JPEG compression needs 8-bit grey or RGB without alpha, not {channels} "
                           f"channel(s) of {bit_depth} bits; use zstd or zlib")
    return compression


def _imagecodecs_has(codec: str) -> bool:
    try:
        import imagecodecs  # noqa: PLC0415 - optional
    except ImportError:
        return False
    return bool(getattr(getattr(imagecodecs, codec, None), "available", False))


# ----------------------------------------------------------------------------- pixels


def _convert_depth(band: np.ndarray, bit_depth: int) -> np.ndarray:
    """uint8 <-> uint16 by value scaling (x 257, or / 257 rounded); same depth: unchanged."""
    if bit_depth == 8 and band.dtype == np.uint16:
        return ((band.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if bit_depth == 16 and band.dtype == np.uint8:
        return band.astype(np.uint16) * np.uint16(257)
    return band


def reduce2(rows: np.ndarray) -> np.ndarray:
    """2x2 box reduction of (h, w, C) uint8|uint16, h even: (h/2, ceil(w/2), C), round half up; an
    odd last column is averaged with itself (the same as replicating it)."""
    h, w, c = rows.shape
    if h == 0:
        return rows[:, : (w + 1) // 2]
    if rows.dtype == np.uint8 and c in (1, 3):  # Pillow's C reduce: same arithmetic, faster
        from PIL import Image  # noqa: PLC0415

        image = Image.fromarray(rows[:, :, 0] if c == 1 else rows)
        return np.asarray(image.reduce(2)).reshape(h // 2, (w + 1) // 2, c)
    wide = np.uint16 if rows.dtype == np.uint8 else np.uint32
    pairs = np.add(rows[0::2], rows[1::2], dtype=wide)  # (h/2, w, C)
    if w % 2:
        pairs = np.concatenate([pairs, pairs[:, -1:]], axis=1)
    pairs = pairs.reshape(h // 2, (w + 1) // 2, 2, c)
    total = np.add(pairs[:, :, 0], pairs[:, :, 1])
    total += 2
    total >>= 2
    return total.astype(rows.dtype)


def level_sizes(height: int, width: int, stop: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    """[(h, w)] of level 0 and each 2x reduction (ceil) until stop(h, w) is true for the last one."""
    sizes = [(height, width)]
    while not stop(*sizes[-1]) and sizes[-1] != (1, 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def pyramid_sizes(height: int, width: int, min_side: int = MIN_LEVEL_SIDE) -> list[tuple[int, int]]:
    """TIFF/zarr levels: down to the first one whose longest side is below `min_side`."""
    return level_sizes(height, width, lambda h, w: max(h, w) < min_side)


def dzi_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """DeepZoom levels, full size first, down to 1 x 1 (ceil(log2(max side)) + 1 of them)."""
    return level_sizes(height, width, lambda h, w: h == 1 and w == 1)


class Cascade:
    """Rows of level 0 in, top to bottom; each level's rows go to its sink as they arrive, and are
    reduced 2x into the next level (one odd row is held back per level until its pair comes)."""

    def __init__(self, sinks: list[Callable[[np.ndarray], None]]):
        self.sinks = sinks
        self._odd: list[np.ndarray | None] = [None] * len(sinks)

    def push(self, rows: np.ndarray, level: int = 0) -> None:
        if not len(rows):
            return
        self.sinks[level](rows)
        if level + 1 == len(self.sinks):
            return
        if self._odd[level] is not None:
            rows = np.concatenate([self._odd[level], rows])
            self._odd[level] = None
        even = len(rows) - len(rows) % 2
        if even < len(rows):
            self._odd[level] = rows[even:].copy()
        for y in range(0, even, REDUCE_ROWS):
            self.push(reduce2(rows[y: min(even, y + REDUCE_ROWS)]), level + 1)

    def finish(self) -> None:
        """The last odd row of each level is reduced with itself into the next level."""
        for level in range(len(self.sinks) - 1):
            odd, self._odd[level] = self._odd[level], None
            if odd is not None:
                self.push(reduce2(np.concatenate([odd, odd])), level + 1)


class Rebander:
    """Collects rows into bands of exactly `rows` rows (the last may be shorter) for `emit(y0, band)`.
    `emit` gets a view into a reused buffer: it must copy what it keeps."""

    def __init__(self, rows: int, height: int, width: int, channels: int, dtype, emit):
        self.rows, self.height, self.emit = rows, height, emit
        self.buffer = np.empty((min(rows, height), width, channels), dtype)
        self.y0 = self.fill = 0

    def __call__(self, rows: np.ndarray) -> None:
        i = 0
        while i < len(rows):
            size = min(self.rows, self.height - self.y0)
            k = min(len(rows) - i, size - self.fill)
            if k <= 0:
                raise ValueError(f"more rows than the height {self.height}")
            self.buffer[self.fill: self.fill + k] = rows[i: i + k]
            self.fill += k
            i += k
            if self.fill == size:
                self.emit(self.y0, self.buffer[:size])
                self.y0 += size
                self.fill = 0

    @property
    def complete(self) -> bool:
        return self.y0 == self.height


# ----------------------------------------------------------------------------- the source


class Source:
    """The cropped (H, W) part of an (H_pad, W_pad, C) array, read in bands of whole chunk rows."""

    def __init__(self, arr, hr_size: tuple[int, int], bit_depth: int | None = None,
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
        self.bit_depth = bit_depth or (8 if dtype == np.uint8 else 16)
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
            band = buffer[: y1 - y0]
            for x0 in range(0, self.width, step):
                x1 = min(self.width, x0 + step)
                try:
                    piece = np.asarray(self.arr[y0:y1, x0:x1])
                except MemoryError:
                    raise
                except Exception as e:  # noqa: BLE001 - a missing or corrupt chunk of the store
                    raise BadInput(_one_line(f"{self.name}: cannot read rows {y0}-{y1}: "
                                             f"{type(e).__name__}: {_reason(e)}")) from e
                band[:, x0:x1] = piece.reshape(y1 - y0, x1 - x0, self.channels)
                del piece
            yield y0, _convert_depth(band, depth)


# ----------------------------------------------------------------------------- atomic targets


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _replace_dir(tmp: Path, target: Path) -> None:
    """Rename the finished folder `tmp` onto `target`; an old `target` is removed only afterwards."""
    old = None
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        _remove(old)
        os.replace(target, old)
    elif target.exists() or target.is_symlink():
        target.unlink()
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def _output_guard(path: Path, temps: list[Path]):
    """Remove the temporaries on any failure; OSError becomes OutputError (one line)."""
    try:
        yield
    except OSError as e:
        for tmp in temps:
            _remove(tmp)
        raise _output_error(path, e) from e
    except BaseException:
        for tmp in temps:
            _remove(tmp)
        raise


@contextlib.contextmanager
def _zarr_limits():
    """Fewer zarr chunk operations in flight while exporting (peak memory; no loss on few cores)."""
    import zarr  # noqa: PLC0415

    with zarr.config.set({"async.concurrency": ZARR_CONCURRENCY}):
        yield


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


# ----------------------------------------------------------------------------- PNG


def _export_png(src: Source, path: Path, progress: Progress | None, **_) -> None:
    with open_writer(path, src.width, src.height, src.channels, src.bit_depth) as writer:
        for y0, band in src.bands():
            writer.write_rows(band)
            _report(progress, y0 + len(band), src.height)


# ----------------------------------------------------------------------------- TIFF


def _write_band(arr, y0: int, band: np.ndarray, channels_first: bool) -> None:
    """arr[y0:y0+rows] = band ((rows, w, C)), by pieces of whole chunk columns of about
    ZARR_WRITE_BYTES, so that zarr's encode buffers stay small whatever the width."""
    chunk_cols = int(arr.chunks[2 if channels_first else 1])
    per_col = band.shape[0] * band.shape[2] * band.dtype.itemsize
    step = max(1, ZARR_WRITE_BYTES // (per_col * chunk_cols)) * chunk_cols
    rows = slice(y0, y0 + band.shape[0])
    for x0 in range(0, band.shape[1], step):
        piece = band[:, x0: x0 + step]
        if channels_first:
            arr[:, rows, x0: x0 + piece.shape[1]] = np.moveaxis(piece, -1, 0)
        else:
            arr[rows, x0: x0 + piece.shape[1]] = piece


def _tiff_options(shape: tuple[int, int], channels: int, dtype, compression: str, quality: int) -> dict:
    alpha = channels in (2, 4)
    opts = dict(
        shape=shape + ((channels,) if channels > 1 else ()), dtype=dtype, tile=(TILE, TILE),
        photometric="rgb" if channels >= 3 else "minisblack",
        planarconfig="contig" if channels > 1 else None,
        extrasamples=("unassalpha",) if alpha else None, metadata=None, maxworkers=1,
        buffersize=TIFF_BUFFER_TILES * TILE * TILE * channels * np.dtype(dtype).itemsize,
    )
    if compression == "jpeg":
        opts.update(compression="jpeg", compressionargs={"level": quality})
    elif compression == "zstd":
        opts.update(compression="zstd", compressionargs={"level": 1}, predictor=True)
    elif compression == "zlib":
        opts.update(compression="zlib", compressionargs={"level": 6}, predictor=True)
    return opts


def _tiles_of(band: np.ndarray) -> Iterator[np.ndarray]:
    """Copies (tifffile may hold a few tiles before it encodes them; the band is reused)."""
    band = band[:, :, 0] if band.shape[2] == 1 else band
    for x0 in range(0, band.shape[1], TILE):
        yield np.ascontiguousarray(band[:, x0: x0 + TILE])  # tifffile pads edge tiles


def _export_tiff(src: Source, path: Path, progress: Progress | None, compression: str | None = None,
                 quality: int = 90, **_) -> None:
    import tifffile  # noqa: PLC0415
    import zarr  # noqa: PLC0415

    compression = _tiff_compression(compression, src.channels, src.bit_depth)
    sizes = pyramid_sizes(src.height, src.width)
    tmp = partial_path(path)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.stem}.levels-", dir=path.parent))
    try:
        levels = []  # sub-levels wait here, compressed, while level 0 is written
        for k, (h, w) in enumerate(sizes[1:], start=1):
            levels.append(zarr.create_array(
                store=os.fspath(scratch / str(k)), shape=(h, w, src.channels),
                chunks=(SCRATCH_ROWS, TILE, src.channels), dtype=src.dtype, fill_value=0,
                compressors=zarr.codecs.ZstdCodec(level=1), zarr_format=3))

        def store(level):
            def emit(y0: int, band: np.ndarray) -> None:
                _write_band(level, y0, band, channels_first=False)
            return emit

        sub = [Rebander(SCRATCH_ROWS, h, w, src.channels, src.dtype, store(level))
               for (h, w), level in zip(sizes[1:], levels)]
        cascade = Cascade([lambda rows: None, *sub])

        def tiles0() -> Iterator[np.ndarray]:
            """Level 0: each source band is one row of tiles (src.band_rows == TILE). Everything
            is done before the band's tiles are handed over: tifffile stops pulling after the
            last tile, so code after the final yield would never run."""
            for y0, band in src.bands():
                cascade.push(band)
                _report(progress, y0 + len(band), src.height)
                yield from _tiles_of(band)

        def tiles(level) -> Iterator[np.ndarray]:
            h, w, c = level.shape
            for y0 in range(0, h, TILE):
                for x0 in range(0, w, TILE):
                    tile = np.asarray(level[y0: y0 + TILE, x0: x0 + TILE])
                    yield tile[:, :, 0] if c == 1 else tile

        with open(tmp, "wb") as fh:
            with tifffile.TiffWriter(fh, bigtiff=True) as tw:
                tw.write(tiles0(), subifds=len(levels),
                         **_tiff_options(sizes[0], src.channels, src.dtype, compression, quality))
                cascade.finish()
                if not all(r.complete for r in sub):
                    raise RuntimeError("the pyramid cascade did not fill every level")
                for level, size in zip(levels, sizes[1:]):
                    tw.write(tiles(level), subfiletype=1,
                             **_tiff_options(size, src.channels, src.dtype, compression, quality))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ----------------------------------------------------------------------------- OME-Zarr


def ome_multiscales(sizes: list[tuple[int, int]], name: str, version: str = "0.5") -> dict:
    """The OME-NGFF `multiscales` entry for arrays "0".."n" of axes (c, y, x), each 2x reduced."""
    entry = {
        "name": name,
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
                 {"name": "x", "type": "space"}],
        "datasets": [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, float(2 ** k), float(2 ** k)]}]} for k in range(len(sizes))],
        "type": "box (2x2 mean)",
        "metadata": {"description": "2x2 box reduction of the level above, round half up",
                     "method": "streamsr.export.reduce2"},
    }
    if version == "0.4":
        entry = {"version": "0.4", **entry}
    return entry


def _omero(channels: int, bit_depth: int) -> dict:
    top = 255 if bit_depth == 8 else 65535
    colors = {1: ["FFFFFF"], 2: ["FFFFFF", "FFFFFF"], 3: ["FF0000", "00FF00", "0000FF"],
              4: ["FF0000", "00FF00", "0000FF", "FFFFFF"]}[channels]
    labels = {1: ["gray"], 2: ["gray", "alpha"], 3: ["red", "green", "blue"],
              4: ["red", "green", "blue", "alpha"]}[channels]
    return {"rdefs": {"model": "color" if channels >= 3 else "greyscale"},
            "channels": [{"label": label, "color": color, "active": label != "alpha",
                          "window": {"min": 0, "max": top, "start": 0, "end": top}}
                         for label, color in zip(labels, colors)]}


def _export_zarr(src: Source, path: Path, progress: Progress | None, ngff: str = "0.5", **_) -> None:
    import zarr  # noqa: PLC0415

    if ngff not in NGFF_VERSIONS:
        raise BadInput(f"unknown OME-NGFF version {ngff!r}; supported: {', '.join(NGFF_VERSIONS)}")
    sizes = pyramid_sizes(src.height, src.width)
    tmp = partial_path(path)
    _remove(tmp)
    name = path.name[: -len(".zarr")] if path.name.lower().endswith(".zarr") else path.stem
    name = name[: -len(".ome")] if name.lower().endswith(".ome") else name
    multiscales = ome_multiscales(sizes, name, ngff)
    if ngff == "0.5":
        group = zarr.open_group(os.fspath(tmp), mode="w", zarr_format=3)
        options = dict(compressors=zarr.codecs.ZstdCodec(level=1), dimension_names=("c", "y", "x"))
        group.attrs.update({"ome": {"version": "0.5", "multiscales": [multiscales],
                                    "omero": _omero(src.channels, src.bit_depth)}})
    else:
        from numcodecs import Zstd  # noqa: PLC0415

        group = zarr.open_group(os.fspath(tmp), mode="w", zarr_format=2)
        options = dict(compressors=Zstd(level=1), chunk_key_encoding={"name": "v2", "separator": "/"})
        group.attrs.update({"multiscales": [multiscales], "omero": _omero(src.channels, src.bit_depth)})
    arrays = [group.create_array(str(k), shape=(src.channels, h, w), chunks=(src.channels, TILE, TILE),
                                 dtype=src.dtype, fill_value=0, **options) for k, (h, w) in enumerate(sizes)]

    def store(arr):
        def emit(y0: int, band: np.ndarray) -> None:
            _write_band(arr, y0, band, channels_first=True)
        return emit

    sinks = [Rebander(TILE, h, w, src.channels, src.dtype, store(arr))
             for (h, w), arr in zip(sizes[1:], arrays[1:])]
    level0 = store(arrays[0])  # each source band is one row of chunks (src.band_rows == TILE)

    def write0(rows: np.ndarray) -> None:
        level0(write0.y, rows)
        write0.y += len(rows)

    write0.y = 0
    cascade = Cascade([write0, *sinks])
    for y0, band in src.bands():
        cascade.push(band)
        _report(progress, y0 + len(band), src.height)
    cascade.finish()
    if write0.y != src.height or not all(s.complete for s in sinks):
        raise RuntimeError("the pyramid cascade did not fill every level")
    _replace_dir(tmp, path)


# ----------------------------------------------------------------------------- DeepZoom


def dzi_xml(width: int, height: int, tile_format: str, tile_size: int = DZI_TILE, overlap: int = DZI_OVERLAP) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{tile_format}" '
            f'Overlap="{overlap}" TileSize="{tile_size}">\n'
            f'  <Size Width="{width}" Height="{height}"/>\n'
            '</Image>\n')


def dzi_tile_counts(height: int, width: int, tile_size: int = DZI_TILE) -> list[tuple[int, int]]:
    """(columns, rows) of tiles per DeepZoom level, level 0 (1 x 1) first."""
    return [(-(-w // tile_size), -(-h // tile_size)) for h, w in reversed(dzi_sizes(height, width))]


class _DziLevel:
    """Cuts one DeepZoom level into tiles as its rows arrive; holds one tile row (+ overlap)."""

    def __init__(self, directory: Path, height: int, width: int, channels: int, save):
        self.directory, self.height, self.width, self.save = directory, height, width, save
        self.buffer = np.empty((min(height, DZI_TILE + 2 * DZI_OVERLAP), width, channels), np.uint8)
        self.y0 = self.fill = self.row = 0  # image row of buffer[0], rows held, next tile row
        self.rows = -(-height // DZI_TILE)
        directory.mkdir()

    def _end(self) -> int:  # one past the last image row that tile row `row` needs
        return min(self.height, (self.row + 1) * DZI_TILE + DZI_OVERLAP)

    def __call__(self, rows: np.ndarray) -> None:
        i = 0
        while i < len(rows):
            k = min(len(rows) - i, self._end() - (self.y0 + self.fill))
            if k <= 0:
                raise ValueError(f"more rows than the height {self.height}")
            self.buffer[self.fill: self.fill + k] = rows[i: i + k]
            self.fill, i = self.fill + k, i + k
            if self.y0 + self.fill == self._end():
                self._emit()

    def _emit(self) -> None:
        top = max(0, self.row * DZI_TILE - DZI_OVERLAP) - self.y0
        band = self.buffer[top: self.fill]
        for col in range(-(-self.width // DZI_TILE)):
            x0 = max(0, col * DZI_TILE - DZI_OVERLAP)
            x1 = min(self.width, (col + 1) * DZI_TILE + DZI_OVERLAP)
            self.save(self.directory / f"{col}_{self.row}", band[:, x0:x1])
        self.row += 1
        if self.row < self.rows:  # keep the rows the next tile row shares with this one
            keep_from = self.row * DZI_TILE - DZI_OVERLAP
            keep = self.y0 + self.fill - keep_from
            self.buffer[:keep] = self.buffer[self.fill - keep: self.fill]
            self.y0, self.fill = keep_from, keep

    @property
    def complete(self) -> bool:
        return self.row == self.rows


class _TileSaver:
    """Encodes tiles with Pillow, on `workers` threads (Pillow's encoders release the GIL); at most
    a few tiles per worker are in flight."""

    def __init__(self, suffix: str, quality: int, workers: int):
        from PIL import Image  # noqa: PLC0415

        self.Image, self.suffix, self.quality = Image, suffix, quality
        self.pool = None
        self.pending: list = []
        self.limit = 4 * max(1, workers)
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="streamsr-dzi")

    def _write(self, stem: Path, tile: np.ndarray) -> None:
        image = self.Image.fromarray(tile[:, :, 0] if tile.shape[2] == 1 else tile)
        out = io.BytesIO()
        if self.suffix == "jpg":
            image.save(out, "JPEG", quality=self.quality)
        else:
            image.save(out, "PNG", compress_level=6)
        with open(f"{stem}.{self.suffix}", "wb") as fh:
            fh.write(out.getbuffer())

    def __call__(self, stem: Path, tile: np.ndarray) -> None:
        if self.pool is None:
            self._write(stem, tile)
            return
        self.pending.append(self.pool.submit(self._write, stem, np.ascontiguousarray(tile)))
        if len(self.pending) >= self.limit:
            self.pending.pop(0).result()

    def close(self) -> None:
        """Wait for every tile; the first failure is raised."""
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pending.clear()
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)


def _export_dzi(src: Source, path: Path, progress: Progress | None, tile_format: str | None = None,
                quality: int = 90, workers: int = 1, **_) -> None:
    alpha = src.channels in (2, 4)
    suffix = (tile_format or ("png" if alpha else "jpg")).lower().replace("jpeg", "jpg")
    if suffix not in ("jpg", "png"):
        raise BadInput(f"unknown DeepZoom tile format {tile_format!r}; supported: jpg, png")
    if suffix == "jpg" and alpha:
        raise BadInput("DeepZoom JPEG tiles cannot hold alpha; use tile format png")
    sizes = dzi_sizes(src.height, src.width)
    top = len(sizes) - 1  # DeepZoom numbers levels from 1 x 1 (0) up to full size (top)
    tmp_xml, tiles_dir = partial_path(path), dzi_files_dir(path)
    tmp_dir = dzi_files_dir(tmp_xml)
    _remove(tmp_dir)
    tmp_dir.mkdir()
    saver = _TileSaver(suffix, quality, workers)
    try:
        sinks = [_DziLevel(tmp_dir / str(top - k), h, w, src.channels, saver) for k, (h, w) in enumerate(sizes)]
        cascade = Cascade(sinks)
        for y0, band in src.bands(bit_depth=8):
            cascade.push(band)
            _report(progress, y0 + len(band), src.height)
        cascade.finish()
    finally:
        saver.close()
    if not all(s.complete for s in sinks):
        raise RuntimeError("the pyramid cascade did not fill every level")
    with open(tmp_xml, "w") as fh:
        fh.write(dzi_xml(src.width, src.height, suffix))
        fh.flush()
        os.fsync(fh.fileno())
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # the old .dzi goes first: it is what marks a complete DeepZoom image
    _replace_dir(tmp_dir, tiles_dir)
    os.replace(tmp_xml, path)
    _fsync_dir(path.parent)


# ----------------------------------------------------------------------------- entry points

_EXPORTERS = {"png": _export_png, "tiff": _export_tiff, "zarr": _export_zarr, "dzi": _export_dzi}


def export_array(arr, hr_size: tuple[int, int], path: os.PathLike | str, fmt: str | None = None,
                 bit_depth: int | None = None, *, compression: str | None = None, quality: int = 90,
                 tile_format: str | None = None, ngff: str = "0.5", workers: int = 1,
                 band_rows: int | None = None, progress: Progress | None = None) -> Path:
    """Export the top-left `hr_size` (H, W) of `arr` ((H_pad, W_pad, C) uint8|uint16) to `path`.

    fmt: "png", "tiff", "zarr", "dzi" or None (from the suffix). bit_depth: 8 or 16 (default: the
    array's; a different one is converted by value scaling; DZI is always 8-bit). compression: TIFF
    only ("auto", "zstd", "zlib", "jpeg", "none"). quality: JPEG quality (TIFF jpeg, DZI jpg tiles).
    tile_format: DZI "jpg" or "png" (default jpg, png with alpha). ngff: OME-Zarr "0.5" or "0.4".
    workers: DZI tile-encoding threads. band_rows: source rows read at a time for png and dzi
    (default one chunk row; tiff and zarr read one 512-row tile row at a time).
    progress(done_rows, total_rows) is called as level 0 advances. Returns the path written.
    """
    path, fmt = check_export_path(path, fmt)
    src = Source(arr, hr_size, bit_depth, TILE if fmt in ("tiff", "zarr") else band_rows)
    if fmt == "tiff":
        _tiff_compression(compression, src.channels, src.bit_depth)  # refuse bad options before any work
    temps = {"png": [], "tiff": [partial_path(path)], "zarr": [partial_path(path)],
             "dzi": [partial_path(path), dzi_files_dir(partial_path(path))]}[fmt]
    with _output_guard(path, temps), _zarr_limits():
        _EXPORTERS[fmt](src, path, progress, compression=compression, quality=quality,
                        tile_format=tile_format, ngff=ngff, workers=workers)
    return path


def _job_manifest(root: Path) -> dict:
    path = root / "job.json"
    if not path.is_file():
        raise BadInput(f"{root} is not a streamsr job dir (no job.json)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(_one_line(f"cannot read {path}: {e}")) from None
    if not isinstance(manifest, dict) or manifest.get("format") != "streamsr-job/1":
        raise BadInput(f"{path} is not a streamsr-job/1 manifest")
    return manifest


def export_job(job_dir: os.PathLike | str, path: os.PathLike | str, fmt: str | None = None, **options) -> Path:
    """Export the output of a finished job (x4 job dir, or a x16 job dir: its second stage).

    The job must be done, or have only its final export task left (its output array is complete
    then, e.g. after the output file could not be written). `options` are those of export_array.
    """
    from ..config import SR_SCALE  # noqa: PLC0415 - light (no torch)

    root = Path(job_dir)
    if (root / "chain.json").is_file():
        root = root / "stage2"
        if not (root / "job.json").is_file():
            raise BadInput(f"x16 job {job_dir} has not started its second stage; resume it first: "
                           f"streamsr resume {job_dir}")
    manifest = _job_manifest(root)
    status, cursor, total = manifest.get("status"), manifest.get("cursor", 0), manifest.get("total_tasks", 0)
    if status != "done" and not (total and cursor >= total - 1):
        raise BadInput(f"job {job_dir} is not finished (status {status}, task {cursor}/{total}); "
                       f"resume it first: streamsr resume {job_dir}")
    check_export_path(path, fmt)
    import zarr  # noqa: PLC0415

    try:
        arr = zarr.open_array(os.fspath(root / "state.zarr" / "output"), mode="r")
        geometry = manifest["geometry"]
        hr_size = (geometry["lr_height"] * SR_SCALE, geometry["lr_width"] * SR_SCALE)
        bit_depth = manifest["input"]["bit_depth"]
    except Exception as e:  # noqa: BLE001 - a damaged store or manifest
        raise BadInput(_one_line(f"job {job_dir}: cannot open its output array: {type(e).__name__}: "
                                 f"{_reason(e)}")) from None
    return export_array(arr, hr_size, path, fmt, bit_depth, **options)


__all__ = ["FORMATS", "Cascade", "OutputError", "check_export_path", "dzi_files_dir", "dzi_sizes",
           "dzi_tile_counts", "dzi_xml", "export_array", "export_format", "export_job", "level_sizes",
           "ome_multiscales", "pyramid_sizes", "reduce2"]
