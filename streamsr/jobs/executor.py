"""The model tasks of a job, init, predict and correct (planner.job_tasks), one block batch at a time.

Every task reads only arrays that it does not write (state ping-pong), so running a task twice gives
the same bytes: a crash between a task's writes and the cursor commit just re-runs it. The K/V frontier
of a denoiser sweep lives in memory only; on resume in the middle of a sweep it is rebuilt by replaying
the sweep's earlier batches from their intact inputs, without writing (`SweepExecutor.replay`).
The tasks after the sampler (stats, anchor, export) are finalize.py's.
"""

from __future__ import annotations

import torch

from ..core.attention import get_kernel
from ..core.denoiser import embedding
from ..core.grid import Grid, blocks_to_image, image_to_blocks
from ..core.model import InfDiT
from ..core.noise import block_noise
from ..core.sampler import euler_step, heun_correct, lr_noise_init, to_d
from ..stream.engine import denoise_batch
from ..stream.frontier import Frontier
from ..stream.planner import Sweep, Task, TaskKind, batch_box, frontier_bound, frontier_plan
from .blockio import BlockIO, Box
from .progress import Timers
from .store import JobStore, state_array


class SweepExecutor:
    """Runs the model tasks of one job; holds the model, the schedule and the current sweep's frontier."""

    def __init__(self, store: JobStore, model: InfDiT, *, vector: torch.Tensor | None, device: torch.device,
                 timers: Timers):
        m = store.manifest
        self.job = m.job
        self.model = model
        self.vector = vector  # (1, V) or None
        self.device = device
        self.timers = timers
        self.io = BlockIO(store, device=device, timers=timers)
        self.spill = store.dir.frontier
        self.kernel = get_kernel(self.job.backend)
        self.sigmas = m.sigmas
        self.bs = m.geometry.block_size
        self.grid = m.geometry.grid
        self.shape = m.batch_shape
        self.plan = frontier_plan(self.grid, self.shape)
        self._sweep: Sweep | None = None
        self._frontier: Frontier | None = None
        self._emb: torch.Tensor | None = None  # (1, C) time + vector embedding of the current sweep

    # ---- the two ways to run a task -------------------------------------------------------------
    def run(self, task: Task) -> None:
        """Run an init, predict or correct task: compute its batch and write the result."""
        box = batch_box(task.batch, self.bs)
        if task.kind is TaskKind.INIT:
            self._init(task, box)
        elif task.kind is TaskKind.PREDICT:
            self._predict(task, box)
        elif task.kind is TaskKind.CORRECT:
            self._correct(task, box)
        else:
            raise ValueError(f"{task.kind} is not a model task")

    def replay(self, task: Task) -> None:
        """Recompute the denoiser on a batch that the current sweep already committed, so that its K/V
        enter the frontier again (resume inside a sweep); writes nothing."""
        if not task.is_model:
            raise ValueError(f"only denoiser tasks are replayed, not {task.kind}")
        box = batch_box(task.batch, self.bs)
        name, sigma = self._model_input(task)
        self._denoise(task, self.io.read(name, box), box, sigma)

    # ---- the sweep and its frontier -------------------------------------------------------------
    def _model_input(self, task: Task) -> tuple[str, float]:
        """The array the denoiser reads and its sigma: x_i at sigma_i (predict), the Euler prediction at
        sigma_{i+1} (correct)."""
        i = task.step
        if task.kind is TaskKind.PREDICT:
            return state_array(i), self.sigmas[i]
        return "pred", self.sigmas[i + 1]

    def _start_sweep(self, task: Task, sigma: float) -> None:
        if self._sweep == task.sweep:
            return
        if self._frontier is not None and len(self._frontier):
            raise RuntimeError(f"sweep {self._sweep} ended with K/V left in the frontier")
        self._sweep = task.sweep
        if self.job.placement == "disk" and self.spill.is_dir():
            for stale in self.spill.glob("kv_*.bin"):  # K/V are never persisted across sweeps or runs
                stale.unlink()
        self._frontier = Frontier(frontier_bound(self.grid, self.shape), self.model.cfg.layers, self.job.placement,
                                  self.device, self.spill)
        sig = torch.tensor([sigma], device=self.device)  # (1,)
        with torch.no_grad():
            self._emb = embedding(self.model, sig, self.vector)  # (1, C)

    def _denoise(self, task: Task, x: torch.Tensor, box: Box, sigma: float) -> torch.Tensor:
        """D(x; sigma) of the batch's blocks, x (1, 3, h, w): (1, 3, h, w) float32."""
        self._start_sweep(task, sigma)
        up = self.io.up(box)  # (1, 3, h, w)
        batch = task.batch
        with self.timers("model"), torch.no_grad():
            d = denoise_batch(self.model, image_to_blocks(x, self.bs), image_to_blocks(up, self.bs),
                              sigma=torch.tensor([sigma], device=self.device), emb=self._emb, lr=self.io.lr,
                              plan=self.plan.batch_plan(batch), frontier=self._frontier,
                              kernel=self.kernel)  # (1, N, 3, bs, bs); stages the next batch's K/V
            if self.device.type == "cuda":  # the compute stream only: prefetch copies keep running
                torch.cuda.current_stream(self.device).synchronize()
        self.timers.model_blocks += batch.rows * batch.cols
        return blocks_to_image(d, Grid(batch.rows, batch.cols))  # (1, 3, h, w)

    # ---- the task kinds -------------------------------------------------------------------------
    def _init(self, task: Task, box: Box) -> None:
        """x_T = up(LR) + sigma_max * eps, eps drawn per block from (seed, block); x_T = up(LR) when the
        job's noise_init is off."""
        up = self.io.up(box)  # (1, 3, h, w)
        if not self.job.noise_init:
            self.io.write(state_array(0), box, up, task=task.index)
            return
        batch = task.batch
        eps = torch.stack([block_noise(self.job.seed, blk, (1, 3, self.bs, self.bs))
                           for blk in batch.blocks()], dim=1).to(self.device)  # (1, N, 3, bs, bs)
        x = lr_noise_init(up, blocks_to_image(eps, Grid(batch.rows, batch.cols)), self.sigmas[0])  # (1, 3, h, w)
        self.io.write(state_array(0), box, x, task=task.index)

    def _predict(self, task: Task, box: Box) -> None:
        """Euler step from x_i; with Heun (EDM algorithm 2) a correct sweep follows unless sigma_{i+1} = 0."""
        i = task.step
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x = self.io.read(state_array(i), box)  # (1, 3, h, w)
        d = to_d(x, self._denoise(task, x, box, sigma), sigma)  # (1, 3, h, w)
        x_next = euler_step(x, d, sigma, sigma_next)  # (1, 3, h, w)
        if self.job.sampler == "heun" and sigma_next > 0:
            self.io.write("pred", box, x_next, task=task.index)
            self.io.write("deriv", box, d, task=task.index)
        else:
            self.io.write(state_array(i + 1), box, x_next, task=task.index)

    def _correct(self, task: Task, box: Box) -> None:
        """Heun's correction of the Euler prediction: x_{i+1} = x_i + (s' - s) (d + d') / 2."""
        i = task.step
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        pred = self.io.read("pred", box)  # (1, 3, h, w)
        d_next = to_d(pred, self._denoise(task, pred, box, sigma_next), sigma_next)  # (1, 3, h, w)
        x = self.io.read(state_array(i), box)  # (1, 3, h, w)
        d = self.io.read("deriv", box)  # (1, 3, h, w)
        self.io.write(state_array(i + 1), box, heun_correct(x, d, d_next, sigma, sigma_next), task=task.index)
