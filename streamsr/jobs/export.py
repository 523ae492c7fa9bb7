"""`streamsr export`: a finished job's output array, found through its JobDir, handed to the io exporters.

An x4 job dir exports its own output; an x16 job dir (a chain) exports its second stage. The job must
be done, or have only its final export task left (its output array is complete then, e.g. after the
output file could not be written). Everything about pixels and formats is streamsr.io.export's.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadInput
from ..io.export import check_export_path, export_array
from ..io.problems import one_line, reason
from .integrity import checked_output
from .manifest import JobStatus, Manifest
from .store import JobDir, JobError, read_manifest


def _finished_manifest(job_dir: JobDir, shown: os.PathLike | str) -> Manifest:
    """The manifest of the x4 job dir holding the result; BadInput unless it is finished."""
    try:
        manifest = read_manifest(job_dir)
    except JobError as e:
        raise BadInput(one_line(e)) from None
    status, cursor, total = manifest.status, manifest.cursor, manifest.total_tasks
    if status != JobStatus.DONE and not (total and cursor >= total - 1):
        raise BadInput(f"job {shown} is not finished (status {status}, task {cursor}/{total}); "
                       f"resume it first: streamsr resume {shown}")
    return manifest


def export_job(job_dir: JobDir | os.PathLike | str, path: os.PathLike | str, fmt: str | None = None,
               **options) -> Path:
    """Export the output of a finished job (x4 job dir, or a x16 job dir: its second stage) to `path`.

    fmt: "png", "tiff", "zarr", "dzi" or None (from the suffix). `options` are those of
    streamsr.io.export.export_array (compression, quality, tile_format, ngff, workers, progress...).
    Returns the path written.
    """
    shown = job_dir.root if isinstance(job_dir, JobDir) else job_dir
    top = JobDir.of(job_dir)
    result = top.result()
    if top.is_chain() and not result.is_job():
        raise BadInput(f"x16 job {shown} has not started its second stage; resume it first: "
                       f"streamsr resume {shown}")
    manifest = _finished_manifest(result, shown)
    check_export_path(path, fmt=fmt)
    import zarr  # noqa: PLC0415

    try:
        output = zarr.open_group(os.fspath(result.store), mode="r")["output"]  # (H_pad, W_pad, C)
    except Exception as e:  # noqa: BLE001 - a damaged store
        raise BadInput(one_line(f"job {shown}: cannot open its output array: {type(e).__name__}: "
                                f"{reason(e)}")) from None
    output = checked_output(output, folder=result.store / "output", job=str(shown))  # every block present, intact
    return export_array(output, manifest.geometry.hr_size, path, fmt=fmt, bit_depth=manifest.input.bit_depth,
                        **options)
