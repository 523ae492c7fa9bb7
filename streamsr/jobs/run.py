"""Running a job: run (or resume) it to the end, and report its status. A job can be killed at any moment.

run: take the lock, delete stray partial files, check that the model is the one the job was made with,
rebuild the live K/V frontier if the cursor is inside a denoiser sweep (replay), and run the remaining
tasks, committing the cursor after each task's writes. The task list is built once per run.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import SR_SCALE
from ..errors import BadInput, StreamsrError
from ..stream.planner import TaskList
from ..stream.ranks import RankPlan
from ..weights import model_hash
from .create import now_iso
from .manifest import JobStatus, Manifest
from .pipeline import CommitPolicy, RunClock, TaskPipeline
from .progress import ProgressBar, Timers, eta_seconds
from .kvlink import band_link
from .ranks import RankFailed, RankGroup, RankLedger, RankRun, rank_device
from .snapshots import SnapshotDir
from .store import JobDir, JobError, JobStore, job_lock, read_manifest



class Interrupted(StreamsrError):
    """Ctrl-C or SIGTERM: the job stopped cleanly at a task boundary."""

    exit_code = 130


class OutOfMemory(StreamsrError):
    """The compute device ran out of memory; the job stays resumable."""

    exit_code = 1


class StopFlag:
    """SIGINT/SIGTERM set the flag; the runner stops at the next task boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop now (tasks are idempotent, the job stays safe)
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _refill_frontier(tasks: TaskList, cursor: int, pipeline: TaskPipeline, log, group: RankGroup | None,
                     cursors: list[int] | None) -> None:
    """At a cursor inside a denoiser sweep, rebuild its frontier: from the newest snapshot of the sweep
    (jobs/snapshots.py), then by replaying the sweep's committed batches after it. With column bands
    (`cursors`: every rank's), every band of a stage restarts from the same batch row of the stage's sweep
    (the newest that all of them have a snapshot after: RankPlan.restart_row) and replays its own part."""
    if cursors is not None:
        _refill_bands(tasks, pipeline, log, group, cursors)
        return
    if cursor >= len(tasks) or not tasks[cursor].is_model or tasks[cursor].batch.index == 0:
        return
    first = cursor - tasks[cursor].batch.index
    found = pipeline.snapshots.latest(tasks[cursor].sweep, first=first, cursor=cursor) if pipeline.snapshots else None
    if found is not None:
        at, tensors = found
        pipeline.sweeps.restore(tasks[cursor], tensors)
        log(f"restored the K/V frontier from a snapshot at batch {at - first} of the current sweep")
        first = at
    log(f"rebuilding the K/V frontier: replaying {cursor - first} batch(es) of the current sweep")
    started = time.monotonic()
    for index in range(first, cursor):
        pipeline.sweeps.replay(tasks[index], pipeline.read_inputs(tasks[index]))
    pipeline.snapshot_policy.restart(replayed=time.monotonic() - started)  # the next crash costs no more


