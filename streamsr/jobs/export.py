"""`streamsr export`: a finished job's output array, found through its JobDir, handed to the io exporters.

An x4 job dir exports its own output; an x16 job dir (a chain) exports its second stage. The job must
be done, or have only its final export task left (its output array is complete then, e.g. after the
output file could not be written). Everything about pixels and formats is streamsr.io.export's.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import QUALITY_RANGE
from ..errors import BadInput
from ..io.export import check_export_path, export_array
from ..io.metadata import ImageMeta, read_meta
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


def output_meta(job_dir: JobDir, manifest: Manifest) -> ImageMeta:
    """The ICC profile, EXIF and DPI for a job's output, from its input file (a x16 chain's second stage: the
    chain's input, scaled x16); empty when the input file is gone or is a zarr store."""
    import json  # noqa: PLC0415

    source, scale = Path(manifest.input.path), 4
    chain = job_dir.root.parent / "chain.json"
    if not source.is_file() and chain.is_file():
        try:
            source, scale = Path(json.loads(chain.read_text())["input"]), 16
        except (OSError, ValueError, KeyError, TypeError):
            return ImageMeta()
    h, w = manifest.geometry.hr_size
    return read_meta(source).for_output(scale=scale, size=(w, h))


def export_quality(quality, manifest: Manifest) -> int:
    """The JPEG/WebP quality of an export: the one asked for (1..100, BadInput otherwise), else the job's own
    (`upscale --quality`), so that re-exporting a job gives the file its upscale wrote."""
    if quality is None:
        return manifest.job.quality
    low, high = QUALITY_RANGE
    if isinstance(quality, bool) or not isinstance(quality, int) or not low <= quality <= high:
        raise BadInput(f"quality must be an integer in {low}..{high}, got {quality!r}")
    return quality


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
    options.setdefault("meta", output_meta(result, manifest))  # ICC profile, EXIF, DPI of the input
    options["quality"] = export_quality(options.get("quality"), manifest)
    import zarr  # noqa: PLC0415

    try:
        output = zarr.open_group(os.fspath(result.store), mode="r")["output"]  # (H_pad, W_pad, C)
    except Exception as e:  # noqa: BLE001 - a damaged store
        raise BadInput(one_line(f"job {shown}: cannot open its output array: {type(e).__name__}: "
                                f"{reason(e)}")) from None
    output = checked_output(output, folder=result.store / "output", job=str(shown))  # every block present, intact
    return export_array(output, manifest.geometry.hr_size, path, fmt=fmt, bit_depth=manifest.input.bit_depth,
                        **options)
