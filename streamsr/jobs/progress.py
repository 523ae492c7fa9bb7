"""Progress of a job: where the time goes (`Timers`), the ETA, and the progress line of a running job.

On a terminal `ProgressBar` redraws one line; otherwise (CI, logs) it prints a plain line every few seconds.
In a batch, the line starts with the image's place in it ("image 3/10", `BatchPosition`).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

from ..stream.planner import Task


class Timers:
    """Seconds spent per category (model, read, write) and blocks computed by the model, in this process."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.model_blocks = 0

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def eta_seconds(blocks_left: int, blocks_done: int, *, seconds: float) -> float | None:
    """Remaining time at the measured model rate; None until something was measured."""
    if blocks_done <= 0 or seconds <= 0:
        return None
    return blocks_left * seconds / blocks_done


def task_label(task: Task, steps: int) -> str:
    """What a task does, for people: "predict 2/20", "steps 1-4/20", "anchor"."""
    if task.is_model and task.steps > 1:
        return f"{task.kind} {task.step + 1}-{task.step + task.steps}/{steps}"
    return f"{task.kind} {task.step + 1}/{steps}" if task.is_model else str(task.kind)


@dataclass(frozen=True)
class BatchPosition:
    """Which image of a batch a job is ("image 3/10"). A batch passes it as the job's `progress`, the
    channel that already carries True/False or the API's per-task callback to the job's `ProgressBar`, so
    the progress line can show the image count beside the image's own tasks and blocks without another
    parameter through every layer. Called as a callback it does nothing."""

    index: int  # 1-based
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"image {self.index} of {self.count}: need 1 <= index <= count")

    def __str__(self) -> str:
        return f"image {self.index}/{self.count}"

    def __call__(self, tasks_done: int, total_tasks: int, label: str) -> None:
        """No per-task callback: the progress line shows this position instead."""


class ProgressBar:
    """The progress line of a running job: task percentage, model blocks (done/total, per second of this
    run), ETA; led by the image's place in its batch when `callback` is a BatchPosition (then shown even
    though `enabled` is False: a callable progress disables the line for the API's callbacks)."""

    def __init__(self, total_tasks: int, total_blocks: int, *, stream=None, interval: float = 5.0,
                 enabled: bool = True, callback=None):
        self.total_tasks = total_tasks
        self.total_blocks = total_blocks  # model block evaluations of the whole job
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if not self.tty else 0.2
        self.enabled = enabled
        self.start = time.monotonic()
        self.last = 0.0
        self.session_blocks = 0
        self.prefix = ""
        if isinstance(callback, BatchPosition):
            self.prefix, self.enabled, callback = f"{callback}  ", True, None
        self.callback = callback  # callback(tasks_done, total_tasks, label) after every task (the Python API)

    def update(self, tasks_done: int, blocks_done: int, *, label: str, new_blocks: int, force: bool = False) -> None:
        self.session_blocks += new_blocks
        if self.callback is not None:
            self.callback(tasks_done, self.total_tasks, label)
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.interval):
            return
        self.last = now
        elapsed = now - self.start
        rate = self.session_blocks / elapsed if elapsed > 0 else 0.0
        eta = eta_seconds(self.total_blocks - blocks_done, self.session_blocks, seconds=elapsed)
        pct = 100.0 * tasks_done / max(self.total_tasks, 1)
        when = format_seconds(eta) if eta is not None else "?"
        if blocks_done >= self.total_blocks and tasks_done < self.total_tasks:  # stats, anchor, export remain
            when = f"finishing, {self.total_tasks - tasks_done} task(s) left"
        line = (f"{self.prefix}{label:<18} {pct:5.1f}%  tasks {tasks_done}/{self.total_tasks}  "
                f"blocks {blocks_done}/{self.total_blocks}  {rate:6.2f} blocks/s  ETA {when}")
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
