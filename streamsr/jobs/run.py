"""Running a job: run (or resume) it to the end, and report its status. A job can be killed at any moment.

run: take the lock, delete stray partial files, check that the model is the one the job was made with,
rebuild the live K/V frontier if the cursor is inside a denoiser sweep (replay), and run the remaining
tasks, committing the cursor after each task's writes. The task list is built once per run.
"""

from __future__ import annotations

import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import SR_SCALE
from ..errors import BadInput, StreamsrError
from ..stream.planner import TaskList
from ..weights import model_hash
from .create import now_iso
from .manifest import JobStatus, Manifest
from .pipeline import RunClock, TaskPipeline
from .progress import ProgressBar, Timers, eta_seconds
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


def _refill_frontier(tasks: TaskList, cursor: int, pipeline: TaskPipeline, log) -> None:
    """At a cursor inside a denoiser sweep, replay the sweep's committed batches to rebuild its frontier."""
    if cursor >= len(tasks) or not tasks[cursor].is_model or tasks[cursor].batch.index == 0:
        return
    first = cursor - tasks[cursor].batch.index
    log(f"rebuilding the K/V frontier: replaying {cursor - first} batch(es) of the current sweep")
    for index in range(first, cursor):
        pipeline.sweeps.replay(tasks[index], pipeline.read_inputs(tasks[index]))


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
        vector = (torch.from_numpy(store.read_region("vector", Ellipsis, origin=(0, 0))).to(device)  # (1, V)
                  if model.cfg.vector_dim else None)
        tasks = m.tasks()
        timers = Timers()
        sweeps = SweepExecutor(store, model, vector=vector, device=device, timers=timers)
        pipeline = TaskPipeline(store, tasks, sweeps=sweeps, finalizer=Finalizer(store, device=device, timers=timers),
                                timers=timers)
        if stray:
            log(f"removed {len(stray)} partial file(s) left by an interrupted write")
        _refill_frontier(tasks, m.cursor, pipeline, log)
        bar = ProgressBar(len(tasks), tasks.model_blocks(), enabled=progress is True,
                          callback=progress if callable(progress) else None)
        m = store.commit(status=JobStatus.RUNNING, updated=now_iso())
        clock = RunClock(dict(m.seconds), time.monotonic())
        with StopFlag() as stop:
            try:
                m = pipeline.run(m, stop=stop, bar=bar, clock=clock)
            except torch.OutOfMemoryError:
                bar.close()
                store.commit(status=JobStatus.INTERRUPTED)
                raise OutOfMemory(f"the device ran out of memory at task {store.manifest.cursor}; free memory "
                                  f"or plan with a smaller --vram, then resume with: streamsr resume "
                                  f"{job_dir.root}") from None
            bar.close()
            if stop.signal is not None and m.cursor < len(tasks):
                store.commit(status=JobStatus.INTERRUPTED)
                raise Interrupted(f"interrupted; resume with: streamsr resume {job_dir.root}")
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
