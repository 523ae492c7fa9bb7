"""The task loop of a run, with the store's I/O overlapped with the compute (issue 11).

One I/O thread does every read, write and cursor commit, in the order they were asked for (a FIFO of one
worker), so a read asked for after a write sees it. The compute thread, per model task:

    inputs(t)  <- read ahead while task t - 1 computed (asked for before t - 1's compute, since a sweep
                  never reads what it writes; at a sweep's first task, asked for after the last sweep's
                  writes and flush)
    compute(t) -> its BlockWrites, queued to the ShardWriter (at most `depth` tasks queued: memory stays
                  bounded, and the planner counts those buffers, memory.io_bytes)

Commits. The cursor is committed on the I/O thread after the writes it covers are on disk: up to
`ShardWriter.durable`, every `CommitPolicy.every_tasks` tasks or `every_seconds` seconds, and always at a
sweep's end after a flush, before the next sweep writes anything. That last rule keeps resume exact: a
sweep overwrites the ping-pong array that the sweep before it read, so a cursor must never lag behind a
sweep boundary. Inside a sweep a resume re-runs at most the uncommitted tasks, which are idempotent.
SIGKILL at any moment therefore resumes bit-identically (tests/test_job.py kills with queued writes).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BadInput
from ..stream.planner import Task, TaskKind, TaskList
from .faults import kill_point, kill_point_in
from .manifest import AnchorMoments, Manifest
from .progress import ProgressBar, Timers, task_label
from .ranks import RankRun
from .snapshots import SnapshotDir, SnapshotPolicy
from .shards import ShardReader, ShardWriter
from .store import JobStore

if TYPE_CHECKING:
    from .executor import SweepExecutor
    from .finalize import Finalizer


BAND_SNAPSHOTS = 3  # snapshots kept per sweep with column bands (SnapshotDir.prune)
SWITCH_INTERVAL = 0.0005  # seconds; Python's default 0.005 lets a busy compute thread starve the I/O thread


@dataclass(frozen=True)
class CommitPolicy:
    """When the cursor is committed: after this many tasks or seconds (and at every sweep end)."""

    every_tasks: int = 16
    every_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.every_tasks < 1 or not self.every_seconds >= 0:
            raise ValueError(f"commit every >= 1 task and >= 0 seconds, got {self}")

    @classmethod
    def from_env(cls) -> "CommitPolicy":
        """The default, or STREAMSR_COMMIT_EVERY="TASKS[:SECONDS]" (commit more often when a re-run task
        costs much, e.g. a slow device)."""
        spec = os.environ.get("STREAMSR_COMMIT_EVERY")
        if not spec:
            return cls()
        tasks, _, seconds = spec.partition(":")
        try:
            return cls(int(tasks), float(seconds) if seconds else cls.every_seconds)
        except ValueError:
            raise BadInput(f"STREAMSR_COMMIT_EVERY={spec!r} is not TASKS[:SECONDS] (e.g. 16:10)") from None


@dataclass
class RunClock:
    """The seconds of this run and the job's earlier runs, for the manifest's `seconds`."""

    before: dict
    start: float

    def seconds(self, *parts: dict) -> dict[str, float]:
        spent = dict(self.before)
        for part in parts:
            for name, value in part.items():
                spent[name] = spent.get(name, 0.0) + value
        spent["total"] = self.before.get("total", 0.0) + time.monotonic() - self.start
        return spent


class IOThread:
    """One worker thread running submitted calls in order. After a call fails, every later call fails
    too without running (a commit must never follow a write that did not happen), raising that first
    failure again: whatever future the compute thread waits on next reports it."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamsr-io")
        self._failed: BaseException | None = None

    def submit(self, fn, *args) -> Future:
        return self._pool.submit(self._guarded, fn, *args)

    def _guarded(self, fn, *args):
        if self._failed is not None:  # skipped: the earlier failure is the error to report
            raise self._failed
        try:
            return fn(*args)
        except BaseException as exc:
            self._failed = exc
            raise

    def shutdown(self) -> None:
        """Cancel what has not started, and wait for what has."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class TaskPipeline:
    """Runs the tasks of one job from its cursor with reads ahead and writes behind (module docstring)."""

    def __init__(self, store: JobStore, tasks: TaskList, *, sweeps: SweepExecutor, finalizer: Finalizer,
                 timers: Timers, policy: CommitPolicy | None = None, depth: int = 2, ranks: RankRun | None = None,
                 snapshots: SnapshotDir | None = None):
        self.store = store
        self.tasks = tasks
        self.ranks = ranks or RankRun.solo(tasks)  # this process's tasks, waits and commits (jobs/ranks.py)
        self.sweeps = sweeps
        self.finalizer = finalizer
        self.timers = timers  # the compute thread's
        self.io_timers = Timers()  # the I/O thread's (read, lr, write, commit)
        self.policy = policy or CommitPolicy.from_env()
        self.depth = depth
        self.reader = ShardReader(store)
        self.snapshots = snapshots  # frontier snapshots: a resume replays a bounded part of a sweep
        self.snapshot_policy = SnapshotPolicy.from_env()
        self.writer = ShardWriter(store, timers=self.io_timers)

    @property
    def cursor(self) -> int:
        """This process's last committed cursor (its next task; jobs/ranks.py)."""
        return getattr(self, "_cursor", self.store.manifest.cursor)

    # ---- reads (also used before the loop, to replay a sweep's committed batches) ----------------
    def read_inputs(self, task: Task):
        return self.sweeps.inputs(task, self.reader, self.io_timers)

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, manifest: Manifest, *, stop, bar: ProgressBar, clock: RunClock, cursor: int | None = None) -> Manifest:
        """Run this process's tasks from `cursor` (default: the manifest's) to the end, or to a stop
        request; returns the last manifest committed. Every queued write and commit has finished when it
        returns or raises."""
        self._committed = manifest
        self._cursor = manifest.cursor if cursor is None else cursor  # this process's last committed cursor
        self._last_commit = time.monotonic()
        plan = self.store.manifest.plan
        self._keep_free = 0 if plan is None else int(plan.parts.get("heap_reuse", 0))  # the plan counts it
        keep_freed_memory(self._keep_free)
        io = IOThread()
        switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)  # the I/O thread gets the GIL sooner when it has work
        queued: deque[Future] = deque()
        ahead: tuple[int, Future] | None = None
        moments = manifest.moments
        try:
            index = self.ranks.next_own(self._cursor)
            while index < len(self.tasks):
                task = self.tasks[index]
                snapshot_commit = False
                following = self.ranks.next_own(index + 1)
                nxt = self.tasks[following] if following < len(self.tasks) else None
                sweep_end = nxt is None or nxt.sweep != task.sweep
                if not (ahead and ahead[0] == index):
                    with self.timers("wait"):
                        self.ranks.wait(index, stop=stop)  # several ranks: the previous sweep's batch is on disk
                    if stop.signal is not None:
                        queued.append(io.submit(self._commit, index, moments, dict(self.timers.seconds), clock))
                        break
                if task.is_model or task.kind is TaskKind.INIT:
                    future = ahead[1] if ahead and ahead[0] == index else io.submit(self.read_inputs, task)
                    with self.timers("wait"):
                        inputs = future.result()
                    ahead = ((following, io.submit(self.read_inputs, nxt))
                             if not sweep_end and self.ranks.ready(following) else None)
                    if task.batch.index == 0:
                        self.snapshot_policy.restart()
                    row_end, banded = self._row_end(task), self.ranks.plan.bands > 1
                    if banded and self.snapshots and task.is_model:
                        if index == self.ranks.next_own(index // len(self.tasks.batches) * len(self.tasks.batches)):
                            queued.append(io.submit(lambda sweep=task.sweep: self.snapshots.clear(but=sweep)))
                        if row_end and self.ranks.plan.band.first:  # the first band decides, the others follow
                            self.sweeps.snapshot_row = not sweep_end and self.snapshot_policy.due()
                    queued.append(io.submit(self.writer.write, index, self.sweeps.compute(task, inputs)))
                    kill_point(index, "queued")
                    due = self.sweeps.snapshot_row if banded else self.snapshot_policy.due()
                    if task.is_model and not sweep_end and row_end and self.snapshots and due:
                        started = time.monotonic()  # a snapshot where a commit can land, and that commit
                        tensors = self.sweeps.snapshot()
                        queued.append(io.submit(self._snapshot, task, following, tensors, time.monotonic() - started))
                        snapshot_commit = True
                elif task.kind is TaskKind.ANCHOR:
                    with self.timers("finalize"):  # one-time work, as stats and export (tools/bench_engine.py)
                        writes = self.finalizer.anchor(task.batch, moments)
                    queued.append(io.submit(self.writer.write, index, writes))
                    kill_point(index, "queued")
                elif task.kind in (TaskKind.STATS, TaskKind.EXPORT):  # they read the store: all before is on disk
                    self._drain(queued)
                    with self.timers("finalize"):
                        if task.kind is TaskKind.STATS:
                            moments = self.finalizer.stats(task.batch, moments)
                        else:
                            self.finalizer.export()
                else:
                    raise ValueError(f"unknown task kind {task.kind!r}")
                while len(queued) > self.depth:
                    with self.timers("wait"):
                        queued.popleft().result()
                if sweep_end:
                    queued.append(io.submit(self.writer.flush))
                    queued.append(io.submit(self.reader.forget))
                now = time.monotonic()
                if (sweep_end or snapshot_commit or stop.signal is not None or index + 1 - self._cursor >= self.policy.every_tasks
                        or now - self._last_commit >= self.policy.every_seconds):
                    self._last_commit = now
                    release_free_memory(keep=self._keep_free)
                    queued.append(io.submit(self._commit, index + 1, moments, dict(self.timers.seconds), clock))
                    if sweep_end and task.is_model and self.snapshots and self.ranks.plan.bands == 1:
                        queued.append(io.submit(self.snapshots.clear, task.sweep))  # bands: when the next starts
                    if sweep_end or stop.signal is not None:
                        self._drain(queued)
                bar.update(index + 1, self.ranks.model_blocks_before(following), label=task_label(task, self._steps()),
                           new_blocks=task.evals * len(task.batch.blocks()) if task.is_model else 0,
                           force=index + 1 == len(self.tasks))
                if stop.signal is not None:
                    break
                index = following
            self._drain(queued)
        finally:
            io.shutdown()
            sys.setswitchinterval(switch)
            release_free_memory()
        return self._committed

    def _row_end(self, task: Task) -> bool:
        """Whether `task` ends this rank's part of a row of batches (one band's, with bands): a shard end."""
        if self.ranks.plan.bands > 1:
            return task.batch.index % self.tasks.batches.cols == self.ranks.plan.band.col1 - 1
        return task.batch.col0 + task.batch.cols == self.tasks.batches.grid.cols

    def _snapshot(self, task: Task, cursor: int, tensors: dict, export_seconds: float) -> None:
        """On the I/O thread: save the frontiers as they were before task `cursor` (jobs/snapshots.py). Its
        cost for the policy: the export on the compute thread and this save, not the time it waited in the
        queue behind earlier writes."""
        started = time.monotonic()
        with self.io_timers("snapshot"):
            self.snapshots.save(task.sweep, cursor, tensors)
        self.snapshot_policy.taken(export_seconds + time.monotonic() - started)

    def _steps(self) -> int:
        return self.store.manifest.job.steps

    def _drain(self, queued: deque[Future]) -> None:
        with self.timers("wait"):
            while queued:
                queued.popleft().result()

    def _commit(self, candidate: int, moments: AnchorMoments, seconds: dict, clock: RunClock) -> None:
        """On the I/O thread: commit the cursor up to what is on disk (at most `candidate`; several ranks:
        this rank's next task at or after it)."""
        cursor = self.ranks.next_own(self.writer.durable(candidate))
        if cursor <= self._cursor:
            return
        if cursor < candidate and moments != self._committed.moments:
            raise RuntimeError("anchoring moments changed while writes were buffered")  # stats write nothing
        with self.io_timers("commit"):
            kill_point_in(range(self._cursor, cursor), "before-commit")
            self._committed = self.ranks.commit(self.store, cursor, before=self._cursor, moments=moments,
                                                seconds=clock.seconds(seconds, self.io_timers.seconds),
                                                updated=now_iso())
            self._cursor = cursor
        if self.snapshots is not None:
            self.snapshots.prune(cursor, keep=BAND_SNAPSHOTS if self.ranks.plan.bands > 1 else 1)


def _libc():
    """glibc, or False elsewhere."""
    global _LIBC
    if _LIBC is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            libc = None
        _LIBC = libc if libc is not None and hasattr(libc, "malloc_trim") else False
        if _LIBC and hasattr(_LIBC, "mallinfo2"):
            _LIBC.mallinfo2.restype = _MallInfo2
    return _LIBC


def keep_freed_memory(keep: int) -> None:
    """Let glibc keep up to `keep` bytes of freed memory for reuse instead of handing large blocks back to
    the OS as they are freed (its default once a block of tens of MB was freed: every batch's tensors are
    then mapped and faulted in again, 4 KiB at a time, a third of a small model's task time in the
    kernel). Blocks under 64 MiB come from the heap; `release_free_memory(keep=...)` bounds what stays.
    Process-wide (the settings outlive the run); a no-op off glibc."""
    libc = _libc()
    if libc and hasattr(libc, "mallopt") and keep > 0:  # keep 0 (a tight --ram budget): glibc as it is
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_BELOW)
        libc.mallopt(M_TRIM_THRESHOLD, keep)  # free memory at the top of a heap is given back beyond this


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def release_free_memory(*, keep: int = 0) -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise, and RSS creeps up with the image
    width, tools/bench_memory.py) once more than `keep` bytes of it are free; a no-op where malloc_trim
    does not exist. Below `keep` it stays for the next batches' tensors (`keep_freed_memory`)."""
    libc = _libc()
    if not libc:
        return
    if keep > 0 and hasattr(libc, "mallinfo2"):
        if libc.mallinfo2().fordblks <= keep:
            return
    libc.malloc_trim(0)


HEAP_BLOCKS_BELOW = 64 << 20  # bytes
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_LIBC = None


def now_iso() -> str:
    from .create import now_iso as _now  # noqa: PLC0415 - create imports torch-heavy modules

    return _now()
