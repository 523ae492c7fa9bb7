"""Zarr arrays as input images: which array of a store or group is the image, and its axes.

The input is the path of a zarr v3 or v2 array, or of a group that holds either an OME-Zarr multiscale
image (its first, full-resolution dataset is read) or exactly one array. The array is uint8 or uint16
and 2-D (H, W) or 3-D with 1-4 channels. Its channel axis is found from the array's dimension names
(v3) or the OME axes ("c" or "channel" first or last); without names a 3-D array is (H, W, C) when its
last axis has 1-4 entries, else (C, H, W) when its first has. Leading axes of length 1 (OME "t"/"z")
are dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .info import MODES, ImageInfo, check_dims
from .problems import bad_input, reason

_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
_CHANNEL_NAMES = ("c", "channel", "channels", "band", "bands", "s", "sample", "samples")


def is_zarr_dir(path: Path) -> bool:
    """A directory holding zarr metadata (v3 zarr.json, v2 .zarray/.zgroup)."""
    return any((path / name).is_file() for name in _ZARR_MARKERS)


def ome_multiscales(attrs: dict) -> list | None:
    """The OME-NGFF multiscales list of a group's attributes (NGFF 0.5 "ome", or 0.4), or None."""
    ome = attrs.get("ome")
    ms = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")  # NGFF 0.5 / 0.4
    return ms if isinstance(ms, list) and ms and isinstance(ms[0], dict) else None


def _zarr_member(path: Path, node):
    """(array, axis names or None) of a zarr node given as input, by the rule in the module doc."""
    import zarr  # noqa: PLC0415 - only zarr inputs need it here

    if isinstance(node, zarr.Array):
        return node, None
    multiscales = ome_multiscales(dict(node.attrs))
    if multiscales:
        ms = multiscales[0]
        try:
            sub = ms["datasets"][0]["path"]
            array = node[sub]
        except Exception as e:  # noqa: BLE001 - broken OME metadata
            raise bad_input(path, f"has OME-Zarr metadata whose first dataset cannot be opened: {reason(e)}") from e
        axes = ms.get("axes")
        names = None
        if isinstance(axes, list):
            names = [a.get("name") if isinstance(a, dict) else a for a in axes]
        return array, names
    arrays = sorted(node.arrays(), key=lambda item: item[0])
    if len(arrays) != 1:
        listed = ", ".join(name for name, _ in arrays[:5]) or "none"
        raise bad_input(path, f"is a zarr group holding {len(arrays)} arrays ({listed}) and no OME-Zarr "
                              "multiscale metadata; pass the path of one image array (e.g. "
                              f"{path / (arrays[0][0] if arrays else 'image')})")
    return arrays[0][1], None


def _zarr_layout(path: Path, shape: tuple[int, ...], names) -> tuple[tuple[int, ...], str]:
    """(axes of length 1 to drop, "hw" | "hwc" | "chw") for a zarr image array."""
    names = [str(n).lower() if n is not None else "" for n in names] if names else None
    if names is not None and len(names) != len(shape):
        names = None
    if names:  # OME "t" and "z" of length 1, wherever they are
        drop = [i for i, n in enumerate(names) if n in ("t", "z", "time") and shape[i] == 1]
    else:  # leading axes of length 1 beyond three
        drop = []
        while len(shape) - len(drop) > 3 and shape[len(drop)] == 1:
            drop.append(len(drop))
    kept = [n for i, n in enumerate(shape) if i not in drop]
    kept_names = [n for i, n in enumerate(names) if i not in drop] if names else None
    dims = "x".join(str(n) for n in shape)
    if len(kept) == 2:
        return tuple(drop), "hw"
    if len(kept) != 3:
        raise bad_input(path, f"is a zarr array of shape ({dims}); expected (H, W), (H, W, C) or (C, H, W)")
    if kept_names and kept_names[-1] in _CHANNEL_NAMES:
        layout = "hwc"
    elif kept_names and kept_names[0] in _CHANNEL_NAMES:
        layout = "chw"
    elif 1 <= kept[-1] <= 4:
        layout = "hwc"
    elif 1 <= kept[0] <= 4:
        layout = "chw"
    else:
        raise bad_input(path, f"is a zarr array of shape ({dims}) with no channel axis of 1-4 entries "
                              "first or last; expected (H, W), (H, W, C) or (C, H, W)")
    channels = kept[-1] if layout == "hwc" else kept[0]
    if not 1 <= channels <= 4:
        raise bad_input(path, f"is a zarr array of shape ({dims}) with {channels} channels; "
                              "supported: 1-4 (grey, grey+alpha, RGB, RGBA)")
    return tuple(drop), layout


