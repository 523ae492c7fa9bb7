"""Deep-zoom tiles: layers (images in output pixel coordinates that render reduced regions as uint8
RGB(A)), the DeepZoom pyramid over a layer (256 px PNG tiles, no overlap, rendered on demand and
cached), a zarr / OME-Zarr image as a layer, and an existing DZI served as is.

Zoomed-out levels: factor f = 2**(max_level - level). Tiles with f <= DIRECT_MAX are computed directly
from a full-resolution region (reduced by streamsr.io.pyramid.reduce_by); coarser tiles are the 2x2 mean
(reduce2) of their four child tiles. Tiles are kept in a bounded LRU cache, the small top levels (<=
1024x1024 pixels each) pinned; an entry carries the layer's version of the tile's box, so tiles refresh
as a running job commits blocks. Pixel depths go to 8 bits by streamsr.io.depth's one conversion.
"""

from __future__ import annotations

import io
import math
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..io.depth import convert_depth
from ..io.export.dzi import dzi_files_dir, dzi_xml
from ..io.pyramid import reduce2, reduce_by

VIEWER_TILE = 256  # DeepZoom tile side of the viewer's pyramids (no overlap)
DIRECT_MAX = 4  # largest downsampling factor computed straight from a full-resolution region
PIN_PIXELS = 1 << 20  # levels at most this many pixels stay cached for good

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1) in full-resolution pixels


