"""What killed upscales leave beside their output, found and dealt with by the next upscale of it.

An `upscale` without --job makes a hidden temporary job dir beside the output (TEMP_JOB_PREFIX).
Killed (kill -9, a power cut) while it was creating the job, the dir holds a store but no job.json:
nothing in it was committed and nothing can resume it, and no later run would ever look at it again.
Killed after the creation, it holds a job that `streamsr resume` finishes, but its random name was only
printed in a progress line. `sweep_temp_jobs` removes the first kind (under the job's lock, and only
when it is old enough that no upscale can still be between making it and locking it) and names the
second kind for the same output, with its resume command. `prepare_output` does both for `upscale`,
and resolves the output path (a symlink loop is a one-line BadInput, not pathlib's traceback).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..errors import BadInput
from .flows import TEMP_JOB_PREFIX, logger
from .manifest import JobStatus
from .store import JobDir, JobError, job_lock, read_manifest

MIN_AGE_SECONDS = 60.0  # an upscale locks its new temp dir within milliseconds of making it


def prepare_output(output: os.PathLike | str, *, quiet: bool = False) -> Path:
    """The output of an `upscale`, resolved (`resolve_output`), once the leftovers of killed upscales of it
    are dealt with (`sweep_temp_jobs`; its messages go to stderr unless `quiet`)."""
    path = resolve_output(output)
    sweep_temp_jobs(path, log=logger(not quiet))
    return path


def resolve_output(output: os.PathLike | str) -> Path:
    """The absolute output path; BadInput for a symlink loop (pathlib raises RuntimeError or OSError)."""
    try:
        return Path(output).resolve()
    except (RuntimeError, OSError) as exc:
        raise BadInput(f"output {output}: cannot be resolved ({' '.join(str(exc).split())}); a symlink loop? "
                       "choose another name") from None


def stopped_creation(job_dir: JobDir) -> bool:
    """A job dir whose creation was killed, or is running: a store, no manifest, no x16 chain."""
    return job_dir.store.is_dir() and not job_dir.is_job() and not job_dir.is_chain()


def age_seconds(path: Path, *, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def sweep_temp_jobs(output: os.PathLike | str, *, log=lambda message: None,
                    min_age: float = MIN_AGE_SECONDS) -> list[Path]:
    """Beside `output`: remove the temporary job dirs whose creation was killed (returns them), and `log`
    the resume command of each interrupted temporary job of this same output."""
    output = Path(output)
    removed = []
    now = time.time()
    for root in sorted(output.parent.glob(TEMP_JOB_PREFIX + "*")):
        job_dir = JobDir(root)
        if not root.is_dir() or root.is_symlink():
            continue
        if stopped_creation(job_dir):
            if age_seconds(root, now=now) < min_age:
                continue
            try:
                with job_lock(job_dir):  # a run that holds it is not a stopped creation
                    if stopped_creation(job_dir):
                        shutil.rmtree(root, ignore_errors=True)
                        removed.append(root)
            except (JobError, OSError):
                continue
        elif job_dir.is_job():
            try:
                manifest = read_manifest(job_dir)
            except JobError:
                continue
            if manifest.output.path == str(output) and manifest.status is not JobStatus.DONE:
                log(f"an earlier upscale of {output.name} was stopped; its job is kept in {root}: finish it "
                    f"with: streamsr resume {root}")
    return removed
