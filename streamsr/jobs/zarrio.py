"""zarr's I/O machinery as a job needs it: its disk errors as the OSError they are, and a quiet exit after
an error.

Disk errors: the `zarrs` codec pipeline (Rust) reports a failed file operation as a RuntimeError whose
text ends in "(os error N)"; a full disk during a shard write reads "No space left on device (os error
28)". Left a RuntimeError, it escapes every `except OSError` on the way up and the user gets a traceback
instead of one line and the resume command. `os_error_of` recovers the OSError, `disk_errors` re-raises it
where the job writes its shards.

Quiet exit: zarr-python reads a region's chunks as tasks on its own event loop (`asyncio.gather`). When one
chunk fails (a corrupt chunk, a full disk) the gather returns that error at once and the others keep
running; at interpreter exit zarr stops the loop with them still pending, and asyncio prints "Task was
destroyed but it is pending!" and "coroutine ... was never awaited" (2 to 480 lines) after our one-line
error. `settle_pending` cancels and awaits them first; it is registered at exit after zarr's own clean-up
(atexit runs the last registered first), so it runs before zarr closes the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno as errno_codes
import os
import re
from concurrent.futures import TimeoutError as FutureTimeout

import zarr  # noqa: F401 - imported first: its exit hook must be registered before ours
import zarr.core.sync as zarr_sync

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_of(exc: BaseException, *, path: os.PathLike | str | None = None) -> OSError | None:
    """`exc` as an OSError: itself, or a zarrs RuntimeError "... (os error N)" as OSError(N) naming `path`
    (zarrs does not say which file); None for anything else (a damaged chunk, a bug)."""
    if isinstance(exc, OSError):
        return exc
    match = _OS_ERROR.search(str(exc)) if isinstance(exc, RuntimeError) else None
    if match is None:
        return None
    code = int(match.group(1))
    reason = os.strerror(code) if code in errno_codes.errorcode else " ".join(str(exc).split())
    return OSError(code, reason, None if path is None else os.fspath(path))


@contextlib.contextmanager
def disk_errors(path: os.PathLike | str):
    """Re-raise a zarrs disk error inside the block as the OSError it is, naming `path`."""
    try:
        yield
    except RuntimeError as exc:
        converted = os_error_of(exc, path=path)
        if converted is None:
            raise
        raise converted from None


async def _cancel_others() -> None:
    me = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not me]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def settle_pending(timeout: float = 2.0) -> None:
    """Cancel and await the tasks still pending on zarr's event loop (the rest of a failed read), so that
    stopping the loop destroys none of them; quietly gives up after `timeout` seconds."""
    loop = zarr_sync.loop[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return
    future = asyncio.run_coroutine_threadsafe(_cancel_others(), loop)
    with contextlib.suppress(FutureTimeout, RuntimeError):
        future.result(timeout)


atexit.register(settle_pending)
