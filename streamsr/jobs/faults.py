"""Fault injection for the crash tests: STREAMSR_TEST_KILL="TASK:POINT" SIGKILLs the process there.

POINT is one of: mid-write (after the task's first array write), before-commit (after all writes,
before the cursor commit), mid-commit (manifest temp file written, not yet renamed). Unset in normal use.
"""

from __future__ import annotations

import os
import signal

_ENV = "STREAMSR_TEST_KILL"


def kill_point(task_index: int, point: str) -> None:
    spec = os.environ.get(_ENV)
    if spec and spec == f"{task_index}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
