"""The tasks after the sampler: stats, anchor and export (planner.job_tasks), one block batch at a time.

stats   per-channel moments of the result and of up(LR) over the unpadded image (global anchoring);
anchor  the job's anchoring applied to the final state, RGB -> the output's channels (luma for grey
        inputs, the bicubic x4 of the input alpha), quantised into the output array;
export  the output file, by bands, cropped to the unpadded size.
Like the model tasks, each reads only what it does not write, so a re-run gives the same bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core import anchoring
from ..core.resample import upsample_region
from ..io.depth import to_uint
from ..io.export import export_array
from ..io.problems import OutputError
from ..stream.planner import Batch, batch_box
from .blockio import BlockIO, BlockWrite, Box
from .export import output_meta
from .integrity import CheckedArray, checked_output
from .manifest import AnchorMoments
from .progress import Timers
from .store import CroppedView, JobStore, final_array

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601: grey output from the RGB model


class Finalizer:
    """Runs the stats, anchor and export tasks of one job."""

    def __init__(self, store: JobStore, *, device: torch.device, timers: Timers):
        m = store.manifest
        self.store = store
        self.timers = timers
        self.io = BlockIO(store, device=device, timers=timers)
        self.anchor_mode = m.job.anchor
        self.final = final_array(m)  # x_0, the sampler's result
        self.geo = m.geometry
        self.input = m.input
        self.output = m.output
        self.alpha = (CheckedArray(store.reading("alpha"), "alpha", job=str(store.dir.root))
                      if "A" in m.input.mode else None)

    def _valid(self, box: Box) -> Box | None:
        """The part of a box inside the unpadded output, relative to the box; None if empty."""
        y0, y1, x0, x1 = box
        h, w = self.geo.hr_size
        if y0 >= h or x0 >= w:
            return None
        return 0, min(y1, h) - y0, 0, min(x1, w) - x0

    # ---- stats ----------------------------------------------------------------------------------
    def stats(self, batch: Batch, moments: AnchorMoments) -> AnchorMoments:
        """`moments` with those of the batch's result and up(LR) (unpadded part) merged in."""
        box = batch_box(batch, self.geo.block_size)
        valid = self._valid(box)
        if valid is None:
            return moments
        a, b, c, e = valid
        x = self.io.read(self.final, box)[..., a:b, c:e].double()  # (1, 3, b, e)
        up = self.io.up(box)[..., a:b, c:e].double()  # (1, 3, b, e)
        return AnchorMoments(out=anchoring.merge(moments.out, anchoring.block_moments(x)),
                             ref=anchoring.merge(moments.ref, anchoring.block_moments(up)))

    # ---- anchor ---------------------------------------------------------------------------------
    def anchor(self, batch: Batch, moments: AnchorMoments) -> list[BlockWrite]:
        """Anchoring, then RGB -> output channels and quantisation: the output array's write."""
        box = batch_box(batch, self.geo.block_size)
        y = (self._anchored(box, moments).clamp(-1, 1) + 1) / 2  # (1, 3, h, w) in [0, 1]
        rgb = y[0].permute(1, 2, 0).cpu().numpy()  # (h, w, 3)
        mode = self.input.mode
        planes = [rgb @ np.array(LUMA, dtype=np.float32)[:, None]] if mode in ("L", "LA") else [rgb]  # (h, w, 1|3)
        if "A" in mode:
            planes.append(self._alpha(box))  # (h, w, 1)
        pixels = to_uint(np.concatenate(planes, axis=-1), self.input.bit_depth)  # (h, w, C)
        return [BlockWrite("output", box, pixels)]

    def _anchored(self, box: Box, moments: AnchorMoments) -> torch.Tensor:
        """The final state of the box with the job's anchoring applied: (1, 3, h, w)."""
        if self.anchor_mode == "global":
            scale, shift = anchoring.global_affine(moments.out, moments.ref)
            return anchoring.apply_affine(self.io.read(self.final, box), scale, shift)
        if self.anchor_mode == "local":
            store, lr, final = self.store, self.io.lr, self.final
            with self.timers("read"):
                return anchoring.local_anchor_region(
                    lambda y0, y1, x0, x1: store.read(final, (y0, y1, x0, x1)),
                    lambda y0, y1, x0, x1: upsample_region(lr, (y0, y1, x0, x1)),
                    self.geo.hr_padded, box, anchoring.LOCAL_SIGMA)
        return self.io.read(self.final, box)

    def _alpha(self, box: Box) -> np.ndarray:
        """Bicubic x4 of the unpadded input alpha over the box (zero in the padding): (h, w, 1)."""
        y0, y1, x0, x1 = box
        alpha = np.zeros((y1 - y0, x1 - x0, 1), dtype=np.float32)
        valid = self._valid(box)
        if valid is not None:
            _, b, _, e = valid
            source = CroppedView(self.alpha, self.geo.lr_height, self.geo.lr_width)
            region = upsample_region(source, (y0, y0 + b, x0, x0 + e), clamp=False).clamp(0, 1)  # (1, 1, b, e)
            alpha[:b, :e] = region[0].permute(1, 2, 0).numpy()
        return alpha

    # ---- export ---------------------------------------------------------------------------------
    def export(self) -> None:
        """Write the output file (format from its suffix) by bands, cropped to the unpadded size. A failed
        write (a full disk) says how to finish: the job is complete but for this task, kept to be resumed."""
        if self.output.path is None:  # the first stage of a x16 chain: its output array feeds the next stage
            return
        with self.timers("write"):
            output = checked_output(self.store.reading("output"), folder=self.store.dir.store / "output",
                                    job=str(self.store.dir.root))
            try:
                export_array(output, self.geo.hr_size, self.output.path, bit_depth=self.input.bit_depth,
                             quality=self.store.manifest.job.quality,  # JPEG/WebP (upscale --quality)
                             meta=output_meta(self.store.dir, self.store.manifest))
            except OutputError as exc:
                job = self.store.dir.root.parent if self.store.manifest.stage.startswith("x16") else self.store.dir.root
                raise OutputError(f"{exc}; the job is kept: once that is fixed, finish it with: "
                                  f"streamsr resume {job}") from None
