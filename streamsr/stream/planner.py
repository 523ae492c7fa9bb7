"""Planning, pure Python (no torch): block batches in raster order, the frontier's live set, the frozen
per-batch plan the engine executes, and the job's task list.

Grid geometry (Block, Neighbors, neighbors, Grid) is core/grid.py's, re-exported here. Batches of bh x bw
blocks are visited in raster order; the frontier keeps a block's K/V from the batch that made it until
the last later batch that reads it (`last_reader`). For each batch the planner hands the engine a
`BatchPlan` (reads, key-slot pool indices, keep, drop, the next batch's reads). A job is a flat
list of tasks, sweeps x batches (`job_tasks`), each task of a `TaskKind`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Iterator

from ..core.grid import Block, Grid, Neighbors, neighbors  # noqa: F401  (Grid, Neighbors: re-exported)


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


def batch_box(batch: Batch, block_size: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a batch in HR pixels."""
    return (batch.row0 * block_size, (batch.row0 + batch.rows) * block_size,
            batch.col0 * block_size, (batch.col0 + batch.cols) * block_size)


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

    def blocks_before(self, count: int) -> int:
        """Blocks in the first `count` batches (raster order)."""
        band, rest = divmod(count, self.cols)
        full = min(band * self.shape.rows, self.grid.rows) * self.grid.cols  # whole bands
        if rest == 0 or band >= self.rows:
            return full
        height = min(self.shape.rows, self.grid.rows - band * self.shape.rows)
        return full + height * min(rest * self.shape.cols, self.grid.cols)

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


Slots = tuple[int, int, int, int]  # pool indices of a block's key slots [self, top-left, left, top]


@dataclass(frozen=True)
class BatchPlan:
    """The planner's instructions for one batch; the engine executes them as given (DESIGN.md rule 5).

    The batch's K/V pool is [its own blocks, row-major, then `reads` from the frontier]; slots[i] are the
    pool indices of block i's key slots. At every layer, once the batch has gathered its slots, the
    entries of `drop` leave the frontier and those of `keep` enter it.
    """

    batch: Batch
    reads: tuple[Block, ...]  # blocks the batch takes from the frontier, first-use order
    slots: tuple[Slots, ...]  # per block of the batch, row-major
    keep: tuple[Block, ...]  # the batch's own blocks that later batches read
    drop: tuple[Block, ...]  # reads whose last reader is this batch
    next_reads: tuple[Block, ...]  # what the next batch in raster order reads (staged ahead); () for the last
    receive: tuple[Block, ...] = ()  # column bands (bands.py): put in the frontier from the band to the left first
    send: tuple[Block, ...] = ()  # ... the batch's blocks whose K/V go to the band to the right after it
    release: tuple[Block, ...] = ()  # ... those of `send` that no later batch of the band reads (dropped once sent)


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

    def batch_plan(self, batch: Batch) -> BatchPlan:
        """The frozen plan of one batch."""
        reads = self.reads(batch)
        pool = {blk: i for i, blk in enumerate(batch.blocks())}
        pool.update({blk: len(pool) + j for j, blk in enumerate(reads)})  # len(pool) = the batch's N
        slots = tuple(tuple(pool[nb] for nb in neighbors(r, c)) for r, c in batch.blocks())
        following = batch.index + 1
        next_reads = self.reads(self.batches[following]) if following < len(self.batches) else ()
        return BatchPlan(batch=batch, reads=reads, slots=slots, keep=self.keep(batch), drop=self.drop(batch),
                         next_reads=next_reads)

    def batch_plans(self) -> Iterator[BatchPlan]:
        """The plans of every batch, raster order (lazy)."""
        return (self.batch_plan(batch) for batch in self.batches)

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


def reads_bound(shape: BatchShape) -> int:
    """The most blocks one batch reads from the frontier: the row above with its corner (bw + 1) and the
    column to the left (bh)."""
    return shape.cols + shape.rows + 1


# ---- the job's task list -------------------------------------------------------------------------
# A job is a flat list of idempotent tasks, each over one block batch:
#   init     x_T = up(LR) + sigma_max * eps(seed, block)            writes state[0]
#   predict  D(x_i, sigma_i) -> Euler step                           reads state[i%2]; writes pred, deriv
#                                                                    (or state[(i+1)%2] when it is final)
#   correct  D(pred, sigma_{i+1}) -> Heun correction                 reads pred, deriv, state[i%2];
#                                                                    writes state[(i+1)%2]
#   stats    per-channel moments of the result and of up(LR)         (global anchoring only)
#   anchor   anchoring applied and quantised into the output array
# followed by one `export` task (the output file). The tasks of one kind (and step) over every batch
# form a sweep; a denoiser sweep (predict/correct) keeps its K/V frontier across its batches.
#
# Fused steps (jobs made by streamsr >= 0.3): one `steps` task runs F consecutive sampler steps on its
# batch, every predict and correct of them, each with its own frontier (F or 2F sweeps in flight, each
# lagging the one before it by zero batches): x is read once (x_T is computed) and written once per F
# steps, and pred/deriv never reach the store. Group g reads state[g%2] and writes state[(g+1)%2].


class TaskKind(StrEnum):
    INIT = "init"
    PREDICT = "predict"
    CORRECT = "correct"
    STEPS = "steps"
    STATS = "stats"
    ANCHOR = "anchor"
    EXPORT = "export"

    @property
    def is_model(self) -> bool:
        """A denoiser sweep: evaluates the model and holds a K/V frontier (several, for steps)."""
        return self in (TaskKind.PREDICT, TaskKind.CORRECT, TaskKind.STEPS)


