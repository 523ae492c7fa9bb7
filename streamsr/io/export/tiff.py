"""Pyramidal TIFF export: a tiled (512 x 512) BigTIFF, full resolution plus 2x-reduced SubIFDs until the
longest side is below 512.

Compression "zstd" (the default when imagecodecs has it, lossless), "zlib" (the default without it),
"jpeg" (8-bit grey/RGB only, lossy, `quality`) or "none". The sub-levels must follow level 0 in the
file, but are made (by the cascade) while level 0 is written: they wait in a temporary zstd zarr beside
the output (a third of the level-0 pixels, compressed; removed at the end) and are copied in after.
That folder, `.<stem>.levels-<pid>-<random>`, outlives a killed export; the next export beside it removes
those of processes that no longer run (`remove_stale_scratch`).
The input's ICC profile, DPI and EXIF are carried (EXIF as TIFF tags and sub-IFDs: streamsr.io.tiff_exif).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ...errors import BadInput
from ..atomic import commit_file, partial_path
from ..pyramid import Cascade, Rebander, pyramid_sizes
from ..tiff_exif import ifd0_tags, link_sub_ifds
from ..write import band_tiles, tiff_options
from .base import ArraySource, ExportOptions, Progress, report, write_band

SUFFIXES = (".tif", ".tiff")
TIFF_TILE = 512  # tile side; also the source rows per band (one row of level-0 tiles)
SCRATCH_ROWS = 128  # rows per chunk of the temporary sub-levels (and per band written there)
TIFF_BUFFER_TILES = 4  # tiles tifffile gathers before compressing and writing them
TIFF_COMPRESSIONS = ("auto", "zstd", "zlib", "jpeg", "none")


def _imagecodecs_has(codec: str) -> bool:
    try:
        import imagecodecs  # noqa: PLC0415 - optional
    except ImportError:
        return False
    return bool(getattr(getattr(imagecodecs, codec, None), "available", False))


def tiff_compression(compression: str | None, channels: int, bit_depth: int) -> str:
    """The compression to use ("auto" resolved); BadInput for an unknown or unusable one."""
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def remove_stale_scratch(path: Path) -> list[Path]:
    """Remove the sub-level folders that killed TIFF exports to `path` left beside it: those whose process
    (the pid in the name) is gone, and those named before the pid was (no pid). Returns what was removed."""
    stale = []
    for folder in path.parent.glob(f".{glob.escape(path.stem)}.levels-*"):
        pid = folder.name[len(f".{path.stem}.levels-"):].partition("-")[0]
        if folder.is_dir() and not (pid.isdigit() and _pid_alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)
            stale.append(folder)
    return stale


def temporaries(path: Path) -> list[Path]:
    """What a failed TIFF export may leave (its scratch folder removes itself)."""
    return [partial_path(path)]


def export_tiff(src: ArraySource, path: Path, options: ExportOptions, progress: Progress | None) -> None:
    """Write `src` (bands of TIFF_TILE rows) to `path` as a pyramidal TIFF."""
    import tifffile  # noqa: PLC0415
    import zarr  # noqa: PLC0415

    compression = tiff_compression(options.compression, src.channels, src.bit_depth)
    sizes = pyramid_sizes(src.height, src.width)
    tmp = partial_path(path)

    def level_options(size: tuple[int, int]) -> dict:
        return tiff_options(size, src.channels, src.dtype, tile=TIFF_TILE, compression=compression,
                            quality=options.quality, buffer_tiles=TIFF_BUFFER_TILES, maxworkers=1)

    remove_stale_scratch(path)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.stem}.levels-{os.getpid()}-", dir=path.parent))
    try:
        levels = []  # sub-levels wait here, compressed, while level 0 is written
        for k, (h, w) in enumerate(sizes[1:], start=1):
            levels.append(zarr.create_array(
                store=os.fspath(scratch / str(k)), shape=(h, w, src.channels),
                chunks=(SCRATCH_ROWS, TIFF_TILE, src.channels), dtype=src.dtype, fill_value=0,
                compressors=zarr.codecs.ZstdCodec(level=1), zarr_format=3))

        def store(level):
            def emit(y0: int, band: np.ndarray) -> None:
                write_band(level, y0, band, channels_first=False)
            return emit

        sub = [Rebander(SCRATCH_ROWS, h, w, src.channels, src.dtype, store(level))
               for (h, w), level in zip(sizes[1:], levels)]
        cascade = Cascade([lambda rows: None, *sub])

        def tiles0() -> Iterator[np.ndarray]:
            """Level 0: each source band is one row of tiles (src.band_rows == TIFF_TILE). Everything
            is done before the band's tiles are handed over: tifffile stops pulling after the
            last tile, so code after the final yield would never run."""
            for y0, band in src.bands():
                cascade.push(band)
                report(progress, y0 + len(band), src.height)
                yield from band_tiles(band, TIFF_TILE)

        def tiles(level) -> Iterator[np.ndarray]:
            h, w, c = level.shape
            for y0 in range(0, h, TIFF_TILE):
                for x0 in range(0, w, TIFF_TILE):
                    tile = np.asarray(level[y0: y0 + TIFF_TILE, x0: x0 + TIFF_TILE])  # (th, tw, C)
                    yield tile[:, :, 0] if c == 1 else tile

        meta = options.meta.tiff_tags() if options.meta else {}
        exif_tags, exif_subs, software = ifd0_tags(options.meta.exif if options.meta else None)
        meta["extratags"] = meta.get("extratags", []) + exif_tags
        if software is not None and software.isascii():
            meta["software"] = software
        with open(tmp, "w+b") as fh:  # read back by link_sub_ifds
            with tifffile.TiffWriter(fh, bigtiff=True, byteorder="<") as tw:
                tw.write(tiles0(), subifds=len(levels), **level_options(sizes[0]), **meta)
                cascade.finish()
                if not all(r.complete for r in sub):
                    raise RuntimeError("the pyramid cascade did not fill every level")
                for level, size in zip(levels, sizes[1:]):
                    tw.write(tiles(level), subfiletype=1, **level_options(size))
            link_sub_ifds(fh, exif_subs)  # EXIF's Exif and GPS sub-IFDs, which tifffile cannot write
            commit_file(fh, tmp, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
