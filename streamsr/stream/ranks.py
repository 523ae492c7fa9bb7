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

from .planner import TaskKind, TaskList


@dataclass(frozen=True)
class RankPlan:
    """The tasks one rank of `world` runs, and what it waits for. A rank's cursor is the index of its next
    task in the job's task list (len(tasks) once it has none left): every task of its below it is done."""

    tasks: TaskList
    rank: int
    world: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside 0..{self.world - 1}")
        if self.world > 1 and any(s.kind is not TaskKind.STEPS for s in self.tasks.sweeps if s.kind.is_model):
            raise ValueError("only fused jobs (steps sweeps) run on several ranks")

    def owner(self, index: int) -> int:
        """The rank that runs task `index`."""
        sweep = index // len(self.tasks.batches)
        if sweep < len(self.tasks.sweeps) and self.tasks.sweeps[sweep].kind is TaskKind.STEPS:
            return sweep % self.world
        return 0

    def next_own(self, index: int) -> int:
        """The first task of this rank at or after `index`; len(tasks) when there is none."""
        n, total = len(self.tasks.batches), len(self.tasks)
        while index < total and self.owner(index) != self.rank:
            index = (index // n + 1) * n  # the next sweep's first task (the export task is rank 0's)
        return min(index, total)

    def own(self, cursor: int) -> Iterator[int]:
        """This rank's task indices from `cursor` on, in order."""
        index = self.next_own(cursor)
        while index < len(self.tasks):
            yield index
            index = self.next_own(index + 1)

    def waits_for(self, index: int) -> tuple[tuple[int, int], ...]:
        """(rank, cursor) pairs: task `index` may start once each rank has committed that cursor. A steps
        task waits for the same batch of the sweep before it; the first finishing task for every rank."""
        if self.world == 1:
            return ()
        n = len(self.tasks.batches)
        sweep = index // n
        kind = self.tasks.sweeps[sweep].kind if sweep < len(self.tasks.sweeps) else TaskKind.EXPORT
        if kind is TaskKind.STEPS:
            return ((self.owner(index - n), index - n + 1),) if sweep > 0 else ()
        first = next(number for number, s in enumerate(self.tasks.sweeps) if s.kind is not TaskKind.STEPS) * n
        return tuple((r, len(self.tasks)) for r in range(self.world) if r != self.rank) if index == first else ()

    def model_blocks_before(self, cursor: int) -> int:
        """Block evaluations of this rank's tasks before its cursor."""
        n, done = len(self.tasks.batches), 0
        for number, sweep in enumerate(self.tasks.sweeps):
            if cursor <= number * n:
                break
            if sweep.kind.is_model and number % self.world == self.rank:
                done += sweep.evals * self.tasks.batches.blocks_before(min(cursor - number * n, n))
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
