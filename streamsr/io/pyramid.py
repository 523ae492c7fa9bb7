"""Bands and pyramids: the one band re-chunker (`Rebander`), the one 2x2 reducer (`reduce2`) and the
cascade that builds every level of a pyramid from level-0 rows as they arrive.

Every streaming reader and writer that regroups rows (the TIFF row writer, the PNG and TIFF/zarr band
readers, the pyramid writers, DeepZoom tile rows) goes through `Rebander`; every 2x reduction (export
pyramids, the viewer's zoomed-out tiles) is `reduce2`: the mean of each 2x2 box, round half up, an odd
last row or column averaged with itself (the same as replicating it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

REDUCE_ROWS = 64  # rows reduced per call by the cascade (bounds the reduction's temporaries)
MIN_LEVEL_SIDE = 512  # TIFF and zarr pyramids stop at the first level whose longest side is below it

Emit = Callable[[int, np.ndarray], None]  # (y0, band (rows, W, C)) -> None
Sink = Callable[[np.ndarray], None]  # rows (n, W, C) -> None


class Rebander:
    """Rows in, top to bottom, in pieces of any size; bands out to `emit(y0, band)`.

    Band k covers image rows [k * step - overlap, (k + 1) * step + overlap), clipped to [0, height): with
    overlap 0 the bands are exactly `step` rows (the last may be shorter); DeepZoom tile rows overlap
    their neighbours by a row or so. `band` is a view into one reused buffer: `emit` must copy what it
    keeps. Holds at most step + 2 * overlap rows.
    """

    def __init__(self, step: int, height: int, width: int, channels: int, dtype, emit: Emit, *,
                 overlap: int = 0):
        if step < 1 or overlap < 0:
            raise ValueError(f"bad band step {step} or overlap {overlap}")
        self.step, self.height, self.overlap, self.emit = step, height, overlap, emit
        self.buffer = np.empty((min(height, step + 2 * overlap), width, channels), dtype)  # (rows, W, C)
        self.y0 = self.fill = 0  # image row of buffer[0], rows held
        self.bands = 0  # bands emitted
        self.count = -(-height // step)  # bands in all

    def _end(self) -> int:
        """One past the last image row that the next band needs."""
        return min(self.height, (self.bands + 1) * self.step + self.overlap)

    def __call__(self, rows: np.ndarray) -> None:
        """Append rows (n, W, C) below those already received."""
        i = 0
        while i < len(rows):
            k = min(len(rows) - i, self._end() - (self.y0 + self.fill))
            if k <= 0 or self.complete:
                raise ValueError(f"more rows than the height {self.height}")
            self.buffer[self.fill: self.fill + k] = rows[i: i + k]
            self.fill, i = self.fill + k, i + k
            while not self.complete and self.y0 + self.fill == self._end():
                self._emit()  # twice when the last band is only overlap rows the one before already had

    def _emit(self) -> None:
        top = max(0, self.bands * self.step - self.overlap)
        self.emit(top, self.buffer[top - self.y0: self.fill])  # (rows, W, C)
        self.bands += 1
        if not self.complete:  # keep the rows the next band shares with this one
            keep_from = self.bands * self.step - self.overlap
            keep = self.y0 + self.fill - keep_from
            self.buffer[:keep] = self.buffer[self.fill - keep: self.fill]
            self.y0, self.fill = keep_from, keep

    @property
    def complete(self) -> bool:
        """Every band was emitted."""
        return self.bands == self.count


def reduce2(rows: np.ndarray) -> np.ndarray:
    """2x2 box reduction of (h, w, C) uint8|uint16: (ceil(h/2), ceil(w/2), C), round half up; an odd
    last row or column is averaged with itself (the same as replicating it)."""
    if rows.shape[0] % 2:
        rows = np.concatenate([rows, rows[-1:]])  # (h + 1, w, C)
    h, w, c = rows.shape
    if h == 0:
        return rows[:, : (w + 1) // 2]
    if rows.dtype == np.uint8 and c in (1, 3):  # Pillow's C reduce: same arithmetic, faster
        image = Image.fromarray(rows[:, :, 0] if c == 1 else rows)
        return np.asarray(image.reduce(2)).reshape(h // 2, (w + 1) // 2, c)
    wide = np.uint16 if rows.dtype == np.uint8 else np.uint32
    pairs = np.add(rows[0::2], rows[1::2], dtype=wide)  # (h/2, w, C)
    if w % 2:
        pairs = np.concatenate([pairs, pairs[:, -1:]], axis=1)  # (h/2, w + 1, C)
    pairs = pairs.reshape(h // 2, (w + 1) // 2, 2, c)
    total = np.add(pairs[:, :, 0], pairs[:, :, 1])  # (h/2, ceil(w/2), C)
    total += 2
    total >>= 2
    return total.astype(rows.dtype)


def reduce_by(image: np.ndarray, factor: int) -> np.ndarray:
    """`reduce2` applied log2(factor) times (factor a power of 2): (ceil(h/f), ceil(w/f), C)."""
    while factor > 1:
        image, factor = reduce2(image), factor // 2
    return image


def level_sizes(height: int, width: int, stop: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    """[(h, w)] of level 0 and each 2x reduction (ceil) until stop(h, w) is true for the last one."""
    sizes = [(height, width)]
    while not stop(*sizes[-1]) and sizes[-1] != (1, 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def pyramid_sizes(height: int, width: int, *, min_side: int = MIN_LEVEL_SIDE) -> list[tuple[int, int]]:
    """TIFF/zarr levels: down to the first one whose longest side is below `min_side`."""
    return level_sizes(height, width, lambda h, w: max(h, w) < min_side)


class Cascade:
    """Rows of level 0 in, top to bottom; each level's rows go to its sink as they arrive, and are
    reduced 2x into the next level (one odd row is held back per level until its pair comes)."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks
        self._odd: list[np.ndarray | None] = [None] * len(sinks)  # per level: (1, w, C) or None

    def push(self, rows: np.ndarray, level: int = 0) -> None:
        """Rows (n, w, C) of `level`, below those pushed before."""
        if not len(rows):
            return
        self.sinks[level](rows)
        if level + 1 == len(self.sinks):
            return
        if self._odd[level] is not None:
            rows = np.concatenate([self._odd[level], rows])  # (n + 1, w, C)
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
                self.push(reduce2(odd), level + 1)
