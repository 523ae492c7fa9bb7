"""Planning a job on several ranks (issue 12), pure Python like planner.py: which tasks each rank runs and
what each task waits for.

A fused job runs on `world` ranks as a sweep pipeline: steps sweep s is rank s % world's, and it may
process batch b once sweep s - 1 has committed batch b (its input is s - 1's output and nothing else of
s - 1: each sweep has its own frontier). The state arrays form a ring of world + 1 (store.group_array):
sweep s writes slot (s + 1) % (world + 1), which only sweep s - world read, and that sweep was this same
rank's, finished before s started; so nothing a running or resuming sweep reads is ever overwritten.
The finishing sweeps (stats, anchor, export) are rank 0's, once every rank has finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .bands import Band, band_blocks_before, band_of, split_bands
from .planner import TaskKind, TaskList


@dataclass(frozen=True)
class RankPlan:
    """The tasks one rank of `world` runs, and what it waits for. A rank's cursor is the index of its next
    task in the job's task list (len(tasks) once it has none left): every task of its below it is done.

    With `bands` > 1 the ranks form world // bands stages of `bands` ranks (the rest idle): steps sweep s
    is stage s % stages's, and rank stage * bands + k runs its column band k (bands.py) as a wavefront
    with the stage's other bands, taking K/V from band k - 1 per batch row (handed over directly, not
    waited for here). A stage starts sweep s only once all its bands have finished sweep s - stages: a
    band that resumes replays its sweep from the start, and the band to its left must be able to replay
    that sweep too (its input, ring slot s % (stages + 1), is intact until sweep s + stages writes it)."""

    tasks: TaskList
    rank: int
    world: int
    bands: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside 0..{self.world - 1}")
        if self.world > 1 and any(s.kind is not TaskKind.STEPS for s in self.tasks.sweeps if s.kind.is_model):
            raise ValueError("only fused jobs (steps sweeps) run on several ranks")
        if not 1 <= self.bands <= min(self.world, self.tasks.batches.cols):
            raise ValueError(f"{self.bands} column band(s) on {self.world} rank(s) and {self.tasks.batches.cols} "
                             "batch column(s): at most one band per rank and per batch column")

    @property
    def stages(self) -> int:
        """Steps sweeps in flight: groups of `bands` ranks."""
        return self.world // self.bands

    @property
    def band(self) -> Band:
        """This rank's column band (band 0 of 1 without bands)."""
        return split_bands(self.tasks.batches.cols, self.bands)[self.rank % self.bands]

    def owner(self, index: int) -> int:
        """The rank that runs task `index`."""
        n = len(self.tasks.batches)
        sweep = index // n
        if sweep < len(self.tasks.sweeps) and self.tasks.sweeps[sweep].kind is TaskKind.STEPS:
            return (sweep % self.stages) * self.bands + band_of(self.tasks.batches, self.bands, index % n)
        return 0

    def next_own(self, index: int) -> int:
        """The first task of this rank at or after `index`; len(tasks) when there is none."""
        n, total, cols = len(self.tasks.batches), len(self.tasks), self.tasks.batches.cols
        while index < total and self.owner(index) != self.rank:
            sweep, batch = divmod(index, n)
            stage = self.rank // self.bands
            if (self.bands > 1 and sweep < len(self.tasks.sweeps) and stage < self.stages
                    and self.owner(sweep * n) // self.bands == stage):  # this stage's sweep, another band
                row, col = divmod(batch, cols)
                batch = row * cols + self.band.col0 if col < self.band.col0 else (row + 1) * cols + self.band.col0
                if batch < n:
                    index = sweep * n + batch
                    continue
            index = (sweep + 1) * n  # the next sweep's first task (the export task is rank 0's)
        return min(index, total)

    def own(self, cursor: int) -> Iterator[int]:
        """This rank's task indices from `cursor` on, in order."""
        index = self.next_own(cursor)
        while index < len(self.tasks):
            yield index
            index = self.next_own(index + 1)

    def waits_for(self, index: int) -> tuple[tuple[int, int], ...]:
        """(rank, cursor) pairs: task `index` may start once each rank has committed that cursor. A steps
        task waits for the same batch of the sweep before it (and, with bands, a stage's first task of a
        sweep for its bands to finish the stage's sweep before); the first finishing task for every rank."""
        if self.world == 1:
            return ()
        n = len(self.tasks.batches)
        sweep = index // n
        kind = self.tasks.sweeps[sweep].kind if sweep < len(self.tasks.sweeps) else TaskKind.EXPORT
        if kind is TaskKind.STEPS:
            needs = ((self.owner(index - n), index - n + 1),) if sweep > 0 else ()
            if self.bands > 1 and sweep >= self.stages and index == self.next_own(sweep * n):
                stage = self.rank // self.bands * self.bands
                needs += tuple((r, (sweep - self.stages + 1) * n) for r in range(stage, stage + self.bands)
                               if r != self.rank)
            return needs
        first = next(number for number, s in enumerate(self.tasks.sweeps) if s.kind is not TaskKind.STEPS) * n
        return tuple((r, len(self.tasks)) for r in range(self.world) if r != self.rank) if index == first else ()

    def stage_sweep(self, cursors: list[int]) -> int | None:
        """Bands: the oldest steps sweep that a band of this rank's stage is in (None: none is)."""
        n, total = len(self.tasks.batches), len(self.tasks)
        stage = self.rank // self.bands
        if stage >= self.stages:
            return None
        current = [c // n for c in cursors[stage * self.bands:(stage + 1) * self.bands]
                   if c < total and self.tasks[c].is_model]
        return min(current) if current else None

    def restart_row(self, cursors: list[int], rows: list[list[int]]) -> int:
        """Bands: the batch rows of the stage's sweep (stage_sweep) that every band of the stage may skip
        on a relaunch: the most R such that each band has a snapshot taken after its row R (`rows[r]`: the
        rows rank r's snapshots of that sweep follow) and has done row R; 0 (replay from the sweep's start)
        when there is none. The bands restart together because each hands the next its rows in order."""
        sweep = self.stage_sweep(cursors)
        if sweep is None:
            return 0
        n, cols = len(self.tasks.batches), self.tasks.batches.cols
        members = range(self.rank // self.bands * self.bands, (self.rank // self.bands + 1) * self.bands)
        common = None
        for r in members:
            done = min(cursors[r] - sweep * n, n) // cols if cursors[r] < (sweep + 1) * n else self.tasks.batches.rows
            usable = {row for row in rows[r] if 0 < row <= done}
            common = usable if common is None else common & usable
        return max(common, default=0)

    def replay_span(self, cursors: list[int], *, skip_rows: int = 0) -> range:
        """The task indices whose own tasks this rank replays when a run starts, given every rank's cursor:
        the K/V frontier of its current sweep up to its cursor. With bands, the part of its stage's oldest
        current sweep after its first `skip_rows` batch rows (restart_row; every band of the stage replays
        the same sweep from the same row, so that the hand-offs flow again, also from a band that has
        finished that sweep and waits for the others)."""
        n, total, cursor = len(self.tasks.batches), len(self.tasks), cursors[self.rank]
        if self.bands == 1:
            on_model = cursor < total and self.tasks[cursor].is_model
            return range(cursor // n * n, cursor) if on_model else range(0)
        sweep = self.stage_sweep(cursors)
        if sweep is None:
            return range(0)
        return range(sweep * n + skip_rows * self.tasks.batches.cols, min(cursor, (sweep + 1) * n))

    def model_blocks_before(self, cursor: int) -> int:
        """Block evaluations of this rank's tasks before its cursor."""
        n, done = len(self.tasks.batches), 0
        for number, sweep in enumerate(self.tasks.sweeps):
            if cursor <= number * n:
                break
            if sweep.kind.is_model and self.owner(number * n) // self.bands == self.rank // self.bands:
                count = min(cursor - number * n, n)
                done += sweep.evals * (self.tasks.batches.blocks_before(count) if self.bands == 1 else
                                       band_blocks_before(self.tasks.batches, self.band, count))
        return done


LAG_SHARE = 0.02  # the most of a job that the pipeline's fill and drain may cost on several ranks


def rank_fuse(fuse: int, *, steps: int, world: int, batches: int | None = None) -> int:
    """Steps per steps sweep on `world` ranks: at most the budget's `fuse`; few enough that every rank gets
    a sweep (ceil(steps / world)) when there are that many steps; and, given the `batches` of a sweep, few
    enough that the pipeline's fill and drain (about two batches of a sweep's steps, while the other
    ranks wait) cost at most LAG_SHARE of a rank's steps / world sweeps. A small F costs store traffic
    (one read and write of the state per sweep), a large one idle ranks: a gigapixel job has thousands of
    batches per sweep and keeps the budget's F, a small one runs a sweep per step."""
    cap = -(-steps // world)
    if batches is not None and world > 1:
        cap = min(cap, max(1, int(LAG_SHARE * steps * batches / (2 * world))))
    return max(1, min(fuse, cap))


@dataclass(frozen=True)
class RankSplit:
    """How a job's ranks share its sweeps: `stages` steps sweeps in flight x `bands` column bands each
    (world - stages * bands ranks idle), and the sampler steps per steps sweep."""

    stages: int
    bands: int
    fuse: int


def rank_split(world: int, *, steps: int, batch_cols: int, batches: int, fuse_for) -> RankSplit:
    """The split of `world` ranks. `fuse_for(bands)` gives, for a band of the sweep's width / bands, the
    budget's steps per sweep and whether the band's frontier fits on the device. Preferred, in order: a
    frontier on the device (a wide image's row of K/V may only fit there in bands); the most ranks busy
    (a stage without a sweep of its own idles: more ranks than sweeps go to bands); the fewest bands (a
    sweep pipeline hands over only block states, bands also K/V and a wavefront's fill)."""
    best: tuple | None = None
    for bands in range(1, min(world, batch_cols) + 1):
        stages = world // bands
        budget_fuse, on_device = fuse_for(bands)
        fuse = rank_fuse(budget_fuse, steps=steps, world=stages, batches=batches)
        busy = min(stages, -(-steps // fuse)) * bands
        key = (bool(on_device), busy, -bands)
        if best is None or key > best[0]:
            best = (key, RankSplit(stages, bands, fuse))
    return best[1]