@dataclass(frozen=True)
class ZarrImage:
    """The image array of a zarr input and how its axes map to (rows, W, C)."""

    array: object  # zarr.Array
    drop: tuple[int, ...]  # axes of length 1 that are indexed away
    layout: str  # of the other axes: "hw", "hwc", "chw"

    def _key(self, rows: slice) -> tuple:
        kept = iter([slice(None), rows] if self.layout == "chw" else [rows])
        return tuple(0 if i in self.drop else next(kept, slice(None)) for i in range(len(self.array.shape)))

    def read(self, y0: int, y1: int) -> np.ndarray:
        """Integer (rows, W, C) of rows y0:y1."""
        data = np.asarray(self.array[self._key(slice(y0, y1))])
        if self.layout == "chw":
            return np.moveaxis(data, 0, -1)  # (C, rows, W) -> (rows, W, C)
        return data[:, :, None] if self.layout == "hw" else data

    @property
    def chunk_rows(self) -> int:
        """Image rows per chunk (256 for an unchunked array-like)."""
        chunks = getattr(self.array, "chunks", None)
        if not chunks:
            return 256
        kept = [c for i, c in enumerate(chunks) if i not in self.drop]
        return int(kept[1] if self.layout == "chw" else kept[0])


def open_zarr_image(path: Path) -> tuple[ZarrImage, ImageInfo]:
    """The image array of a zarr input and its info; BadInput for what is not one (module doc)."""
    import zarr  # noqa: PLC0415

    try:
        node = zarr.open(store=os.fspath(path), mode="r")
    except Exception as e:  # noqa: BLE001 - zarr raises many types for a damaged store
        raise bad_input(path, f"is not a readable zarr array or group: {type(e).__name__}: {reason(e)}") from e
    array, names = _zarr_member(path, node)
    if names is None:
        dim_names = getattr(getattr(array, "metadata", None), "dimension_names", None)
        names = list(dim_names) if dim_names else None
    shape = tuple(int(n) for n in array.shape)
    drop, layout = _zarr_layout(path, shape, names)
    kept = [n for i, n in enumerate(shape) if i not in drop]
    height, width = (kept[1], kept[2]) if layout == "chw" else (kept[0], kept[1])
    channels = 1 if layout == "hw" else (kept[0] if layout == "chw" else kept[2])
    dtype = np.dtype(array.dtype)
    if dtype not in (np.uint8, np.uint16):
        raise bad_input(path, f"is a zarr array of dtype {dtype}; only uint8 and uint16 are supported")
    check_dims(path, width, height)
    mode = MODES[channels]
    info = ImageInfo(path, width, height, channels, mode, 8 if dtype == np.uint8 else 16, "ZARR")
    return ZarrImage(array, drop, layout), info


def probe_zarr(path: Path) -> ImageInfo:
    """The info of a zarr input, from its metadata alone."""
    return open_zarr_image(path)[1]


def zarr_decode(path: Path, read) -> np.ndarray:
    """`read()` (a zarr read) with a missing or corrupt chunk reported as BadInput naming `path`."""
    try:
        return read()
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a missing or corrupt chunk
        raise bad_input(path, f"is a corrupt zarr array: {type(e).__name__}: {reason(e)}") from e

