"""A job dir as the viewer sees it: its arrays opened read-only through JobDir (without the job's lock, so
it works while the job runs), its progress, and its two layers: the LR upsampled x4 and the output.

`lr` is the LR (in [-1, 1]) bilinearly upsampled x4 into the output's pixel grid, so both layers align;
`output` is the output array cropped to the unpadded size. Which output blocks are done: a block is done
when the anchor task of its block batch is committed (`anchor_batches_done`), read from job.json; the
manifest is written after the data it describes, so a done block is always on disk, and a chunk written
but not yet committed still shows the LR. Blocks not done show the upsampled LR, never black.
"""

from __future__ import annotations

import threading

import numpy as np

from ..config import SR_SCALE
from ..errors import BadInput
from ..io.pyramid import reduce_by
from ..jobs.manifest import JobStatus, Manifest
from ..jobs.store import JobDir, read_manifest
from ..stream.planner import TaskKind
from .tiles import DIRECT_MAX, Box, Layer, bilinear_region, display_channels, to_display, to_uint8


def anchor_batches_done(manifest: Manifest, anchor_start: int, n_batches: int) -> int:
    """Batches of the anchor sweep (starting at task `anchor_start`) that are committed: their output
    blocks are final."""
    if manifest.status == JobStatus.DONE:
        return n_batches
    return min(max(manifest.cursor - anchor_start, 0), n_batches)


class JobView:
    """An x4 job dir opened read-only: geometry, arrays, task list and which output blocks are done."""

    def __init__(self, job_dir: JobDir):
        import zarr  # noqa: PLC0415

        self.dir = job_dir
        m = read_manifest(job_dir)
        self.geo = m.geometry
        try:
            group = zarr.open_group(job_dir.store, mode="r")
            self.lr = group["lr"]  # (1, 3, h_pad, w_pad) float32 in [-1, 1]
            self.output = group["output"]  # (H_pad, W_pad, C) uint8|uint16
            self.alpha = group["alpha"] if "alpha" in group else None  # (1, 1, h_pad, w_pad) float32
        except Exception as exc:  # zarr raises several types for a missing or damaged store
            raise BadInput(f"cannot open the job store {job_dir.store}: {exc}") from None
        self.height, self.width = self.geo.hr_size
        self.tasks = m.tasks()
        self.shape = m.batch_shape
        self.n_batches = len(self.tasks.batches)
        self.batch_cols = self.tasks.batches.cols
        self.anchor_start = self.tasks.first(TaskKind.ANCHOR)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._manifest = m

    def manifest(self) -> Manifest:
        """The manifest, re-read when job.json changed (it is replaced atomically by the job)."""
        try:
            st = self.dir.manifest.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return self._manifest
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._manifest, self._stamp = read_manifest(self.dir), stamp
                except Exception:  # noqa: BLE001 - mid-replace on an odd filesystem: keep the last good one
                    pass
            return self._manifest

    def done_batches(self) -> int:
        """Batches of the anchor sweep that are committed: their output blocks are final."""
        return anchor_batches_done(self.manifest(), self.anchor_start, self.n_batches)

    def done_mask(self, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
        """Done flags (len(rows), len(cols)) of blocks rows x cols (block indices) given k done anchor batches."""
        if k >= self.n_batches:
            return np.ones((len(rows), len(cols)), dtype=bool)
        index = (rows[:, None] // self.shape.rows) * self.batch_cols + cols[None, :] // self.shape.cols
        return index < k

    def done_blocks(self, box: Box | None = None, *, k: int | None = None) -> int:
        """Done blocks under `box` (default: all), given k done anchor batches (default: now)."""
        grid, bs = self.geo.grid, self.geo.block_size
        y0, y1, x0, x1 = box or (0, grid.rows * bs, 0, grid.cols * bs)
        rows, cols = np.arange(y0 // bs, -(-y1 // bs)), np.arange(x0 // bs, -(-x1 // bs))
        k = self.done_batches() if k is None else k
        return int(self.done_mask(rows, cols, k).sum())


class JobLrLayer(Layer):
    """The job's LR, bilinearly upsampled x4 into the output's pixel grid (padding cropped)."""

    def __init__(self, job: JobView):
        self.job = job
        self.width, self.height = job.width, job.height
        self.lh, self.lw = job.geo.lr_height, job.geo.lr_width
        self.channels = 4 if job.alpha is not None else 3

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(C, h, w) float32 LR region in [0, 1] (colour from [-1, 1], then alpha)."""
        rgb = (np.asarray(self.job.lr[0, :, y0:y1, x0:x1], dtype=np.float32) + 1) * 0.5  # (3, h, w)
        if self.job.alpha is None:
            return rgb
        return np.concatenate([rgb, np.asarray(self.job.alpha[0, :, y0:y1, x0:x1], dtype=np.float32)], axis=0)

    def direct(self, factor, box):
        y0, y1, x0, x1 = box
        if factor < SR_SCALE:
            up = bilinear_region(self._read, self.lh, self.lw, box, SR_SCALE)  # (C, h, w)
            return reduce_by(to_uint8(up.transpose(1, 2, 0)), factor)
        if factor > SR_SCALE * DIRECT_MAX:
            return None
        region = self._read(y0 // SR_SCALE, -(-y1 // SR_SCALE), x0 // SR_SCALE, -(-x1 // SR_SCALE))  # (C, h, w)
        return reduce_by(to_uint8(region.transpose(1, 2, 0)), factor // SR_SCALE)


class JobOutputLayer(Layer):
    """The job's output array (cropped); blocks not done yet show the LR layer instead."""

    def __init__(self, job: JobView, lr: JobLrLayer):
        self.job, self.lr = job, lr
        self.width, self.height = job.width, job.height
        self.channels = display_channels(job.output.shape[2])

    def version(self, box):
        return self.job.done_blocks(box)

    def direct(self, factor, box):
        if factor > DIRECT_MAX:
            return None
        y0, y1, x0, x1 = box
        job, bs = self.job, self.job.geo.block_size
        k = job.done_batches()
        h, w = -(-(y1 - y0) // factor), -(-(x1 - x0) // factor)
        ys, xs = y0 + np.arange(h) * factor, x0 + np.arange(w) * factor  # level pixel -> output pixel
        brows, bcols = np.unique(ys // bs), np.unique(xs // bs)
        block_done = job.done_mask(brows, bcols, k)
        if block_done.all():
            return self._output(factor, box)
        fallback = self.lr.direct(factor, box)
        if not block_done.any():
            return fallback
        done = job.done_mask(ys // bs, xs // bs, k)  # (h, w): per level pixel
        return np.where(done[..., None], self._output(factor, box), fallback)

    def _output(self, factor: int, box: Box) -> np.ndarray:
        y0, y1, x0, x1 = box
        pixels = to_display(to_uint8(np.asarray(self.job.output[y0:y1, x0:x1, :])))  # (h, w, 3|4)
        return reduce_by(pixels, factor)
