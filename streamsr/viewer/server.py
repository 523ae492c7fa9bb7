"""`streamsr view`: a local deep-zoom viewer of a job (LR input vs output), a DZI, or an OME-Zarr/zarr image.

A small HTTP server on 127.0.0.1 (stdlib ThreadingHTTPServer) serves a page with two OpenSeadragon
viewers (vendored in viewer_static/openseadragon, nothing is fetched at run time): the LR input
upsampled x4 and the output, side by side or overlaid with a slider, zoom and pan synchronised, plus
the job's settings and progress polled from /api/status.

Endpoints:
    GET /                                       the page (viewer_static/index.html)
    GET /static/<file>                          viewer_static/ (JS, CSS, OpenSeadragon and its images)
    GET /api/info                               what is shown: kind, size, layers, tile URLs (JSON)
    GET /api/status                             job progress and settings (job_status + tile state, JSON)
    GET /dzi/<layer>.dzi                        DeepZoom descriptor of layer `output` or `lr`
    GET /dzi/<layer>_files/<level>/<col>_<row>.png   one 256 px tile (no overlap), rendered on the fly

Tiles of a job are rendered from its zarr arrays, opened read-only and without the job's lock, so the
viewer works while the job runs. `lr` is the LR (in [-1, 1]) bilinearly upsampled x4 into the output's
pixel grid, so both layers align; `output` is the output array cropped to the unpadded size.

Which output blocks are done: a block is done when the anchor task of its block batch is committed,
i.e. its batch index within the final `anchor` sweep is < cursor - (first task of that sweep), read
from job.json (or status "done"). The manifest is written after the data it describes, so a done block
is always on disk; a chunk written but not yet committed still shows the LR. Blocks not done show the
upsampled LR, never black.

Zoomed-out levels: factor f = 2**(max_level - level). Tiles with f <= DIRECT_MAX are computed directly
from a full-resolution region (the LR layer straight from LR pixels up to 4 * DIRECT_MAX); coarser tiles
are the 2x2 mean of their four child tiles. Tiles are kept in a bounded LRU cache (`cache_mb`), the small
top levels (<= 1024x1024 pixels each) pinned; an entry is keyed by the number of done blocks under the
tile, so tiles refresh as the job progresses. Memory stays bounded at any image size; the first look at
the top levels of a gigapixel output reads the output once.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import threading
import time
import webbrowser
import xml.etree.ElementTree as ET
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from ..errors import BadInput

TILE = 256  # DeepZoom tile side (no overlap)
DIRECT_MAX = 4  # largest downsampling factor computed straight from a full-resolution region
PIN_PIXELS = 1 << 20  # levels at most this many pixels stay cached for good
RENDER_THREADS = 2  # tiles rendered at once (the rest of the requests wait)
STATIC = Path(__file__).resolve().parent / "static"
SCALE = 4  # LR -> output (streamsr.config.SR_SCALE; not imported to keep this module light)


# ---- pixels ---------------------------------------------------------------------------------------
def halve(a: np.ndarray) -> np.ndarray:
    """2x2 mean of an (h, w, C) uint8 image; an odd last row/column is averaged with itself."""
    if a.shape[0] % 2:
        a = np.concatenate([a, a[-1:]], axis=0)
    if a.shape[1] % 2:
        a = np.concatenate([a, a[:, -1:]], axis=1)
    s = (a[0::2, 0::2].astype(np.uint16) + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4
    return s.astype(np.uint8)


def halve_times(a: np.ndarray, factor: int) -> np.ndarray:
    while factor > 1:
        a, factor = halve(a), factor // 2
    return a


def to_uint8(a: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Any pixel dtype to uint8: uint16 by /257, other ints by their max, floats from `value_range`."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
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


def bilinear_region(read, src_h: int, src_w: int, box: tuple[int, int, int, int], scale: int) -> np.ndarray:
    """Box (y0, y1, x0, x1) of the x`scale` bilinear upsampling of a (C, src_h, src_w) image.

    `read(y0, y1, x0, x1)` returns a (C, h, w) float32 source region; the result is (C, h, w) float32.
    Equals torch's F.interpolate(mode="bilinear", align_corners=False) restricted to the box.
    """
    y0, y1, x0, x1 = box
    ly, hy, ay, by, wy = bilinear_axis(src_h, y0, y1, scale)
    lx, hx, ax, bx, wx = bilinear_axis(src_w, x0, x1, scale)
    src = read(ly, hy, lx, hx)
    rows = src[:, ay, :] * (1 - wy)[None, :, None] + src[:, by, :] * wy[None, :, None]
    return rows[:, :, ax] * (1 - wx) + rows[:, :, bx] * wx


def encode_png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# ---- layers: images in output pixel coordinates ---------------------------------------------------
class Layer:
    """An image of width x height pixels that can render downsampled regions as uint8 RGB(A)."""

    width: int
    height: int

    def direct(self, factor: int, box: tuple[int, int, int, int]) -> np.ndarray | None:
        """Box (y0, y1, x0, x1) (full-resolution coordinates, y0 and x0 multiples of `factor`) reduced
        by `factor` (a power of 2) to (ceil(h / factor), ceil(w / factor), C); None when `factor` is too
        coarse to compute directly (the pyramid then builds it from finer tiles)."""
        raise NotImplementedError

    def version(self, box: tuple[int, int, int, int]) -> int:
        """Changes (grows) whenever the pixels of the box change; 0 for a fixed image."""
        return 0


class JobView:
    """A job dir opened read-only: geometry, arrays and which output blocks are done."""

    def __init__(self, root: Path):
        import zarr

        from ..stream.planner import BatchShape, job_tasks
        from ..jobs.store import MANIFEST, STORE, Geometry, read_manifest

        self.root = root
        self.manifest_path = root / MANIFEST
        m = read_manifest(root)
        self.geo = Geometry(**m["geometry"])
        try:
            group = zarr.open_group(root / STORE, mode="r")
            self.lr = group["lr"]
            self.output = group["output"]
            self.alpha = group["alpha"] if "alpha" in group else None
        except Exception as exc:  # zarr raises several types for a missing or damaged store
            raise BadInput(f"cannot open the job store {root / STORE}: {exc}") from None
        self.height, self.width = self.geo.hr_size
        job = m["job"]
        self.shape = BatchShape(job["batch_rows"], job["batch_cols"])
        tasks = job_tasks(self.geo.grid, self.shape, job["steps"], job["sampler"], job["anchor"])
        self.tasks = tasks
        self.n_batches = len(tasks.batches)
        self.batch_cols = tasks.batches.cols
        self.anchor_start = tasks.sweeps.index(("anchor", -1)) * self.n_batches
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._manifest = m

    def manifest(self) -> dict:
        """The manifest, re-read when job.json changed (it is replaced atomically by the job)."""
        from ..jobs.store import read_manifest

        try:
            st = self.manifest_path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return self._manifest
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._manifest, self._stamp = read_manifest(self.root), stamp
                except Exception:  # mid-replace on an odd filesystem: keep the last good one
                    pass
            return self._manifest

    def done_batches(self) -> int:
        """Batches of the anchor sweep that are committed: their output blocks are final."""
        m = self.manifest()
        if m.get("status") == "done":
            return self.n_batches
        return min(max(int(m.get("cursor", 0)) - self.anchor_start, 0), self.n_batches)

    def done_mask(self, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
        """Done flags of blocks rows x cols (block indices) given k done anchor batches."""
        if k >= self.n_batches:
            return np.ones((len(rows), len(cols)), dtype=bool)
        index = (rows[:, None] // self.shape.rows) * self.batch_cols + cols[None, :] // self.shape.cols
        return index < k

    def done_blocks(self, box: tuple[int, int, int, int] | None = None, k: int | None = None) -> int:
        grid, bs = self.geo.grid, self.geo.block_size
        y0, y1, x0, x1 = box or (0, grid.rows * bs, 0, grid.cols * bs)
        rows, cols = np.arange(y0 // bs, -(-y1 // bs)), np.arange(x0 // bs, -(-x1 // bs))
        k = self.done_batches() if k is None else k
        return int(self.done_mask(rows, cols, k).sum())


class JobLrLayer(Layer):
    """The job's LR, bilinearly upsampled x4 into the output's pixel grid (padding cropped)."""

    def __init__(self, job: JobView):
        self.job = job
        self.width, self.height = job.width, job.height
        self.lh, self.lw = job.geo.lr_height, job.geo.lr_width
        self.channels = 4 if job.alpha is not None else 3

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(C, h, w) float32 LR region in [0, 1] (colour from [-1, 1], then alpha)."""
        rgb = (np.asarray(self.job.lr[0, :, y0:y1, x0:x1], dtype=np.float32) + 1) * 0.5
        if self.job.alpha is None:
            return rgb
        return np.concatenate([rgb, np.asarray(self.job.alpha[0, :, y0:y1, x0:x1], dtype=np.float32)], axis=0)

    def direct(self, factor, box):
        y0, y1, x0, x1 = box
        if factor < SCALE:
            up = bilinear_region(self._read, self.lh, self.lw, box, SCALE)  # (C, h, w)
            return halve_times(to_uint8(up.transpose(1, 2, 0)), factor)
        if factor > SCALE * DIRECT_MAX:
            return None
        region = self._read(y0 // SCALE, -(-y1 // SCALE), x0 // SCALE, -(-x1 // SCALE))
        return halve_times(to_uint8(region.transpose(1, 2, 0)), factor // SCALE)


class JobOutputLayer(Layer):
    """The job's output array (cropped); blocks not done yet show the LR layer instead."""

    def __init__(self, job: JobView, lr: JobLrLayer):
        self.job, self.lr = job, lr
        self.width, self.height = job.width, job.height
        self.channels = display_channels(job.output.shape[2])

    def version(self, box):
        return self.job.done_blocks(box)

    def direct(self, factor, box):
        if factor > DIRECT_MAX:
            return None
        y0, y1, x0, x1 = box
        job, bs = self.job, self.job.geo.block_size
        k = job.done_batches()
        h, w = -(-(y1 - y0) // factor), -(-(x1 - x0) // factor)
        ys, xs = y0 + np.arange(h) * factor, x0 + np.arange(w) * factor
        brows, bcols = np.unique(ys // bs), np.unique(xs // bs)
        block_done = job.done_mask(brows, bcols, k)
        if block_done.all():
            return self._output(factor, box)
        fallback = self.lr.direct(factor, box)
        if not block_done.any():
            return fallback
        done = job.done_mask(ys // bs, xs // bs, k)  # per level pixel
        return np.where(done[..., None], self._output(factor, box), fallback)

    def _output(self, factor, box):
        y0, y1, x0, x1 = box
        pixels = to_display(to_uint8(np.asarray(self.job.output[y0:y1, x0:x1, :])))
        return halve_times(pixels, factor)


class ZarrLayer(Layer):
    """A zarr array, or the levels of an OME-Zarr multiscale image (factor, array) finest first."""

    def __init__(self, levels: list[tuple[int, object]], axes: str, value_range=None):
        self.levels = levels
        self.axes = axes
        self.value_range = value_range
        shape = levels[0][1].shape
        self.height, self.width = shape[axes.index("y")], shape[axes.index("x")]
        nc = shape[axes.index("c")] if "c" in axes else 1
        self.channels = display_channels(nc)

    def _read(self, arr, y0, y1, x0, x1) -> np.ndarray:
        index = []
        for name in self.axes:
            index.append(slice(y0, y1) if name == "y" else slice(x0, x1) if name == "x" else
                         slice(None) if name == "c" else 0)
        region = np.asarray(arr[tuple(index)])
        kept = [n for n in self.axes if n in "yxc"]
        if "c" not in kept:
            region, kept = region[..., None], kept + ["c"]
        return region.transpose([kept.index(n) for n in "yxc"])

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
        return halve_times(to_display(to_uint8(region, self.value_range)), factor // g)


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
        with self._lock:
            hit = self._pinned.get(key)
            if hit is None:
                hit = self._lru.get(key)
                if hit is not None:
                    self._lru.move_to_end(key)
            return hit[1] if hit is not None and hit[0] == version else None

    def put(self, key, version, tile: np.ndarray, pinned: bool) -> None:
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
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
                f'Format="{self.fmt}" Overlap="0" TileSize="{TILE}"><Size Width="{self.width}" '
                f'Height="{self.height}"/></Image>\n').encode()

    def level_size(self, level: int) -> tuple[int, int]:
        f = 1 << (self.max_level - level)
        return -(-self.width // f), -(-self.height // f)

    def has_tile(self, level: int, col: int, row: int) -> bool:
        if not 0 <= level <= self.max_level:
            return False
        w, h = self.level_size(level)
        return 0 <= col < -(-w // TILE) and 0 <= row < -(-h // TILE)

    def tile_png(self, level: int, col: int, row: int, ext: str) -> bytes | None:
        if ext != self.fmt or not self.has_tile(level, col, row):
            return None
        return encode_png(self.tile(level, col, row))

    def tile(self, level: int, col: int, row: int) -> np.ndarray:
        f = 1 << (self.max_level - level)
        w, h = self.level_size(level)
        span = TILE * f
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
            tile = halve(np.concatenate([np.concatenate(r, axis=1) for r in children], axis=0))
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
        self.files = path.with_name(path.stem + "_files")
        self.width, self.height = int(size.get("Width")), int(size.get("Height"))

    def dzi(self) -> bytes:
        return self.path.read_bytes()

    def tile_png(self, level: int, col: int, row: int, ext: str) -> bytes | None:
        path = self.files / str(level) / f"{col}_{row}.{ext}"
        return path.read_bytes() if path.is_file() else None


# ---- what a path is ---------------------------------------------------------------------------------
class View:
    """What the server shows: named layers (DeepZoom sources) and a status."""

    def __init__(self, kind: str, title: str, layers: dict, job: JobView | None = None, extra: dict | None = None):
        self.kind, self.title, self.layers, self.job, self.extra = kind, title, layers, job, extra or {}
        first = next(iter(layers.values()))
        self.width, self.height = first.width, first.height

    def tiles_version(self) -> int:
        return self.job.done_batches() if self.job is not None else 0

    def info(self) -> dict:
        v = self.tiles_version()
        return {"kind": self.kind, "title": self.title, "width": self.width, "height": self.height,
                "tile_size": TILE, "tiles_version": v,
                "layers": {name: f"dzi/{name}.dzi?v={v}" for name in self.layers}}

    def status(self) -> dict:
        if self.job is None:
            return {"kind": self.kind, "title": self.title, "status": "static", "width": self.width,
                    "height": self.height, "tiles_version": 0, **self.extra}
        from ..jobs.run import job_status

        job = self.job
        s = job_status(job.root)
        k = job.done_batches()
        cursor = s["cursor"]
        phase = None
        if cursor < len(job.tasks):
            task = job.tasks[cursor]
            phase = (f"{task.kind} {task.step + 1}/{s['job']['steps']}" if task.is_model else task.kind)
            phase += f", batch {task.batch.index + 1}/{job.n_batches}" if task.batch is not None else ""
        grid = job.geo.grid
        s.update(kind=self.kind, title=self.title, phase=phase, tiles_version=k, anchor_batches_done=k,
                 anchor_batches=job.n_batches, output_blocks_done=job.done_blocks(k=k),
                 output_blocks=grid.rows * grid.cols, width=self.width, height=self.height, **self.extra)
        return s


def _job_root(path: Path) -> tuple[Path, dict]:
    """A job dir, or the current stage of a x16 job dir (stage2 once it exists)."""
    from ..jobs.store import MANIFEST

    if (path / "chain.json").is_file():
        stages = [path / s for s in ("stage2", "stage1") if (path / s / MANIFEST).is_file()]
        if not stages:
            raise BadInput(f"x16 job {path} has not started a stage yet")
        return stages[0], {"chain": str(path), "chain_stage": stages[0].name}
    return path, {}


def _open_zarr(path: Path, value_range=None) -> ZarrLayer:
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:
        raise BadInput(f"cannot open {path} as zarr: {exc}") from None
    if isinstance(node, zarr.Array):
        return ZarrLayer([(1, node)], _guess_axes(node.shape), value_range)
    attrs = dict(node.attrs)
    multiscales = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")
    if multiscales:
        ms = multiscales[0]
        axes = "".join(a["name"] if isinstance(a, dict) else a for a in ms["axes"])
        if "y" not in axes or "x" not in axes:
            raise BadInput(f"{path}: OME-Zarr axes {axes!r} have no y and x")
        arrays = [node[d["path"]] for d in ms["datasets"]]
        h0 = arrays[0].shape[axes.index("y")]
        levels = []
        for arr in arrays:
            ratio = h0 / max(arr.shape[axes.index("y")], 1)
            g = 1 << max(0, round(math.log2(ratio)))
            if abs(ratio - g) <= g * 0.05 + 1 and all(g != lv[0] for lv in levels):
                levels.append((g, arr))
        return ZarrLayer(levels, axes, value_range)
    for name in ("output", "0", "s0"):
        if name in node and isinstance(node[name], zarr.Array):
            return ZarrLayer([(1, node[name])], _guess_axes(node[name].shape), value_range)
    raise BadInput(f"{path}: a zarr group with no image (no OME multiscales, no `output` array)")


def _guess_axes(shape: tuple) -> str:
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3:
        return "yxc" if shape[2] <= 4 else "cyx"
    if len(shape) == 4 and shape[1] <= 4:
        return "tcyx"  # (1, C, H, W) like the job arrays
    raise BadInput(f"cannot tell the axes of a zarr array of shape {shape}")


def open_view(path, cache_mb: int = 256) -> View:
    """What `path` is (job dir, x16 job dir, .dzi, OME-Zarr / zarr) as a View."""
    from ..jobs.store import MANIFEST

    path = Path(path).expanduser().resolve()
    cache = TileCache(cache_mb << 20)
    if not path.exists():
        raise BadInput(f"{path} does not exist")
    if path.is_file():
        if path.suffix.lower() in (".dzi", ".xml"):
            return View("dzi", path.name, {"output": StaticDzi(path)})
        raise BadInput(f"{path}: not a job dir, a .dzi or a zarr store")
    if path.name.endswith(".zarr") and (path.parent / MANIFEST).is_file():
        path = path.parent  # the state.zarr of a job: show the job
    if (path / MANIFEST).is_file() or (path / "chain.json").is_file():
        root, extra = _job_root(path)
        job = JobView(root)
        lr = JobLrLayer(job)
        layers = {"lr": DeepZoom("lr", lr, cache), "output": DeepZoom("output", JobOutputLayer(job, lr), cache)}
        return View("job", str(path), layers, job, extra)
    dzis = sorted(path.glob("*.dzi"))
    if len(dzis) == 1 and not any((path / n).exists() for n in ("zarr.json", ".zgroup", ".zarray")):
        return View("dzi", dzis[0].name, {"output": StaticDzi(dzis[0])})
    if any((path / n).is_file() for n in ("zarr.json", ".zgroup", ".zarray")):
        return View("zarr", str(path), {"output": DeepZoom("output", _open_zarr(path), cache)})
    raise BadInput(f"{path}: not a streamsr job dir, a .dzi or a zarr store")


# ---- HTTP -------------------------------------------------------------------------------------------
TILE_RE = re.compile(r"^/dzi/(\w+)_files/(\d+)/(\d+)_(\d+)\.(\w+)$")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".webp": "image/webp", ".txt": "text/plain; charset=utf-8", ".json": "application/json",
         ".svg": "image/svg+xml"}


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, view: View, verbose: bool = False):
        self.view, self.verbose = view, verbose
        self.render_slots = threading.BoundedSemaphore(RENDER_THREADS)
        super().__init__(address, ViewerHandler)


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "streamsr-view"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)

    def send_body(self, code: int, body: bytes, ctype: str, cache: str = "no-cache") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, data: dict) -> None:
        self.send_body(200, json.dumps(data, default=str).encode(), "application/json", "no-store")

    def not_found(self) -> None:
        self.send_body(404, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        view = self.server.view
        try:
            if path in ("/", "/index.html"):
                return self.static("index.html")
            if path.startswith("/static/"):
                return self.static(path[len("/static/"):])
            if path == "/api/info":
                return self.send_json(view.info())
            if path == "/api/status":
                return self.send_json(view.status())
            if path.startswith("/dzi/") and path.endswith(".dzi"):
                layer = view.layers.get(path[len("/dzi/"):-len(".dzi")])
                return self.send_body(200, layer.dzi(), "application/xml") if layer else self.not_found()
            match = TILE_RE.match(path)
            if match:
                return self.tile(*match.groups())
            if path == "/favicon.ico":
                return self.send_body(204, b"", "image/x-icon")
            return self.not_found()
        except (BrokenPipeError, ConnectionResetError):
            return None
        except Exception as exc:  # one bad request must not stop the server
            print(f"streamsr view: error serving {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            try:
                self.send_body(500, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain; charset=utf-8")
            except OSError:
                pass

    def static(self, rel: str) -> None:
        file = (STATIC / rel).resolve()
        if STATIC not in file.parents or not file.is_file():
            return self.not_found()
        self.send_body(200, file.read_bytes(), TYPES.get(file.suffix.lower(), "application/octet-stream"))

    def tile(self, name: str, level: str, col: str, row: str, ext: str) -> None:
        layer = self.server.view.layers.get(name)
        if layer is None:
            return self.not_found()
        with self.server.render_slots:
            body = layer.tile_png(int(level), int(col), int(row), ext)
        if body is None:
            return self.not_found()
        self.send_body(200, body, TYPES.get("." + ext.lower(), "application/octet-stream"))


# ---- API and command --------------------------------------------------------------------------------
def serve(path, port: int = 0, open_browser: bool = False, *, cache_mb: int = 256,
          verbose: bool = False) -> tuple[ViewerServer, str]:
    """Serve `path` (job dir, x16 job dir, .dzi, OME-Zarr / zarr) on 127.0.0.1:`port` (0: any free port).

    The server already runs in a daemon thread when this returns (server, url); stop it with
    `server.shutdown(); server.server_close()`. Raises BadInput for a path it cannot show and OSError
    when the port is taken.
    """
    view = open_view(path, cache_mb=cache_mb)
    server = ViewerServer(("127.0.0.1", port), view, verbose)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="streamsr-view",
                     daemon=True).start()
    if open_browser:
        webbrowser.open(url)
    return server, url


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("path", help="job dir (also while it runs), x16 job dir, .dzi file, or OME-Zarr/zarr store")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: any free port)")
    parser.add_argument("--open", action="store_true", help="open the page in the default web browser")
    parser.add_argument("--cache-mb", type=int, default=256, help="memory for rendered tiles (default 256 MiB)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def main(args=None) -> int:
    """`streamsr view`: serve until Ctrl-C. `args` is an argparse.Namespace (from the CLI) or an argv list."""
    if args is None or isinstance(args, (list, tuple)):
        parser = add_arguments(argparse.ArgumentParser(prog="streamsr view", description=__doc__.splitlines()[0]))
        args = parser.parse_args(args)
    server, url = serve(args.path, port=args.port, open_browser=getattr(args, "open", False),
                        cache_mb=getattr(args, "cache_mb", 256), verbose=getattr(args, "verbose", False))
    print(f"streamsr view: {server.view.kind} {server.view.title} at {url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("streamsr view: stopped", file=sys.stderr)
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BadInput as exc:
        print(f"streamsr view: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
