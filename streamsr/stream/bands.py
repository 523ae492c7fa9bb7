"""Column bands (issue 12, item 3), pure Python like planner.py: one sweep split into bands of batch columns
that run as a wavefront, each band with its own K/V frontier.

A block reads the K/V of its left, top and top-left neighbours (core/grid.neighbors), never of a block to
its right. So band k, batch columns [col0, col1), needs from the band to its left only that band's last
block column, one batch row at a time: before its first batch of a batch row it receives those blocks'
K/V (every layer) and puts them in its frontier (`BatchPlan.receive`), and after its last batch of a batch
row it sends its own last column the same way (`BatchPlan.send`). Each band's frontier then holds a row of
its own width (plus a batch height and a corner), not a row of the whole image: `band_bound`.

`BandPlan` is `FrontierPlan` with the last reader of a block counted inside the band (a batch of another
band never reads this band's frontier) and a block that is sent kept until it is sent; `release` lists the
sent blocks that no later batch of the band reads, dropped once sent. The band's batches run in raster
order over the band (`batches`), the global batch indices kept (they are the job's task indices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .planner import Batch, BatchGrid, BatchPlan, Block, FrontierPlan, neighbors


@dataclass(frozen=True)
class Band:
    """Band `index` of `count`: the batch columns [col0, col1) of every batch row."""

    index: int
    count: int
    col0: int
    col1: int

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    def holds(self, batch_col: int) -> bool:
        return self.col0 <= batch_col < self.col1


def split_bands(batch_cols: int, count: int) -> tuple[Band, ...]:
    """`count` bands over `batch_cols` batch columns, as even as they can be (the wider ones last)."""
    if not 1 <= count <= batch_cols:
        raise ValueError(f"{count} column band(s) over {batch_cols} batch column(s): at most one band per "
                         "batch column")
    edges = [k * batch_cols // count for k in range(count + 1)]
    return tuple(Band(k, count, edges[k], edges[k + 1]) for k in range(count))


def band_of(batches: BatchGrid, count: int, batch_index: int) -> int:
    """The band of `count` (split_bands) that holds batch `batch_index`: the largest k whose first column
    floor(k C / count) is at most the batch's column c, floor(((c + 1) count - 1) / C)."""
    return ((batch_index % batches.cols + 1) * count - 1) // batches.cols


def band_blocks_before(batches: BatchGrid, band: Band, count: int) -> int:
    """Blocks of `band` in the first `count` batches (raster order)."""
    shape, grid = batches.shape, batches.grid
    first = band.col0 * shape.cols
    row, rest = divmod(count, batches.cols)
    done = min(row * shape.rows, grid.rows) * (min(band.col1 * shape.cols, grid.cols) - first)  # whole batch rows
    if row >= batches.rows or rest <= band.col0:
        return done
    height = min(shape.rows, grid.rows - row * shape.rows)
    return done + height * (min(min(rest, band.col1) * shape.cols, grid.cols) - first)


def band_bound(batches: BatchGrid, band: Band) -> int:
    """The most blocks of K/V a band's frontier holds at once (tests/test_bands.py checks it exhaustively):
    the band's block columns, the batch height and a corner, as frontier_bound for a grid that wide."""
    shape, grid = batches.shape, batches.grid
    width = min(band.col1 * shape.cols, grid.cols) - band.col0 * shape.cols
    return width + shape.rows + 1


@dataclass(frozen=True)
class BandPlan(FrontierPlan):
    """The frontier plan of one band (module docstring); `batch_plan` adds receive, send and release."""

    band: Band = Band(0, 1, 0, 1)

    def __post_init__(self) -> None:
        if self.band != split_bands(self.batches.cols, self.band.count)[self.band.index]:
            raise ValueError(f"{self.band} is not a band of {self.batches.cols} batch columns")

    @property
    def block_cols(self) -> tuple[int, int]:
        """The band's block columns [first, past the last)."""
        bw = self.batches.shape.cols
        return self.band.col0 * bw, min(self.band.col1 * bw, self.batches.grid.cols)

    def band_batches(self) -> Iterator[Batch]:
        """The band's batches, raster order over the band."""
        return (self.batches[row * self.batches.cols + col]
                for row in range(self.batches.rows) for col in range(self.band.col0, self.band.col1))

    def next_in_band(self, batch: Batch) -> Batch | None:
        col, row = batch.index % self.batches.cols, batch.index // self.batches.cols
        if col + 1 < self.band.col1:
            return self.batches[batch.index + 1]
        return self.batches[(row + 1) * self.batches.cols + self.band.col0] if row + 1 < self.batches.rows else None

    def last_reader(self, block: Block) -> int:
        """The last batch of this band that reads `block` from outside its own batch; -1 if none."""
        r, c = block
        own = self.batches.index_of(block)
        grid, last = self.batches.grid, -1
        for y in (r, r + 1):
            for x in (c, c + 1):
                if y >= grid.rows or x >= grid.cols:
                    continue
                reader = self.batches.index_of((y, x))
                if reader != own and self.band.holds(reader % self.batches.cols) and block in neighbors(y, x)[1:]:
                    last = max(last, reader)
        return last

    def send(self, batch: Batch) -> tuple[Block, ...]:
        """The batch's blocks whose K/V go to the next band after it: its column at the band's right edge."""
        edge = self.block_cols[1] - 1
        if self.band.last or batch.col0 + batch.cols - 1 != edge:
            return ()
        return tuple((r, edge) for r in range(batch.row0, batch.row0 + batch.rows))

    def receive(self, batch: Batch) -> tuple[Block, ...]:
        """Blocks of the band to the left that this batch's K/V arrive with: their column next to the band."""
        first = self.block_cols[0]
        if self.band.first or batch.col0 != first:
            return ()
        return tuple((r, first - 1) for r in range(batch.row0, batch.row0 + batch.rows))

    def keep(self, batch: Batch) -> tuple[Block, ...]:
        sent = set(self.send(batch))
        return tuple(blk for blk in batch.blocks() if blk in sent or self.last_reader(blk) > batch.index)

    def batch_plan(self, batch: Batch) -> BatchPlan:
        if not self.band.holds(batch.index % self.batches.cols):
            raise ValueError(f"batch {batch.index} is not in {self.band}")
        plan = super().batch_plan(batch)
        following = self.next_in_band(batch)
        send = self.send(batch)
        return BatchPlan(batch=batch, reads=plan.reads, slots=plan.slots, keep=plan.keep, drop=plan.drop,
                         next_reads=self.reads(following) if following is not None else (),
                         receive=self.receive(batch), send=send,
                         release=tuple(blk for blk in send if self.last_reader(blk) <= batch.index))

    def batch_plans(self) -> Iterator[BatchPlan]:
        return (self.batch_plan(batch) for batch in self.band_batches())


def band_plan(batches: BatchGrid, band: Band) -> FrontierPlan:
    """The frontier plan of `band`: the whole-row FrontierPlan when there is one band."""
    return FrontierPlan(batches) if band.count == 1 else BandPlan(batches, band)
