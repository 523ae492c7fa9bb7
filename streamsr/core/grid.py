"""Block-grid geometry: blocks, their clamped neighbours, the grid, and the image <-> blocks reshape.

The one owner of these concepts: the full-image reference (core/denoiser.py) and the streaming planner
(stream/planner.py) both use them. A block (r, c) attends to itself and to its top-left, left and top
neighbours, clamped at the image border exactly as the official full-image mode does (missing
neighbours are duplicates of existing blocks). No torch import: the two reshapes are einops on
whatever tensor they are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from einops import rearrange

Block = tuple[int, int]  # (row, col) in blocks


class Neighbors(NamedTuple):
    """The keys of a block, in the official slot order [self, top-left, left, top]."""

    self: Block
    top_left: Block
    left: Block
    top: Block


def neighbors(r: int, c: int) -> Neighbors:
    """Neighbours of block (r, c), clamped at the top and left border (official `full` mode)."""
    up, lf = max(r - 1, 0), max(c - 1, 0)
    return Neighbors(self=(r, c), top_left=(up, lf), left=(r, lf), top=(up, c))


@dataclass(frozen=True)
class Grid:
    rows: int  # blocks per column
    cols: int  # blocks per row

    def __post_init__(self) -> None:
        if self.rows <= 0 or self.cols <= 0:
            raise ValueError(f"a grid needs at least one block, got {self.rows}x{self.cols}")

    @classmethod
    def for_image(cls, height: int, width: int, block_size: int) -> "Grid":
        if height % block_size or width % block_size or height <= 0 or width <= 0:
            raise ValueError(f"image size {width}x{height} is not a positive multiple of the block size "
                             f"{block_size}")
        return cls(height // block_size, width // block_size)

    def blocks(self) -> list[Block]:
        """Every block, raster order."""
        return [(r, c) for r in range(self.rows) for c in range(self.cols)]

    def index(self, block: Block) -> int:
        """Position of `block` in raster order."""
        return block[0] * self.cols + block[1]


def image_to_blocks(img, block: int):
    """(B, C, gh*s, gw*s) -> (B, gh*gw, C, s, s), blocks in raster order."""
    return rearrange(img, "b c (gh s) (gw t) -> b (gh gw) c s t", s=block, t=block)


def blocks_to_image(blocks, grid: Grid):
    """(B, gh*gw, C, s, s) -> (B, C, gh*s, gw*s)."""
    return rearrange(blocks, "b (gh gw) c s t -> b c (gh s) (gw t)", gh=grid.rows, gw=grid.cols)
