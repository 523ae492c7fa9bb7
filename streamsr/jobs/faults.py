"""Fault injection for the crash tests: STREAMSR_TEST_KILL="TASK:POINT" SIGKILLs the process there.

POINT is one of: mid-write (the I/O thread took the task's first write, which may still be buffered),
queued (the compute thread queued the task's writes), before-commit (the task's writes are on disk, the
commit that covers the task is about to be written), mid-commit (that commit's manifest temp file is
written, not yet renamed). Commits cover several tasks (pipeline.CommitPolicy): the last two fire at the
commit whose cursor passes the task. With several ranks, STREAMSR_TEST_KILL_RANK=K limits it to rank K.
Unset in normal use.
"""

from __future__ import annotations

import os
import signal

_ENV = "STREAMSR_TEST_KILL"


def _spec() -> str | None:
    rank = os.environ.get(_ENV + "_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return None
    return os.environ.get(_ENV)


def kill_point(task_index: int, point: str) -> None:
    spec = _spec()
    if spec and spec == f"{task_index}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


def kill_point_in(tasks: range, point: str) -> None:
    """kill_point for a commit that covers `tasks`."""
    spec = _spec()
    if spec and spec.endswith(f":{point}"):
        task = spec.split(":", 1)[0]
        if task.isdigit() and int(task) in tasks:
            os.kill(os.getpid(), signal.SIGKILL)
