"""Running a job: run (or resume) it to the end, and report its status. A job can be killed at any moment.

run: take the lock, delete stray partial files, check that the model is the one the job was made with,
rebuild the live K/V frontier if the cursor is inside a denoiser sweep (replay), and run the remaining
tasks, committing the cursor after each task's writes. The task list is built once per run.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import SR_SCALE
from ..errors import BadInput, StreamsrError
from ..stream.planner import Task, TaskKind, TaskList
from ..weights import model_hash
from .create import now_iso
from .faults import kill_point
from .manifest import AnchorMoments, JobStatus, Manifest
from .progress import ProgressBar, Timers, eta_seconds, task_label
from .store import JobDir, JobError, JobStore, job_lock, read_manifest

if TYPE_CHECKING:
    from .executor import SweepExecutor
    from .finalize import Finalizer


class Interrupted(StreamsrError):
    """Ctrl-C or SIGTERM: the job stopped cleanly at a task boundary."""

    exit_code = 130


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


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise, and RSS creeps up with the
    image width, tools/bench_memory.py); a no-op where malloc_trim does not exist."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def _run_task(task: Task, moments: AnchorMoments, sweeps: SweepExecutor, finalizer: Finalizer) -> AnchorMoments:
    """Run one task; returns the anchoring moments (what a stats task adds to; unchanged by the others)."""
    if task.kind in (TaskKind.INIT, TaskKind.PREDICT, TaskKind.CORRECT):
        sweeps.run(task)
    elif task.kind is TaskKind.STATS:
        return finalizer.stats(task.batch, moments)
    elif task.kind is TaskKind.ANCHOR:
        finalizer.anchor(task.batch, moments, task=task.index)
    elif task.kind is TaskKind.EXPORT:
        finalizer.export()
    else:
        raise ValueError(f"unknown task kind {task.kind!r}")
    return moments


def _refill_frontier(tasks: TaskList, cursor: int, sweeps: SweepExecutor, log) -> None:
    """At a cursor inside a denoiser sweep, replay the sweep's committed batches to rebuild its frontier."""
    if cursor >= len(tasks) or not tasks[cursor].is_model or tasks[cursor].batch.index == 0:
        return
    first = cursor - tasks[cursor].batch.index
    log(f"rebuilding the K/V frontier: replaying {cursor - first} batch(es) of the current sweep")
    for index in range(first, cursor):
        sweeps.replay(tasks[index])


def _seconds(before: dict, timers: Timers, elapsed: float) -> dict[str, float]:
    """Seconds per category over every run of the job: the earlier runs' plus this one's."""
    spent = dict(before)
    for name, value in timers.seconds.items():
        spent[name] = before.get(name, 0.0) + value
    spent["total"] = before.get("total", 0.0) + elapsed
    return spent


def run_job(where: JobDir | Path, *, model_dir: Path | None = None, progress: bool = True, log=print) -> Manifest:
    """Run (or resume) a job to the end; returns the final manifest. Raises Interrupted on Ctrl-C."""
    from ..weights import load_model
    from .executor import SweepExecutor
    from .finalize import Finalizer

    job_dir = JobDir.of(where)
    with job_lock(job_dir):
        store = JobStore.open(job_dir)
        stray = store.remove_partials()
        m = store.manifest
        model_dir = Path(model_dir).resolve() if model_dir else Path(m.model.dir)
        if not (model_dir / "config.json").is_file():
            raise BadInput(f"the job's model dir {model_dir} is gone; pass --model DIR with the same model")
        if model_hash(model_dir) != m.model.hash:
            raise JobError(f"model {model_dir} is not the one job {job_dir.root} was made with")
        job = m.job
        device = torch.device(job.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BadInput("--device cuda was asked for but torch sees no CUDA device")
        model = load_model(model_dir, device=device, dtype=torch.bfloat16 if job.dtype == "bf16" else torch.float32)
        vector = (torch.from_numpy(store.array("vector")[...]).to(device)  # (1, V)
                  if model.cfg.vector_dim else None)
        tasks = m.tasks()
        timers = Timers()
        sweeps = SweepExecutor(store, model, vector=vector, device=device, timers=timers)
        finalizer = Finalizer(store, device=device, timers=timers)
        if stray:
            log(f"removed {len(stray)} partial file(s) left by an interrupted write")
        _refill_frontier(tasks, m.cursor, sweeps, log)
        bar = ProgressBar(len(tasks), tasks.model_blocks(), enabled=progress)
        m = store.commit(status=JobStatus.RUNNING, updated=now_iso())
        start = time.monotonic()
        seconds_before = dict(m.seconds)
        with StopFlag() as stop:
            for index in range(m.cursor, len(tasks)):
                task = tasks[index]
                blocks_before = timers.model_blocks
                moments = _run_task(task, m.moments, sweeps, finalizer)
                kill_point(task.index, "before-commit")
                release_free_memory()
                new_blocks = timers.model_blocks - blocks_before
                m = store.commit(cursor=task.index + 1, moments=moments, updated=now_iso(),
                                 seconds=_seconds(seconds_before, timers, time.monotonic() - start),
                                 model_blocks_done=m.model_blocks_done + new_blocks)
                bar.update(m.cursor, m.model_blocks_done, label=task_label(task, job.steps), new_blocks=new_blocks,
                           force=m.cursor == len(tasks))
                if stop.signal is not None:
                    bar.close()
                    store.commit(status=JobStatus.INTERRUPTED)
                    raise Interrupted(f"interrupted; resume with: streamsr resume {job_dir.root}")
        bar.close()
        return store.commit(status=JobStatus.DONE, updated=now_iso())


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
