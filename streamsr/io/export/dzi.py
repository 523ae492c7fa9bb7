"""DeepZoom export: `name.dzi` XML and `name_files/<level>/<col>_<row>.<jpg|png>`, tiles of 254 px with
1 px overlap, every level down to 1 x 1; 8-bit only (16-bit sources are rounded to 8 bits); JPEG tiles
unless there is alpha (then PNG). Each level, as the cascade delivers its rows, is cut into tile rows by
the one `Rebander` (with the overlap), so a level holds one tile row (+ overlap) at a time.

Written to `name.partial.dzi` + `name.partial_files`; at the end the old `name.dzi` goes first (it is
what marks a complete DeepZoom image), the tile folder is replaced, then the new `name.dzi` lands.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from ...errors import BadInput
from ..atomic import fsync_dir, partial_path, remove, replace_dir
from ..pyramid import Cascade, Rebander, level_sizes
from .base import ArraySource, ExportOptions, Progress, report

SUFFIXES = (".dzi",)
DZI_TILE = 254  # tile side without the overlap
DZI_OVERLAP = 1  # pixels each tile shares with each neighbour
DZI_PNG_LEVEL = 6  # zlib level of PNG tiles


def dzi_files_dir(path: os.PathLike | str) -> Path:
    """The tile folder of a DeepZoom image: out.dzi -> out_files."""
    path = Path(path)
    return path.with_name(f"{path.stem}_files")


def looks_like_dzi_tiles(path: Path) -> bool:
    """A folder of numbered level folders only: an existing tile folder that an export may replace."""
    try:
        return all(p.is_dir() and p.name.isdigit() for p in path.iterdir())
    except OSError:
        return False


def dzi_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """DeepZoom levels, full size first, down to 1 x 1 (ceil(log2(max side)) + 1 of them)."""
    return level_sizes(height, width, lambda h, w: h == 1 and w == 1)


def dzi_tile_counts(height: int, width: int, *, tile_size: int = DZI_TILE) -> list[tuple[int, int]]:
    """(columns, rows) of tiles per DeepZoom level, level 0 (1 x 1) first."""
    return [(-(-w // tile_size), -(-h // tile_size)) for h, w in reversed(dzi_sizes(height, width))]


def dzi_xml(width: int, height: int, tile_format: str, *, tile_size: int = DZI_TILE,
            overlap: int = DZI_OVERLAP) -> str:
    """The DeepZoom descriptor (the `.dzi` file) of a width x height image."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{tile_format}" '
            f'Overlap="{overlap}" TileSize="{tile_size}">\n'
            f'  <Size Width="{width}" Height="{height}"/>\n'
            '</Image>\n')


class _DziLevel:
    """Cuts one DeepZoom level into tiles as its rows arrive (a cascade sink)."""

    def __init__(self, directory: Path, height: int, width: int, channels: int, save):
        self.directory, self.width, self.save = directory, width, save
        self.row = 0  # next tile row
        self.bands = Rebander(DZI_TILE, height, width, channels, np.uint8, self._cut, overlap=DZI_OVERLAP)
        directory.mkdir()

    def __call__(self, rows: np.ndarray) -> None:
        self.bands(rows)

    def _cut(self, y0: int, band: np.ndarray) -> None:
        """Tile row `self.row`: band (rows, W, C) holds its rows and the overlap above and below."""
        for col in range(-(-self.width // DZI_TILE)):
            x0 = max(0, col * DZI_TILE - DZI_OVERLAP)
            x1 = min(self.width, (col + 1) * DZI_TILE + DZI_OVERLAP)
            self.save(self.directory / f"{col}_{self.row}", band[:, x0:x1])
        self.row += 1

    @property
    def complete(self) -> bool:
        return self.bands.complete


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
            image.save(out, "PNG", compress_level=DZI_PNG_LEVEL)
        with open(f"{stem}.{self.suffix}", "wb") as fh:
            fh.write(out.getbuffer())

    def __call__(self, stem: Path, tile: np.ndarray) -> None:
        """Save tile (h, w, C) as `stem.<suffix>`; `tile` may be a view of a reused buffer."""
        if self.pool is None:
            self._write(stem, tile)
            return
        self.pending.append(self.pool.submit(self._write, stem, tile.copy()))
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


def temporaries(path: Path) -> list[Path]:
    """What a failed DeepZoom export may leave."""
    return [partial_path(path), dzi_files_dir(partial_path(path))]


def export_dzi(src: ArraySource, path: Path, options: ExportOptions, progress: Progress | None) -> None:
    """Write `src` (8-bit) to `path` and its tile folder as a DeepZoom image."""
    alpha = src.channels in (2, 4)
    suffix = (options.tile_format or ("png" if alpha else "jpg")).lower().replace("jpeg", "jpg")
    if suffix not in ("jpg", "png"):
        raise BadInput(f"unknown DeepZoom tile format {options.tile_format!r}; supported: jpg, png")
    if suffix == "jpg" and alpha:
        raise BadInput("DeepZoom JPEG tiles cannot hold alpha; use tile format png")
    sizes = dzi_sizes(src.height, src.width)
    top = len(sizes) - 1  # DeepZoom numbers levels from 1 x 1 (0) up to full size (top)
    tmp_xml, tiles_dir = partial_path(path), dzi_files_dir(path)
    tmp_dir = dzi_files_dir(tmp_xml)
    remove(tmp_dir)
    tmp_dir.mkdir()
    saver = _TileSaver(suffix, options.quality, options.workers)
    try:
        sinks = [_DziLevel(tmp_dir / str(top - k), h, w, src.channels, saver) for k, (h, w) in enumerate(sizes)]
        cascade = Cascade(sinks)
        for y0, band in src.bands(bit_depth=8):
            cascade.push(band)
            report(progress, y0 + len(band), src.height)
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
    replace_dir(tmp_dir, tiles_dir)
    os.replace(tmp_xml, path)
    fsync_dir(path.parent)
