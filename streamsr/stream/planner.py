"""Grid geometry, block batches in raster order, neighbours and the frontier's live set. No torch.

A block (r, c) attends to itself and to its top-left, left and top neighbours, clamped at the image
border exactly as the official full-image mode does (missing neighbours are duplicates of existing
blocks). Batches of bh x bw blocks are visited in raster order; the frontier keeps a block's K/V from
the batch that made it until the last later batch that reads it (`last_reader`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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
        return [(r, c) for r in range(self.rows) for c in range(self.cols)]

    def index(self, block: Block) -> int:
        return block[0] * self.cols + block[1]


@dataclass(frozen=True)
class BatchShape:
    rows: int  # bh: blocks per batch column
    cols: int  # bw: blocks per batch row

    def __post_init__(self) -> None:
        if self.rows <= 0 or self.cols <= 0:
            raise ValueError(f"a block batch must be at least 1x1, got {self.rows}x{self.cols}")

    @classmethod
    def parse(cls, text: str) -> "BatchShape":
        """'RxC' -> BatchShape(R, C)."""
        try:
            r, c = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"batch shape must look like 2x3 (rows x cols), got {text!r}") from None
        return cls(r, c)


@dataclass(frozen=True)
class Batch:
    index: int  # position in raster order
    row0: int  # first block row
    col0: int  # first block col
    rows: int  # blocks in this batch vertically (smaller at the bottom edge)
    cols: int  # blocks in this batch horizontally (smaller at the right edge)

    def blocks(self) -> list[Block]:
        """Blocks of the batch, row-major."""
        return [(self.row0 + i, self.col0 + j) for i in range(self.rows) for j in range(self.cols)]

    def contains(self, block: Block) -> bool:
        r, c = block
        return self.row0 <= r < self.row0 + self.rows and self.col0 <= c < self.col0 + self.cols


@dataclass(frozen=True)
class BatchGrid:
    """The batches of a grid in raster order, as a lazy sequence: O(1) memory at any grid size."""

    grid: Grid
    shape: BatchShape

    @property
    def rows(self) -> int:
        """Batches per column (bands)."""
        return -(-self.grid.rows // self.shape.rows)

    @property
    def cols(self) -> int:
        """Batches per band."""
        return -(-self.grid.cols // self.shape.cols)

    def __len__(self) -> int:
        return self.rows * self.cols

    def __getitem__(self, index: int) -> Batch:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} outside 0..{len(self) - 1}")
        row0 = (index // self.cols) * self.shape.rows
        col0 = (index % self.cols) * self.shape.cols
        return Batch(index, row0, col0, min(self.shape.rows, self.grid.rows - row0),
                     min(self.shape.cols, self.grid.cols - col0))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def index_of(self, block: Block) -> int:
        """Index of the batch that holds `block`."""
        return (block[0] // self.shape.rows) * self.cols + block[1] // self.shape.cols


def raster_batches(grid: Grid, shape: BatchShape) -> BatchGrid:
    """Batches of up to shape.rows x shape.cols blocks covering the grid, in raster order."""
    return BatchGrid(grid, shape)


def external_reads(batch: Batch) -> list[Block]:
    """Blocks outside `batch` whose K/V the batch reads, in first-use order (row-major over the batch)."""
    seen: dict[Block, None] = {}
    for r, c in batch.blocks():
        for nb in neighbors(r, c)[1:]:
            if not batch.contains(nb):
                seen.setdefault(nb, None)
    return list(seen)


@dataclass(frozen=True)
class FrontierPlan:
    """Which blocks the frontier holds, from the batch that makes them to the last batch that reads them.

    Everything is computed per batch from the grid arithmetic, so a plan costs O(1) memory.
    """

    batches: BatchGrid

    def reads(self, batch: Batch) -> tuple[Block, ...]:
        """Blocks the batch takes from the frontier."""
        return tuple(external_reads(batch))

    def last_reader(self, block: Block) -> int:
        """The last batch (raster order) that reads `block` from outside its own batch; -1 if none."""
        r, c = block
        own = self.batches.index_of(block)
        last = -1
        for y in (r, r + 1):
            for x in (c, c + 1):
                if y >= self.batches.grid.rows or x >= self.batches.grid.cols:
                    continue
                reader = self.batches.index_of((y, x))
                if reader != own and block in neighbors(y, x)[1:]:
                    last = max(last, reader)
        return last

    def keep(self, batch: Batch) -> tuple[Block, ...]:
        """Blocks of the batch that later batches read."""
        return tuple(blk for blk in batch.blocks() if self.last_reader(blk) > batch.index)

    def drop(self, batch: Batch) -> tuple[Block, ...]:
        """Blocks whose last reader is this batch."""
        return tuple(blk for blk in self.reads(batch) if self.last_reader(blk) == batch.index)

    def live_after(self, index: int) -> set[Block]:
        """Blocks held by the frontier once batch `index` has finished (for tests and reports)."""
        live: set[Block] = set()
        for batch in list(self.batches)[:index + 1]:
            live.difference_update(self.drop(batch))
            live.update(self.keep(batch))
        return live


def frontier_plan(grid: Grid, shape: BatchShape) -> FrontierPlan:
    return FrontierPlan(raster_batches(grid, shape))


def frontier_bound(grid: Grid, shape: BatchShape) -> int:
    """The most blocks of K/V the frontier may hold at once: blocks per row + batch height + 1."""
    return grid.cols + shape.rows + 1


# ---- the job's task list -------------------------------------------------------------------------
# A job is a flat list of idempotent tasks, each over one block batch:
#   init     x_T = up(LR) + sigma_max * eps(seed, block)            writes state[0]
#   predict  D(x_i, sigma_i) -> Euler step                           reads state[i%2]; writes pred, deriv
#                                                                    (or state[(i+1)%2] when it is final)
#   correct  D(pred, sigma_{i+1}) -> Heun correction                 reads pred, deriv, state[i%2];
#                                                                    writes state[(i+1)%2]
#   stats    per-channel moments of the result and of up(LR)         (global anchoring only)
#   anchor   anchoring applied and quantised into the output array
# followed by one `export` task (the output file). predict/correct tasks of one step form a sweep whose
# K/V frontier lives across its batches.
TASK_KINDS = ("init", "predict", "correct", "stats", "anchor", "export")


@dataclass(frozen=True)
class Task:
    index: int  # position in the job's task list (the cursor)
    kind: str  # one of TASK_KINDS
    step: int  # sampler step i (-1 for init/stats/anchor/export)
    batch: Batch | None  # None for export

    @property
    def sweep(self) -> tuple[str, int]:
        """Tasks of one sweep share a K/V frontier."""
        return (self.kind, self.step)

    @property
    def is_model(self) -> bool:
        return self.kind in ("predict", "correct")


def sampler_stages(steps: int, sampler: str) -> list[tuple[str, int]]:
    """(kind, step) of every denoiser sweep: Heun corrects every step but the last (to sigma 0)."""
    stages = []
    for i in range(steps):
        stages.append(("predict", i))
        if sampler == "heun" and i < steps - 1:
            stages.append(("correct", i))
    return stages


@dataclass(frozen=True)
class TaskList:
    """A job's tasks as a lazy sequence: sweeps x batches, then one export task."""

    batches: BatchGrid
    sweeps: tuple[tuple[str, int], ...]  # (kind, step) of each sweep, in order

    def __len__(self) -> int:
        return len(self.sweeps) * len(self.batches) + 1

    def __getitem__(self, index: int) -> Task:
        n = len(self.batches)
        if index == len(self) - 1:
            return Task(index, "export", -1, None)
        if not 0 <= index < len(self) - 1:
            raise IndexError(f"task {index} outside 0..{len(self) - 1}")
        kind, step = self.sweeps[index // n]
        return Task(index, kind, step, self.batches[index % n])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def model_blocks(self) -> int:
        """Block evaluations of the denoiser over the whole job."""
        sweeps = sum(1 for kind, _ in self.sweeps if kind in ("predict", "correct"))
        return sweeps * self.batches.grid.rows * self.batches.grid.cols


def job_tasks(grid: Grid, shape: BatchShape, steps: int, sampler: str, anchor: str) -> TaskList:
    sweeps: list[tuple[str, int]] = [("init", -1), *sampler_stages(steps, sampler)]
    if anchor == "global":
        sweeps.append(("stats", -1))
    sweeps.append(("anchor", -1))
    return TaskList(raster_batches(grid, shape), tuple(sweeps))
