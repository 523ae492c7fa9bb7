"""Is a loaded manifest self-consistent? An edited or damaged job.json is refused before it is used.

`check_loaded` runs on every load (cheap: types, geometry, status against cursor); `check_runnable` runs
before a job's tasks are run, verified or resumed (it builds the task list: the cursor and total_tasks must
fit it, and the sigma schedule must be the job's own: steps + 1 finite, decreasing values ending at 0).
Each failure is a ValueError with one line naming the key; the store turns it into a JobError.
"""

from __future__ import annotations

import math

from .manifest import JobStatus, Manifest


def whole(value, name: str, *, low: int = 0) -> int:
    """`value` if it is an integer >= low (not a bool, a float or a string); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return value


def check_loaded(m: Manifest) -> None:
    """Types, geometry and status against cursor (no task list needed)."""
    geo = m.geometry
    for name in ("lr_height", "lr_width", "block_size"):
        whole(getattr(geo, name), f"geometry.{name}", low=1)
    if geo.block_size != m.model.config.block_size:
        raise ValueError(f"geometry.block_size {geo.block_size} is not the model's block size "
                         f"{m.model.config.block_size}")
    if (m.input.width, m.input.height) != (geo.lr_width, geo.lr_height):
        raise ValueError(f"input size {m.input.width}x{m.input.height} is not the geometry's "
                         f"{geo.lr_width}x{geo.lr_height}")
    whole(m.cursor, "cursor")
    whole(m.total_tasks, "total_tasks")
    if m.status is JobStatus.DONE and m.cursor != m.total_tasks:
        raise ValueError(f"status is done but the cursor is at task {m.cursor} of {m.total_tasks}")
    if m.status is JobStatus.CREATED and m.cursor != 0:
        raise ValueError(f"status is created but the cursor is at task {m.cursor}")


def check_runnable(m: Manifest) -> None:
    """The cursor and total_tasks against the job's task list, and the sigma schedule against its steps."""
    check_loaded(m)
    steps, sigmas = m.job.steps, m.sigmas
    if len(sigmas) != steps + 1:
        raise ValueError(f"sigmas holds {len(sigmas)} values, the job's {steps} steps need {steps + 1}")
    if not all(math.isfinite(s) for s in sigmas) or sigmas[-1] != 0.0 \
            or any(a <= b for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError("sigmas must be finite and decreasing, ending at 0")
    if not math.isclose(sigmas[0], m.job.sigma_max, rel_tol=1e-6):
        raise ValueError(f"sigmas start at {sigmas[0]}, not at the job's sigma_max {m.job.sigma_max}")
    total = len(m.tasks())
    if m.total_tasks != total:
        raise ValueError(f"total_tasks is {m.total_tasks}, but the job's task list has {total} tasks")


def check_raw(data) -> None:
    """Keys whose type Manifest.from_json would coerce (a cursor "7" or 7.5 is an edit, not a cursor)."""
    if isinstance(data, dict):
        whole(data.get("cursor", 0), "cursor")
        if "total_tasks" in data:
            whole(data["total_tasks"], "total_tasks")