def _refill_bands(tasks: TaskList, pipeline: TaskPipeline, log, group: RankGroup, cursors: list[int]) -> None:
    plan, n = pipeline.ranks.plan, len(tasks.batches)
    sweep = plan.stage_sweep(cursors)
    ours = pipeline.snapshots.intact(tasks[sweep * n].sweep) if sweep is not None and pipeline.snapshots else []
    rows = group.gather("snapshot rows", [(at - sweep * n) // tasks.batches.cols for at in ours])  # every rank calls it
    skip = plan.restart_row(cursors, rows)
    span = plan.replay_span(cursors, skip_rows=skip)
    if skip:
        at = plan.next_own(span.start)
        tensors = pipeline.snapshots.load(tasks[at].sweep, at)
        if tensors is None:
            raise JobError(f"the frontier snapshot at task {at} went missing while the ranks agreed on it; relaunch")
        pipeline.sweeps.restore(tasks[at], tensors)
        log(f"restored the K/V frontiers of the bands from snapshots after batch row {skip} of the current sweep")
    own = [index for index in plan.own(span.start) if index < span.stop] if span else []
    if own:
        log(f"rebuilding the K/V frontiers of the bands: replaying {len(own)} batch(es) of this rank")
    for index in own:
        pipeline.sweeps.replay(tasks[index], pipeline.read_inputs(tasks[index]))


def _open_job(job_dir: JobDir, hold: contextlib.ExitStack, group: RankGroup | None) -> tuple[JobStore, int]:
    """Take the job's lock (rank 0 of a group: one lock covers every rank), check that the job runs on
    this many ranks and delete stray partial files; the other ranks of a group wait for rank 0's word.
    Returns the store and how many partial files were removed."""
    world = group.world if group else 1

    def open_locked() -> int:
        hold.enter_context(job_lock(job_dir))
        store = JobStore.open(job_dir)
        if store.manifest.ranks != world:
            raise JobError(_ranks_hint(job_dir, store.manifest.ranks, world))
        RankLedger(job_dir, world).check()
        return len(store.remove_partials())

    stray = open_locked() if group is None else group.on_rank0("open the job", open_locked)
    return JobStore.open(job_dir), stray


def _ranks_hint(job_dir: JobDir, ranks: int, world: int) -> str:
    if ranks == 1:
        return f"job {job_dir.root} runs in one process; resume it without torchrun: streamsr resume {job_dir.root}"
    return (f"job {job_dir.root} runs on {ranks} ranks, not {world}: relaunch it with torchrun "
            f"--nproc-per-node {ranks} -m streamsr resume {job_dir.root} (or {ranks} ranks over several nodes)")


def run_job(where: JobDir | Path, *, model_dir: Path | None = None, progress: bool = True, log=print,
            group: RankGroup | None = None) -> Manifest:
    """Run (or resume) a job to the end; returns the final manifest. Raises Interrupted on Ctrl-C.
    With a group (torchrun), every rank calls it and runs its own tasks (jobs/ranks.py)."""
    job_dir = JobDir.of(where)
    with contextlib.ExitStack() as hold:
        if group is not None:
            group.agree("job dirs", str(job_dir.root.resolve()))
        try:
            return _run_locked(job_dir, hold, model_dir=model_dir, progress=progress, log=log, group=group)
        except (StreamsrError, torch.OutOfMemoryError) as exc:
            if group is not None and not isinstance(exc, (Interrupted, RankFailed)):
                group.fail(str(exc))  # the other ranks stop too, naming this one
            raise


def _run_locked(job_dir: JobDir, hold: contextlib.ExitStack, *, model_dir: Path | None, progress: bool, log,
                group: RankGroup | None) -> Manifest:
    from ..weights import load_model
    from .executor import SweepExecutor
    from .finalize import Finalizer

    model_dir = Path(model_dir).resolve() if model_dir else Path(read_manifest(job_dir).model.dir)
    if not (model_dir / "config.json").is_file():
        raise BadInput(f"the job's model dir {model_dir} is gone; pass --model DIR with the same model")
    digest = model_hash(model_dir)
    if group is not None:
        group.agree("models", digest)
    store, stray = _open_job(job_dir, hold, group)
    m = store.manifest
    if digest != m.model.hash:
        raise JobError(f"model {model_dir} is not the one job {job_dir.root} was made with")
    job = m.job
    device = rank_device(job.device, group)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda was asked for but torch sees no CUDA device")
    model = load_model(model_dir, device=device, dtype=torch.bfloat16 if job.dtype == "bf16" else torch.float32)
    vector = (torch.from_numpy(store.read_region("vector", Ellipsis, origin=(0, 0))).to(device)  # (1, V)
              if model.cfg.vector_dim else None)
    tasks = m.tasks()
    ranks = RankRun.solo(tasks)
    if group is not None:
        plan = RankPlan(tasks, group.rank, group.world, m.bands)
        ranks = RankRun(plan, group, RankLedger(job_dir, group.world))
    cursor = ranks.ledger.start(ranks.plan, m.cursor) if ranks.ledger else m.cursor
    if group is not None:
        if ranks.ledger.read(group.rank) != cursor:  # a rank's file exists from its first run on (world size)
            ranks.ledger.write(group.rank, cursor)
        group.publish(cursor)
    cursors = group.gather("cursors", cursor) if group is not None and m.bands > 1 else None
    timers = Timers()
    spill = job_dir.frontier / f"rank-{group.rank}" if group else job_dir.frontier
    link = band_link(group, rank=ranks.plan.rank, bands=m.bands, stages=ranks.plan.stages)
    sweeps = SweepExecutor(store, model, vector=vector, device=device, timers=timers, spill=spill,
                           band=ranks.plan.band, link=link)
    pipeline = TaskPipeline(store, tasks, sweeps=sweeps, finalizer=Finalizer(store, device=device, timers=timers),
                            timers=timers, ranks=ranks, policy=CommitPolicy(1, 0.0) if group else None,
                            snapshots=SnapshotDir(spill / "snapshots"))
    if stray:
        log(f"removed {stray} partial file(s) left by an interrupted write")
    if ranks.writes_manifest:  # running from here on, the replay of the current sweep included
        m = store.commit(status=JobStatus.RUNNING, updated=now_iso())
    bar = ProgressBar(len(tasks), tasks.model_blocks(), enabled=progress is True and ranks.writes_manifest,
                      callback=progress if callable(progress) else None)
    clock = RunClock(dict(m.seconds), time.monotonic())
    with StopFlag() as stop:
        try:
            _refill_frontier(tasks, cursor, pipeline, log, group, cursors)
            m = pipeline.run(m, stop=stop, bar=bar, clock=clock, cursor=cursor)
            if link is not None and pipeline.cursor >= len(tasks):  # the right band has taken every hand-off
                link.flush()
                ranks.ledger.write(group.rank, pipeline.cursor, frontier_peak_blocks=sweeps.frontier_peak_blocks)
        except torch.OutOfMemoryError:
            bar.close()
            if ranks.writes_manifest:
                store.commit(status=JobStatus.INTERRUPTED)
            raise OutOfMemory(f"the device ran out of memory at task {pipeline.cursor}; free memory or plan "
                              f"with a smaller --vram or --batch, then resume with: streamsr resume "
                              f"{job_dir.root}") from None
        except (StreamsrError, OSError):  # damaged data, a full disk, a lost rank: the job is not running
            bar.close()
            if ranks.writes_manifest:
                with contextlib.suppress(OSError):  # the disk may be what failed; the cursor stays as committed
                    store.commit(status=JobStatus.INTERRUPTED, updated=now_iso())
            raise
        bar.close()
        if stop.signal is not None and pipeline.cursor < len(tasks):
            if ranks.writes_manifest:
                store.commit(status=JobStatus.INTERRUPTED)
            raise Interrupted(f"interrupted; resume with: {resume_command(job_dir, group)}")
    if not ranks.writes_manifest:
        return m
    return store.commit(status=JobStatus.DONE, updated=now_iso())


def resume_command(job_dir: JobDir, group: RankGroup | None) -> str:
    """How to resume a job: the same launch for a group of ranks."""
    if group is None:
        return f"streamsr resume {job_dir.root}"
    return f"torchrun --nproc-per-node {group.world} -m streamsr resume {job_dir.root} (the same launch)"


def remove_job_dir(where: JobDir | Path) -> None:
    """Delete a job dir made by streamsr (refuses a dir that does not look like one)."""
    job_dir = JobDir.of(where)
    if job_dir.is_job() or job_dir.store.is_dir():
        shutil.rmtree(job_dir.root)


@dataclass(frozen=True)
class JobReport:
    """A job's manifest with its progress in model blocks and the ETA at the measured rate."""

    manifest: Manifest
    model_blocks_total: int
    eta_seconds: float | None

    @classmethod
    def of(cls, manifest: Manifest) -> "JobReport":
        total = manifest.tasks().model_blocks()
        done = manifest.model_blocks_done
        return cls(manifest, total, eta_seconds(total - done, done, seconds=manifest.seconds.get("total", 0.0)))

    def to_json(self) -> dict:
        """The status as JSON (the viewer's /api/status)."""
        m = self.manifest
        return {"status": str(m.status), "stage": m.stage, "cursor": m.cursor, "total_tasks": m.total_tasks,
                "model_blocks_done": m.model_blocks_done, "model_blocks_total": self.model_blocks_total,
                "eta_seconds": self.eta_seconds, "seconds": dict(m.seconds), "job": m.job.to_dict(),
                "plan": m.plan.to_json() if m.plan else None, "model": m.model.dir, "input": m.input.to_json(),
                "output": m.output.path, "geometry": m.geometry.to_json(), "scale": SR_SCALE}


def job_status(where: JobDir | Path) -> dict:
    """Progress, ETA and settings of a job as JSON, from its manifest alone (works while it runs)."""
    return JobReport.of(read_manifest(where)).to_json()
