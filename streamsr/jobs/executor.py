"""Executes the tasks of a job (planner.job_tasks) against its store, one block batch at a time.

Every task reads only arrays that it does not write (state ping-pong), so running a task twice gives
the same bytes: a crash between a task's writes and the cursor commit just re-runs it. The K/V frontier
of a denoiser sweep lives in memory only; on resume in the middle of a sweep it is rebuilt by replaying
the sweep's earlier batches from their intact inputs, without writing (`replay`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch

from ..core import anchoring
from ..core.attention import get_kernel
from ..stream.engine import batch_box, denoise_batch
from .faults import kill_point
from ..stream.frontier import Frontier
from ..io.export import export_array
from ..io.imageio import to_uint
from ..core.model import InfDiT, blocks_to_image, image_to_blocks
from ..core.noise import block_noise
from ..stream.planner import Batch, BatchShape, Grid, Task, frontier_bound, frontier_plan
from ..core.sampler import euler_step, heun_correct, lr_noise_init, to_d
from .store import CroppedView, JobStore
from ..core.resample import upsample_region

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601: grey output from the RGB model


class Timers:
    """Seconds spent per category (model, read, write, other) and blocks computed by the model."""

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


class TaskRunner:
    """Runs tasks of one job; holds the model, the schedule and the current sweep's frontier."""

    def __init__(self, store: JobStore, model: InfDiT, vector: torch.Tensor | None, sigmas: list[float],
                 device: torch.device, backend: str):
        m = store.manifest
        self.store = store
        self.model = model
        self.vector = vector
        self.sigmas = sigmas
        self.device = device
        self.kernel = get_kernel(backend)
        self.job = m["job"]
        self.geo = store.geometry
        self.grid: Grid = self.geo.grid
        self.shape = BatchShape(self.job["batch_rows"], self.job["batch_cols"])
        self.plan = frontier_plan(self.grid, self.shape)
        self.bs = self.geo.block_size
        self.steps = self.job["steps"]
        self.heun = self.job["sampler"] == "heun"
        self.lr = store.array("lr")
        self.timers = Timers()
        self._sweep: tuple[str, int] | None = None
        self._frontier: Frontier | None = None
        self._emb: torch.Tensor | None = None
        self._task_index = -1

    # ---- helpers --------------------------------------------------------------------------------
    def _read(self, name: str, box) -> torch.Tensor:
        with self.timers("read"):
            return self.store.read(name, box).to(self.device)

    def _write(self, name: str, box, value: torch.Tensor) -> None:
        with self.timers("write"):
            self.store.write(name, box, value)
        kill_point(self._task_index, "mid-write")

    def _up(self, box) -> torch.Tensor:
        with self.timers("read"):
            return upsample_region(self.lr, box).to(self.device)  # (1, 3, h, w)

    def final_state(self) -> str:
        return f"state{self.steps % 2}"

    def _start_sweep(self, task: Task, sigma: float) -> None:
        if self._sweep == task.sweep:
            return
        if self._frontier is not None and len(self._frontier):
            raise RuntimeError(f"sweep {self._sweep} ended with K/V left in the frontier")
        self._sweep = task.sweep
        spill = self.store.root / "frontier"
        if self.job.get("placement", "device") == "disk" and spill.is_dir():
            for stale in spill.glob("kv_*.bin"):  # K/V are never persisted across sweeps or runs
                stale.unlink()
        self._frontier = Frontier(frontier_bound(self.grid, self.shape), self.model.cfg.layers,
                                  self.job.get("placement", "device"), self.device, spill)
        sig = torch.tensor([sigma], device=self.device)
        with torch.no_grad():
            self._emb = self.model.embedding(sig, self.vector)

    def _denoise(self, task: Task, x: torch.Tensor, box, sigma: float) -> torch.Tensor:
        """D of the batch's blocks: (1, 3, h, w) float32."""
        self._start_sweep(task, sigma)
        up = self._up(box)
        grid = Grid(task.batch.rows, task.batch.cols)
        with self.timers("model"), torch.no_grad():
            d = denoise_batch(self.model, task.batch, self.plan, self._frontier, image_to_blocks(x, self.bs),
                              image_to_blocks(up, self.bs), self.lr, torch.tensor([sigma], device=self.device),
                              self._emb, self.kernel)
            if task.batch.index + 1 < len(self.plan.batches):  # stage the next batch's K/V during this one
                self._frontier.prefetch(self.plan.reads(self.plan.batches[task.batch.index + 1]))
            if self.device.type == "cuda":  # the compute stream only: prefetch copies keep running
                torch.cuda.current_stream(self.device).synchronize()
        self.timers.model_blocks += task.batch.rows * task.batch.cols
        return blocks_to_image(d, grid)

    # ---- the task kinds -------------------------------------------------------------------------
    def run(self, task: Task, write: bool = True) -> dict | None:
        """Run one task. Returns manifest changes to commit with the cursor (stats), else None."""
        self._task_index = task.index
        if task.kind == "export":
            self.export()
            return None
        box = batch_box(task.batch, self.bs)
        if task.kind == "init":
            self._init(task.batch, box)
        elif task.kind == "predict":
            self._predict(task, box, write)
        elif task.kind == "correct":
            self._correct(task, box, write)
        elif task.kind == "stats":
            return self._stats(box)
        elif task.kind == "anchor":
            self._anchor(box)
        else:
            raise ValueError(f"unknown task kind {task.kind!r}")
        return None

    def replay(self, task: Task) -> None:
        """Recompute a finished batch of the current sweep to refill the frontier; writes nothing."""
        self.run(task, write=False)

    def _init(self, batch: Batch, box) -> None:
        """x_T = up(LR) + sigma_max * eps, eps drawn per block from (seed, block); x_T = up(LR) when the
        job's noise_init is off (absent in manifests of earlier versions: on)."""
        up = self._up(box)
        if not self.job.get("noise_init", True):
            self._write("state0", box, up)
            return
        eps = torch.stack([block_noise(self.job["seed"], blk, (1, 3, self.bs, self.bs))
                           for blk in batch.blocks()], dim=1).to(self.device)  # (1, N, 3, bs, bs)
        x = lr_noise_init(up, blocks_to_image(eps, Grid(batch.rows, batch.cols)), self.sigmas[0])
        self._write("state0", box, x)

    def _predict(self, task: Task, box, write: bool) -> None:
        i = task.step
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x = self._read(f"state{i % 2}", box)
        d = to_d(x, self._denoise(task, x, box, sigma), sigma)
        x_next = euler_step(x, d, sigma, sigma_next)
        if not write:
            return
        if self.heun and sigma_next > 0:
            self._write("pred", box, x_next)
            self._write("deriv", box, d)
        else:
            self._write(f"state{(i + 1) % 2}", box, x_next)

    def _correct(self, task: Task, box, write: bool) -> None:
        i = task.step
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        pred = self._read("pred", box)
        d_next = to_d(pred, self._denoise(task, pred, box, sigma_next), sigma_next)
        if not write:
            return
        x = self._read(f"state{i % 2}", box)
        d = self._read("deriv", box)
        self._write(f"state{(i + 1) % 2}", box, heun_correct(x, d, d_next, sigma, sigma_next))

    def _valid(self, box) -> tuple[int, int, int, int] | None:
        """The part of a box inside the unpadded output, relative to the box; None if empty."""
        y0, y1, x0, x1 = box
        h, w = self.geo.hr_size
        if y0 >= h or x0 >= w:
            return None
        return 0, min(y1, h) - y0, 0, min(x1, w) - x0

    def _stats(self, box) -> dict:
        """Per-channel moments of the result and of up(LR) over the unpadded part of the box."""
        acc = self.store.manifest["anchor_moments"]
        valid = self._valid(box)
        if valid is None:
            return {}
        a, b, c, e = valid
        x = self._read(self.final_state(), box)[..., a:b, c:e].double()
        up = self._up(box)[..., a:b, c:e].double()
        out = anchoring.merge(anchoring.Moments.from_json(acc["out"]), anchoring.block_moments(x))
        ref = anchoring.merge(anchoring.Moments.from_json(acc["ref"]), anchoring.block_moments(up))
        return {"anchor_moments": {"out": out.to_json(), "ref": ref.to_json()}}

    def _anchored(self, box) -> torch.Tensor:
        """The final state of the box with the job's anchoring applied: (1, 3, h, w)."""
        mode = self.job["anchor"]
        if mode == "global":
            acc = self.store.manifest["anchor_moments"]
            scale, shift = anchoring.global_affine(anchoring.Moments.from_json(acc["out"]),
                                                   anchoring.Moments.from_json(acc["ref"]))
            return anchoring.apply_affine(self._read(self.final_state(), box), scale, shift)
        if mode == "local":
            size = self.geo.hr_padded
            final = self.final_state()
            with self.timers("read"):
                return anchoring.local_anchor_region(
                    lambda y0, y1, x0, x1: self.store.read(final, (y0, y1, x0, x1)),
                    lambda y0, y1, x0, x1: upsample_region(self.lr, (y0, y1, x0, x1)),
                    size, box, anchoring.LOCAL_SIGMA)
        return self._read(self.final_state(), box)

    def _anchor(self, box) -> None:
        """Anchoring, then RGB -> output channels and quantisation into the output array."""
        y = (self._anchored(box).clamp(-1, 1) + 1) / 2  # (1, 3, h, w) in [0, 1]
        info = self.store.manifest["input"]
        rgb = y[0].permute(1, 2, 0).cpu().numpy()  # (h, w, 3)
        planes = [rgb @ np.array(LUMA, dtype=np.float32)[:, None]] if info["mode"] in ("L", "LA") else [rgb]
        if "A" in info["mode"]:
            planes.append(self._alpha(box))
        pixels = to_uint(np.concatenate(planes, axis=-1), info["bit_depth"])  # (h, w, C)
        y0, y1, x0, x1 = box
        with self.timers("write"):
            self.store.array("output")[y0:y1, x0:x1, :] = pixels
        kill_point(self._task_index, "mid-write")

    def _alpha(self, box) -> np.ndarray:
        """Bicubic x4 of the unpadded input alpha over the box (zero in the padding): (h, w, 1)."""
        y0, y1, x0, x1 = box
        alpha = np.zeros((y1 - y0, x1 - x0, 1), dtype=np.float32)
        valid = self._valid(box)
        if valid is not None:
            _, b, _, e = valid
            source = CroppedView(self.store.array("alpha"), self.geo.lr_height, self.geo.lr_width)
            region = upsample_region(source, (y0, y0 + b, x0, x0 + e), clamp=False).clamp(0, 1)  # (1, 1, b, e)
            alpha[:b, :e] = region[0].permute(1, 2, 0).numpy()
        return alpha

    def export(self) -> None:
        """Write the output file (format from its suffix) by bands, cropped to the unpadded size."""
        info, out = self.store.manifest["input"], self.store.manifest["output"]
        if out["path"] is None:  # the first stage of a x16 chain: its output array feeds the next stage
            return
        with self.timers("write"):
            export_array(self.store.array("output"), self.geo.hr_size, out["path"], None, info["bit_depth"])