# ---- pixels ---------------------------------------------------------------------------------------
def to_uint8(a: np.ndarray, *, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Any pixel dtype to uint8: uint16 by /257 (rounded), other ints by their max, floats from `value_range`."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return convert_depth(a, 8)
    if np.issubdtype(a.dtype, np.integer):
        top = np.iinfo(a.dtype).max
        return np.rint(np.clip(a.astype(np.float64), 0, top) * (255.0 / top)).astype(np.uint8)
    lo, hi = value_range or (0.0, 1.0)
    v = (np.clip(a.astype(np.float32), lo, hi) - lo) * (255.0 / (hi - lo))
    return np.rint(v).astype(np.uint8)


def display_channels(channels: int) -> int:
    """Channels of the uint8 RGB(A) image shown for an image with `channels` channels."""
    return 4 if channels in (2, 4) else 3


def to_display(a: np.ndarray) -> np.ndarray:
    """(h, w, C) uint8 -> RGB (C = 1, 3, > 4) or RGBA (C = 2, 4)."""
    c = a.shape[2]
    if c == 1:
        return np.repeat(a, 3, axis=2)
    if c == 2:
        return np.concatenate([np.repeat(a[..., :1], 3, axis=2), a[..., 1:]], axis=2)
    if c in (3, 4):
        return a
    return a[..., :3]


def bilinear_axis(n_src: int, start: int, stop: int, scale: int):
    """Source range and taps of a x`scale` bilinear resize (half-pixel centres, edges clamped)."""
    pos = (np.arange(start, stop, dtype=np.float64) + 0.5) / scale - 0.5
    i0 = np.floor(pos).astype(np.int64)
    w = (pos - i0).astype(np.float32)
    a, b = np.clip(i0, 0, n_src - 1), np.clip(i0 + 1, 0, n_src - 1)
    lo, hi = int(a.min()), int(b.max()) + 1
    return lo, hi, a - lo, b - lo, w


def bilinear_region(read, src_h: int, src_w: int, box: Box, scale: int) -> np.ndarray:
    """Box (y0, y1, x0, x1) of the x`scale` bilinear upsampling of a (C, src_h, src_w) image.

    `read(y0, y1, x0, x1)` returns a (C, h, w) float32 source region; the result is (C, h, w) float32.
    Equals torch's F.interpolate(mode="bilinear", align_corners=False) restricted to the box.
    """
    y0, y1, x0, x1 = box
    ly, hy, ay, by, wy = bilinear_axis(src_h, y0, y1, scale)
    lx, hx, ax, bx, wx = bilinear_axis(src_w, x0, x1, scale)
    src = read(ly, hy, lx, hx)
    rows = src[:, ay, :] * (1 - wy)[None, :, None] + src[:, by, :] * wy[None, :, None]  # (C, h, w_src)
    return rows[:, :, ax] * (1 - wx) + rows[:, :, bx] * wx  # (C, h, w)


def encode_png(a: np.ndarray) -> bytes:
    """A tile (h, w, 3|4) uint8 as PNG bytes (fast zlib level)."""
    from PIL import Image  # noqa: PLC0415

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# ---- layers: images in output pixel coordinates ---------------------------------------------------
class Layer:
    """An image of width x height pixels that can render downsampled regions as uint8 RGB(A)."""

    width: int
    height: int

    def direct(self, factor: int, box: Box) -> np.ndarray | None:
        """Box (y0, y1, x0, x1) (full-resolution coordinates, y0 and x0 multiples of `factor`) reduced
        by `factor` (a power of 2) to (ceil(h / factor), ceil(w / factor), C); None when `factor` is too
        coarse to compute directly (the pyramid then builds it from finer tiles)."""
        raise NotImplementedError

    def version(self, box: Box) -> int:
        """Changes (grows) whenever the pixels of the box change; 0 for a fixed image."""
        return 0


class ZarrLayer(Layer):
    """A zarr array, or the levels of an OME-Zarr multiscale image (factor, array) finest first."""

    def __init__(self, levels: list[tuple[int, object]], axes: str, *, value_range=None):
        self.levels = levels
        self.axes = axes
        self.value_range = value_range
        shape = levels[0][1].shape
        self.height, self.width = shape[axes.index("y")], shape[axes.index("x")]
        nc = shape[axes.index("c")] if "c" in axes else 1
        self.channels = display_channels(nc)

    def _read(self, arr, y0, y1, x0, x1) -> np.ndarray:
        """Region (y1 - y0, x1 - x0, C) of one level, whatever its axes."""
        index = []
        for name in self.axes:
            index.append(slice(y0, y1) if name == "y" else slice(x0, x1) if name == "x" else
                         slice(None) if name == "c" else 0)
        region = np.asarray(arr[tuple(index)])
        kept = [n for n in self.axes if n in "yxc"]
        if "c" not in kept:
            region, kept = region[..., None], kept + ["c"]
        return region.transpose([kept.index(n) for n in "yxc"])  # (h, w, C)

    def direct(self, factor, box):
        usable = [(g, arr) for g, arr in self.levels if g <= factor and factor % g == 0
                  and factor // g <= DIRECT_MAX]
        if not usable:
            return None
        g, arr = max(usable, key=lambda t: t[0])
        y0, y1, x0, x1 = box
        ly, lx = arr.shape[self.axes.index("y")], arr.shape[self.axes.index("x")]
        ys, ye, xs, xe = y0 // g, -(-y1 // g), x0 // g, -(-x1 // g)
        region = self._read(arr, ys, min(ye, ly), xs, min(xe, lx))
        if region.shape[0] < ye - ys or region.shape[1] < xe - xs:  # a level rounded down: repeat the edge
            region = np.pad(region, ((0, ye - ys - region.shape[0]), (0, xe - xs - region.shape[1]), (0, 0)),
                            mode="edge")
        return reduce_by(to_display(to_uint8(region, value_range=self.value_range)), factor // g)


# ---- DeepZoom pyramid over a layer ------------------------------------------------------------------
class TileCache:
    """Rendered tiles: a byte-bounded LRU plus the pinned top levels; each entry carries a version."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._lru: OrderedDict = OrderedDict()
        self._pinned: dict = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key, version):
        """The cached tile of `key` if it has `version`, else None."""
        with self._lock:
            hit = self._pinned.get(key)
            if hit is None:
                hit = self._lru.get(key)
                if hit is not None:
                    self._lru.move_to_end(key)
            return hit[1] if hit is not None and hit[0] == version else None

    def put(self, key, version, tile: np.ndarray, *, pinned: bool) -> None:
        """Cache a tile; pinned ones (small top levels) are never evicted."""
        with self._lock:
            if pinned:
                self._pinned[key] = (version, tile)
                return
            old = self._lru.pop(key, None)
            if old is not None:
                self._bytes -= old[1].nbytes
            self._lru[key] = (version, tile)
            self._bytes += tile.nbytes
            while self._bytes > self.max_bytes and len(self._lru) > 1:
                _, (_, dropped) = self._lru.popitem(last=False)
                self._bytes -= dropped.nbytes


class DeepZoom:
    """DeepZoom levels and tiles of a layer (PNG, 256 px, no overlap), rendered on demand."""

    fmt = "png"

    def __init__(self, name: str, layer: Layer, cache: TileCache):
        self.name, self.layer, self.cache = name, layer, cache
        self.width, self.height = layer.width, layer.height
        self.max_level = max(0, math.ceil(math.log2(max(self.width, self.height))))

    def dzi(self) -> bytes:
        """The DeepZoom descriptor."""
        return dzi_xml(self.width, self.height, self.fmt, tile_size=VIEWER_TILE, overlap=0).encode()

    def level_size(self, level: int) -> tuple[int, int]:
        """(width, height) of a level (max_level is full size)."""
        f = 1 << (self.max_level - level)
        return -(-self.width // f), -(-self.height // f)

    def has_tile(self, level: int, col: int, row: int) -> bool:
        if not 0 <= level <= self.max_level:
            return False
        w, h = self.level_size(level)
        return 0 <= col < -(-w // VIEWER_TILE) and 0 <= row < -(-h // VIEWER_TILE)

    def tile_png(self, level: int, col: int, row: int, ext: str) -> bytes | None:
        """The tile as PNG bytes; None for one that does not exist."""
        if ext != self.fmt or not self.has_tile(level, col, row):
            return None
        return encode_png(self.tile(level, col, row))

    def tile(self, level: int, col: int, row: int) -> np.ndarray:
        """The tile (h, w, 3|4) uint8, from the cache when its version is current."""
        f = 1 << (self.max_level - level)
        w, h = self.level_size(level)
        span = VIEWER_TILE * f
        box = (row * span, min((row + 1) * span, self.height), col * span, min((col + 1) * span, self.width))
        key = (self.name, level, col, row)
        version = self.layer.version(box)
        hit = self.cache.get(key, version)
        if hit is not None:
            return hit
        tile = self.layer.direct(f, box)
        if tile is None:  # too coarse to read directly: the 2x2 mean of the four finer tiles
            children = [[self.tile(level + 1, 2 * col + dx, 2 * row + dy) for dx in (0, 1)
                         if self.has_tile(level + 1, 2 * col + dx, 2 * row + dy)]
                        for dy in (0, 1) if self.has_tile(level + 1, 2 * col, 2 * row + dy)]
            tile = reduce2(np.concatenate([np.concatenate(r, axis=1) for r in children], axis=0))
        self.cache.put(key, version, tile, pinned=w * h <= PIN_PIXELS)
        return tile


class StaticDzi:
    """An existing DZI on disk, served as is."""

    def __init__(self, path: Path):
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            raise BadInput(f"cannot read DZI {path}: {exc}") from None
        size = root.find("{*}Size")
        if not root.tag.endswith("Image") or size is None:
            raise BadInput(f"{path} is not a DeepZoom (.dzi) descriptor")
        self.path = path
        self.files = dzi_files_dir(path)
        self.width, self.height = int(size.get("Width")), int(size.get("Height"))

    def dzi(self) -> bytes:
        return self.path.read_bytes()

    def tile_png(self, level: int, col: int, row: int, ext: str) -> bytes | None:
        path = self.files / str(level) / f"{col}_{row}.{ext}"
        return path.read_bytes() if path.is_file() else None


