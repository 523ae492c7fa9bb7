"""OME-Zarr export: NGFF 0.5 (a zarr v3 group, "ome" attributes) or 0.4 (a zarr v2 group, "multiscales"
attributes); arrays "0", "1", ... of shape (C, h, w), each level 2x reduced, down to a longest side
below 512, chunks (C, 512, 512), zstd level 1. Written to `<name>.partial.zarr`, renamed at the end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import BadInput
from ..atomic import partial_path, remove, replace_dir
from ..depth import max_value
from ..pyramid import Cascade, Rebander, pyramid_sizes
from .base import ArraySource, ExportOptions, Progress, report, write_band

SUFFIXES = (".zarr",)
ZARR_CHUNK = 512  # chunk side (y and x); also the source rows per band (one row of level-0 chunks)
NGFF_VERSIONS = ("0.5", "0.4")
REDUCE_METHOD = "streamsr.export.reduce2"  # recorded in the metadata; the name outputs always carried (kept)


def looks_like_zarr(path: Path) -> bool:
    """A folder with zarr metadata: an existing store that an export may replace."""
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray", ".zattrs"))


def ome_multiscales(sizes: list[tuple[int, int]], name: str, *, version: str = "0.5") -> dict:
    """The OME-NGFF `multiscales` entry for arrays "0".."n" of axes (c, y, x), each 2x reduced."""
    entry = {
        "name": name,
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
                 {"name": "x", "type": "space"}],
        "datasets": [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, float(2 ** k), float(2 ** k)]}]} for k in range(len(sizes))],
        "type": "box (2x2 mean)",
        "metadata": {"description": "2x2 box reduction of the level above, round half up",
                     "method": REDUCE_METHOD},
    }
    if version == "0.4":
        entry = {"version": "0.4", **entry}
    return entry


def _omero(channels: int, bit_depth: int) -> dict:
    top = max_value(bit_depth)
    colors = {1: ["FFFFFF"], 2: ["FFFFFF", "FFFFFF"], 3: ["FF0000", "00FF00", "0000FF"],
              4: ["FF0000", "00FF00", "0000FF", "FFFFFF"]}[channels]
    labels = {1: ["gray"], 2: ["gray", "alpha"], 3: ["red", "green", "blue"],
              4: ["red", "green", "blue", "alpha"]}[channels]
    return {"rdefs": {"model": "color" if channels >= 3 else "greyscale"},
            "channels": [{"label": label, "color": color, "active": label != "alpha",
                          "window": {"min": 0, "max": top, "start": 0, "end": top}}
                         for label, color in zip(labels, colors)]}


def temporaries(path: Path) -> list[Path]:
    """What a failed OME-Zarr export may leave."""
    return [partial_path(path)]


def export_zarr(src: ArraySource, path: Path, options: ExportOptions, progress: Progress | None) -> None:
    """Write `src` (bands of ZARR_CHUNK rows) to `path` as an OME-Zarr multiscale image."""
    import zarr  # noqa: PLC0415

    ngff = options.ngff
    if ngff not in NGFF_VERSIONS:
        raise BadInput(f"unknown OME-NGFF version {ngff!r}; supported: {', '.join(NGFF_VERSIONS)}")
    sizes = pyramid_sizes(src.height, src.width)
    tmp = partial_path(path)
    remove(tmp)
    name = path.name[: -len(".zarr")] if path.name.lower().endswith(".zarr") else path.stem
    name = name[: -len(".ome")] if name.lower().endswith(".ome") else name
    multiscales = ome_multiscales(sizes, name, version=ngff)
    if ngff == "0.5":
        group = zarr.open_group(os.fspath(tmp), mode="w", zarr_format=3)
        array_options = dict(compressors=zarr.codecs.ZstdCodec(level=1), dimension_names=("c", "y", "x"))
        group.attrs.update({"ome": {"version": "0.5", "multiscales": [multiscales],
                                    "omero": _omero(src.channels, src.bit_depth)}})
    else:
        from numcodecs import Zstd  # noqa: PLC0415

        group = zarr.open_group(os.fspath(tmp), mode="w", zarr_format=2)
        array_options = dict(compressors=Zstd(level=1), chunk_key_encoding={"name": "v2", "separator": "/"})
        group.attrs.update({"multiscales": [multiscales], "omero": _omero(src.channels, src.bit_depth)})
    arrays = [group.create_array(str(k), shape=(src.channels, h, w), chunks=(src.channels, ZARR_CHUNK, ZARR_CHUNK),
                                 dtype=src.dtype, fill_value=0, **array_options) for k, (h, w) in enumerate(sizes)]

    def store(arr):
        def emit(y0: int, band: np.ndarray) -> None:
            write_band(arr, y0, band, channels_first=True)
        return emit

    sinks = [Rebander(ZARR_CHUNK, h, w, src.channels, src.dtype, store(arr))
             for (h, w), arr in zip(sizes[1:], arrays[1:])]
    level0 = store(arrays[0])  # each source band is one row of chunks (src.band_rows == ZARR_CHUNK)
    rows_done = 0

    def write0(rows: np.ndarray) -> None:
        nonlocal rows_done
        level0(rows_done, rows)
        rows_done += len(rows)

    cascade = Cascade([write0, *sinks])
    for y0, band in src.bands():
        cascade.push(band)
        report(progress, y0 + len(band), src.height)
    cascade.finish()
    if rows_done != src.height or not all(s.complete for s in sinks):
        raise RuntimeError("the pyramid cascade did not fill every level")
    replace_dir(tmp, path)
