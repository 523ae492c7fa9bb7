"""Export an (H_pad, W_pad, C) uint8|uint16 array (a job's `output`) to PNG, pyramidal TIFF, OME-Zarr or
DeepZoom, streaming; the format is chosen by name or by the path's suffix, one module per format:

    png   .png          png.py: rows into the streaming PNG writer (pypng chunks, Paeth, zlib)
    tiff  .tif .tiff    tiff.py: tiled (512 x 512) BigTIFF with 2x-reduced SubIFDs; zstd, zlib, jpeg, none
    zarr  .zarr         zarr.py: OME-Zarr (NGFF 0.5 / zarr v3, or 0.4 / zarr v2), chunks (C, 512, 512)
    dzi   .dzi          dzi.py: DeepZoom, 254 px tiles with 1 px overlap, down to 1 x 1, 8-bit
    jpeg  .jpg .jpeg    jpeg.py: 8-bit, whole image through Pillow (side <= 65500)
    webp  .webp         webp.py: 8-bit, whole image through Pillow (side <= 16383)

PNG, TIFF, JPEG and WebP carry `meta` (streamsr.io.metadata: ICC profile, EXIF, DPI; TIFF: ICC and DPI).

The source is read top to bottom in bands (one chunk row for png/dzi, 512 rows for tiff/zarr), each
band filled into one reused buffer by column pieces of whole chunks (base.ArraySource), cropped to the
unpadded (H, W); it is never read whole. Pyramids are built by the cascade of streamsr.io.pyramid (each
band of level k, as it arrives, is box-reduced 2x2 into level k + 1), so each level holds at most one
band besides its sink: memory is O(width x a few hundred rows) whatever the height (about 80-100 MiB
peak RSS at 9500 px wide, see tools/bench_export.py).

Every writer writes to a temporary name beside the target (`out.partial.tif`, `out.partial.zarr`,
`out.partial.dzi` + `out.partial_files`) and renames it at the end; an existing target is replaced
only then. OSError while writing raises `OutputError` (one line, exit 1); bad arguments and paths raise
`BadInput` (one line, exit 2). Opening a job dir to export it is streamsr.jobs.export's business.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import BadInput
from ..atomic import check_target, output_guard, unsupported_suffix
from ..problems import OutputError, bad_input
from ..metadata import ImageMeta
from . import dzi, jpeg, png, tiff, webp, zarr
from .base import ArraySource, ExportOptions, Progress, zarr_limits

FORMATS = ("png", "tiff", "zarr", "dzi", "jpeg", "webp")
_MODULES = {"png": png, "tiff": tiff, "zarr": zarr, "dzi": dzi, "jpeg": jpeg, "webp": webp}
_WRITERS = {"png": png.export_png, "tiff": tiff.export_tiff, "zarr": zarr.export_zarr, "dzi": dzi.export_dzi,
            "jpeg": jpeg.export_jpeg, "webp": webp.export_webp}
SUFFIXES = {name: module.SUFFIXES for name, module in _MODULES.items()}
_BAND_ROWS = {"tiff": tiff.TIFF_TILE, "zarr": zarr.ZARR_CHUNK}  # source rows per band; else the caller's


def export_format(path: os.PathLike | str, *, fmt: str | None = None) -> str:
    """The format for `path`: `fmt` if given (the suffix must then match it), else from the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if fmt is not None:
        fmt = fmt.lower()
        fmt = {"tif": "tiff", "jpg": "jpeg"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise BadInput(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}")
        if suffix not in SUFFIXES[fmt]:
            raise bad_input(path, f"a {fmt} export needs a name ending in {' or '.join(SUFFIXES[fmt])}")
        return fmt
    for name, suffixes in SUFFIXES.items():
        if suffix in suffixes:
            return name
    raise unsupported_suffix(path, tuple(s for suffixes in SUFFIXES.values() for s in suffixes))


def max_side(fmt: str) -> int | None:
    """The largest side `fmt` can hold (JPEG, WebP), or None when only disk and memory limit it."""
    return getattr(_MODULES[fmt], "MAX_SIDE", None)


def check_export_path(path: os.PathLike | str, *, fmt: str | None = None) -> tuple[Path, str]:
    """Fail early (BadInput) unless `path` can receive an export; returns (path, format).

    An existing target is replaced at the end of a successful export, but only if it is of the same
    kind: a file for png/tiff, a zarr store for zarr, a DZI (file and tile folder) for dzi.
    """
    path = Path(path)
    fmt = export_format(path, fmt=fmt)
    if fmt == "zarr" and path.exists() and not (path.is_dir() and zarr.looks_like_zarr(path)):
        raise bad_input(path, "exists and is not a zarr store; remove it or choose another name")
    if fmt == "dzi":
        tiles = dzi.dzi_files_dir(path)
        if tiles.exists() and not (tiles.is_dir() and dzi.looks_like_dzi_tiles(tiles)):
            raise bad_input(path, f"{tiles} exists and is not a DeepZoom tile folder; remove it or choose another name")
    check_target(path, file_example=None if fmt == "zarr" else "out" + SUFFIXES[fmt][0])
    return path, fmt


def export_array(arr, hr_size: tuple[int, int], path: os.PathLike | str, *, fmt: str | None = None,
                 bit_depth: int | None = None, compression: str | None = None, quality: int = 90,
                 tile_format: str | None = None, ngff: str = "0.5", workers: int = 1,
                 band_rows: int | None = None, progress: Progress | None = None,
                 meta: ImageMeta | None = None) -> Path:
    """Export the top-left `hr_size` (H, W) of `arr` ((H_pad, W_pad, C) uint8|uint16) to `path`.

    fmt: "png", "tiff", "zarr", "dzi" or None (from the suffix). bit_depth: 8 or 16 (default: the
    array's; a different one is converted by value scaling; DZI is always 8-bit). compression: TIFF
    only ("auto", "zstd", "zlib", "jpeg", "none"). quality: JPEG quality (TIFF jpeg, DZI jpg tiles).
    tile_format: DZI "jpg" or "png" (default jpg, png with alpha). ngff: OME-Zarr "0.5" or "0.4".
    workers: DZI tile-encoding threads. band_rows: source rows read at a time for png and dzi
    (default one chunk row; tiff and zarr read one 512-row tile row at a time).
    progress(done_rows, total_rows) is called as level 0 advances. meta: the ICC profile, EXIF and DPI
    to write (PNG, TIFF, JPEG, WebP). Returns the path written.
    """
    path, fmt = check_export_path(path, fmt=fmt)
    src = ArraySource(arr, hr_size, bit_depth=bit_depth, band_rows=_BAND_ROWS.get(fmt, band_rows))
    options = ExportOptions(compression=compression, quality=quality, tile_format=tile_format, ngff=ngff,
                            workers=workers, meta=meta)
    if fmt == "tiff":
        tiff.tiff_compression(compression, src.channels, src.bit_depth)  # refuse bad options before any work
    with output_guard(path, _MODULES[fmt].temporaries(path)), zarr_limits():
        _WRITERS[fmt](src, path, options, progress)
    return path


__all__ = ["FORMATS", "SUFFIXES", "ExportOptions", "OutputError", "Progress", "check_export_path",
           "export_array", "export_format", "max_side"]