@dataclass(frozen=True)
class Sweep:
    """One pass over every batch: a denoiser sweep at sampler step `step`, or init/stats/anchor (no step)."""

    kind: TaskKind
    step: int | None = None  # sampler step i of a predict/correct sweep; the first step of a steps sweep
    steps: int = 1  # sampler steps of a steps sweep
    evals: int = 1  # model evaluations per block (a steps sweep: one per predict and per correct)

    def __post_init__(self) -> None:
        if self.kind.is_model != (self.step is not None):
            raise ValueError(f"a {self.kind} sweep {'needs' if self.kind.is_model else 'has no'} sampler step")
        if self.steps < 1 or self.evals < 0 or (self.kind is not TaskKind.STEPS and self.steps != 1):
            raise ValueError(f"a {self.kind} sweep of {self.steps} steps and {self.evals} evaluations")


@dataclass(frozen=True)
class Task:
    index: int  # position in the job's task list (the cursor)
    kind: TaskKind
    step: int | None  # sampler step i of a predict/correct task; None for the others
    batch: Batch | None  # None for export
    steps: int = 1  # sampler steps of a steps task
    evals: int = 1  # model evaluations per block

    @property
    def sweep(self) -> Sweep:
        """Tasks of one sweep share a K/V frontier (a steps sweep: one per predict and correct)."""
        return Sweep(self.kind, self.step, self.steps, self.evals)

    @property
    def is_model(self) -> bool:
        return self.kind.is_model


def sampler_stages(steps: int, sampler: str) -> list[Sweep]:
    """The denoiser sweeps: Heun corrects every step but the last (to sigma 0)."""
    stages = []
    for i in range(steps):
        stages.append(Sweep(TaskKind.PREDICT, i))
        if sampler == "heun" and i < steps - 1:
            stages.append(Sweep(TaskKind.CORRECT, i))
    return stages


@dataclass(frozen=True)
class TaskList:
    """A job's tasks as a lazy sequence: sweeps x batches, then one export task."""

    batches: BatchGrid
    sweeps: tuple[Sweep, ...]  # in order

    def __len__(self) -> int:
        return len(self.sweeps) * len(self.batches) + 1

    def __getitem__(self, index: int) -> Task:
        n = len(self.batches)
        if index == len(self) - 1:
            return Task(index, TaskKind.EXPORT, None, None)
        if not 0 <= index < len(self) - 1:
            raise IndexError(f"task {index} outside 0..{len(self) - 1}")
        sweep = self.sweeps[index // n]
        return Task(index, sweep.kind, sweep.step, self.batches[index % n], sweep.steps,
                    sweep.evals if sweep.kind.is_model else 0)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def first(self, kind: TaskKind) -> int:
        """Index of the first task of the first sweep of `kind` (e.g. where the anchor sweep starts)."""
        if kind is TaskKind.EXPORT:
            return len(self) - 1
        for number, sweep in enumerate(self.sweeps):
            if sweep.kind == kind:
                return number * len(self.batches)
        raise ValueError(f"this job has no {kind} sweep")

    def model_blocks_before(self, cursor: int) -> int:
        """Block evaluations of the denoiser in the tasks before `cursor`."""
        n, done = len(self.batches), 0
        for number, sweep in enumerate(self.sweeps):
            if cursor <= number * n:
                break
            if sweep.kind.is_model:
                done += sweep.evals * self.batches.blocks_before(min(cursor - number * n, n))
        return done

    def model_blocks(self) -> int:
        """Block evaluations of the denoiser over the whole job."""
        evals = sum(sweep.evals for sweep in self.sweeps if sweep.kind.is_model)
        return evals * self.batches.grid.rows * self.batches.grid.cols


def fused_sweeps(steps: int, sampler: str, fuse: int) -> list[Sweep]:
    """The sampler as steps sweeps of `fuse` consecutive steps (the last group may be shorter); Heun
    evaluates twice per step but the last (to sigma 0)."""
    if fuse < 1:
        raise ValueError(f"fuse must be >= 1 step, got {fuse}")
    sweeps = []
    for first in range(0, steps, fuse):
        count = min(fuse, steps - first)
        evals = sum(2 if sampler == "heun" and i < steps - 1 else 1 for i in range(first, first + count))
        sweeps.append(Sweep(TaskKind.STEPS, first, count, evals))
    return sweeps


def job_tasks(grid: Grid, shape: BatchShape, steps: int, sampler: str, anchor: str, *,
              init_sweep: bool = True, fuse: int = 0) -> TaskList:
    """The task list of a job: init, the sampler's sweeps, stats (global anchoring), anchor, export.

    Without `init_sweep` there is no init sweep: x_T is a pure function of the LR, the seed and the block,
    so the sweeps of step 0 compute it where they need it instead of reading it back from the store.
    With `fuse` >= 1 the sampler runs as steps sweeps of that many steps (fused_sweeps). Jobs made by
    streamsr >= 0.3 are fused; job dirs of earlier versions keep their layout."""
    if fuse:  # fused steps (no init sweep: the first group computes x_T)
        sweeps = fused_sweeps(steps, sampler, fuse)
    else:
        sweeps = [*([Sweep(TaskKind.INIT)] if init_sweep else []), *sampler_stages(steps, sampler)]
    if anchor == "global":
        sweeps.append(Sweep(TaskKind.STATS))
    sweeps.append(Sweep(TaskKind.ANCHOR))
    return TaskList(raster_batches(grid, shape), tuple(sweeps))
