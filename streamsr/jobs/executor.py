"""The model tasks of a job, init, predict and correct (planner.job_tasks), one block batch at a time.

Every task reads only arrays that it does not write (state ping-pong), so running a task twice gives
the same bytes: a crash between a task's writes and the cursor commit just re-runs it. The K/V frontier
of a denoiser sweep lives in memory only; on resume in the middle of a sweep it is rebuilt by replaying
the sweep's earlier batches from their intact inputs, without writing (`SweepExecutor.replay`).
The tasks after the sampler (stats, anchor, export) are finalize.py's.

A task runs in three parts, so that the pipeline (pipeline.py) can overlap them: `inputs` reads what the
task needs (the arrays it reads, and the batch's LR read once: upsampled LR and LR windows) on the I/O
thread; `compute` runs the model and the sampler step on the compute device; the `BlockWrite`s it returns
go to the store's writer (shards.py) on the I/O thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.attention import get_kernel
from ..core.conditioning import LRRegion, LRWindows, lr_windows
from ..core.denoiser import embedding
from ..core.grid import Grid, blocks_to_image, image_to_blocks
from ..core.model import InfDiT
from ..core.noise import block_noise
from ..core.resample import upsample_region
from ..core.sampler import euler_step, heun_correct, lr_noise_init, to_d
from ..stream.bands import Band, band_bound, band_plan, split_bands
from ..stream.engine import denoise_batch
from ..stream.frontier import Frontier
from ..stream.handoff import put_received, take_sent
from ..stream.planner import Sweep, Task, TaskKind, batch_box, raster_batches
from .blockio import BlockWrite, Box
from .kvlink import HandoffTag, KVLink
from .progress import Timers
from .shards import CachedArray, ShardReader
from .store import JobStore, group_array, state_array


@dataclass(frozen=True)
class TaskInputs:
    """What a model task reads, on the host: each (1, 3, h, w) float32 over the task's box.

    up: the upsampled LR; windows: the LR windows of the batch's blocks (None for init); x: the denoiser's
    input (x_i for predict, the Euler prediction for correct; x_T for init); state, deriv: x_i and d_i
    (correct only). x_0 = x_T is computed here, not read, in jobs without an init sweep.
    """

    up: torch.Tensor
    windows: LRWindows | None = None
    x: torch.Tensor | None = None
    state: torch.Tensor | None = None
    deriv: torch.Tensor | None = None


class SweepExecutor:
    """Runs the model tasks of one job; holds the model, the schedule and the current sweep's frontier."""

    def __init__(self, store: JobStore, model: InfDiT, *, vector: torch.Tensor | None, device: torch.device,
                 timers: Timers, spill: Path | None = None, band: Band | None = None,
                 link: KVLink | None = None):
        m = store.manifest
        self.store = store
        self.job = m.job
        self.model = model
        self.vector = vector  # (1, V) or None
        self.device = device
        self.timers = timers
        self.spill = spill or store.dir.frontier  # this process's K/V spill dir (one per rank)
        self.kernel = get_kernel(self.job.backend, device, model.dtype)  # xformers: checked here, once
        self.sigmas = m.sigmas
        self.init_sweep = m.init_sweep
        self.bs = m.geometry.block_size
        self.grid = m.geometry.grid
        self.shape = m.batch_shape
        self.batches = raster_batches(self.grid, self.shape)
        band = band or split_bands(self.batches.cols, 1)[0]  # default: the whole row
        self.plan = band_plan(self.batches, band)  # this rank's column band (the whole row without bands)
        self.bound = band_bound(self.batches, band)  # blocks of K/V its frontiers hold at most
        self.link = link  # hand-offs to and from the neighbouring bands (jobs/kvlink.py)
        self.snapshot_row = False  # bands: snapshot after this batch row (the first band's call, handed on)
        self.fuse = m.fuse_steps
        self.ring = m.ring  # state arrays of the steps sweeps (several ranks: sweeps in flight + 1)
        self._sweep: Sweep | None = None  # the task sweep being run
        self._frontiers: dict[Sweep, tuple[Frontier, torch.Tensor]] = {}  # its denoiser sweeps: frontier, (1, C) emb
        self._peak_blocks = 0.0  # the most K/V any closed frontier of this run held
        self._batch_plan = None  # the current batch's plan: every sweep in flight of a steps task runs it

    # ---- reads (any thread: they touch the store only) -------------------------------------------
    def inputs(self, task: Task, reader: ShardReader, timers: Timers) -> TaskInputs:
        """Read what `task` needs through `reader`: its arrays, and the batch's LR once (upsampled LR
        and LR windows)."""
        box = batch_box(task.batch, self.bs)
        y0, y1, x0, x1 = box

        def read(name: str) -> torch.Tensor:
            return torch.from_numpy(reader.region(name, y0, y1, x0, x1))  # (1, 3, h, w)

        with timers("lr"):
            region = LRRegion.around(CachedArray(reader, "lr"), box, self.model.cfg)  # one read of the LR halo
            up = upsample_region(region, box)  # (1, 3, h, w)
            windows = None if task.kind is TaskKind.INIT else lr_windows(region, task.batch.blocks(), self.model.cfg)
        def state(step: int) -> torch.Tensor:  # x_step: (1, 3, h, w)
            if step == 0 and (task.kind is TaskKind.INIT or not self.init_sweep):
                return self._initial_state(task, up)
            return read(state_array(step))

        with timers("read"):
            if task.kind is TaskKind.INIT:
                return TaskInputs(up, x=state(0))
            if task.kind is TaskKind.PREDICT:
                return TaskInputs(up, windows, x=state(task.step))
            if task.kind is TaskKind.STEPS:  # the group's input: x_T, or the last group's output
                group = task.step // self.fuse
                return TaskInputs(up, windows, x=self._initial_state(task, up) if group == 0 else read(group_array(group, ring=self.ring)))
            if task.kind is TaskKind.CORRECT:
                return TaskInputs(up, windows, x=read("pred"), state=state(task.step), deriv=read("deriv"))
        raise ValueError(f"{task.kind} is not a model task")

    # ---- the two ways to run a task -------------------------------------------------------------
    def compute(self, task: Task, inputs: TaskInputs) -> list[BlockWrite]:
        """Run an init, predict or correct task on its inputs; returns the writes that complete it."""
        box = batch_box(task.batch, self.bs)
        if task.kind is TaskKind.INIT:
            return self._init(task, box, inputs)
        if task.kind is TaskKind.PREDICT:
            return self._predict(task, box, inputs)
        if task.kind is TaskKind.CORRECT:
            return self._correct(task, box, inputs)
        if task.kind is TaskKind.STEPS:
            return [BlockWrite(group_array(task.step // self.fuse + 1, ring=self.ring), box, self._steps(task, box, inputs))]
        raise ValueError(f"{task.kind} is not a model task")

    def replay(self, task: Task, inputs: TaskInputs) -> None:
        """Recompute the denoiser on a batch that the current sweep already committed, so that its K/V
        enter the frontier again (resume inside a sweep); writes nothing. A steps task recomputes all
        of its steps: each one's input comes from the one before it, and only x_T or the group's input
        array is read."""
        if not task.is_model:
            raise ValueError(f"only denoiser tasks are replayed, not {task.kind}")
        if task.kind is TaskKind.STEPS:
            self._steps(task, batch_box(task.batch, self.bs), inputs)
            return
        self._denoise(task, task.sweep, inputs.x, inputs, self._sigma(task.sweep))

    # ---- snapshots of the current sweep's frontiers (jobs/snapshots.py) ---------------------------
    def snapshot(self) -> dict[str, torch.Tensor]:
        """Every frontier of the current task sweep, in host memory: "KIND.STEP.R_C_LAYER" -> (2, B, T, H, D)."""
        return {f"{sub.kind}.{sub.step}.{name}": kv for sub, (frontier, _) in self._frontiers.items()
                for name, kv in frontier.export().items()}

    def restore(self, task: Task, tensors: dict[str, torch.Tensor]) -> None:
        """Make `task`'s sweep current with the frontiers of a `snapshot` (taken in the same sweep)."""
        subs: dict[Sweep, dict[str, torch.Tensor]] = {}
        for key, kv in tensors.items():
            kind, step, name = key.split(".", 2)
            subs.setdefault(Sweep(TaskKind(kind), int(step)), {})[name] = kv
        for sub, entries in subs.items():
            self._frontier(task, sub, self._sigma(sub))[0].restore(entries)

    def _sigma(self, sub: Sweep) -> float:
        """The denoiser's sigma in a predict or correct sweep: sigma_i, or sigma_{i+1} for the Euler
        prediction a correct sweep denoises."""
        return self.sigmas[sub.step] if sub.kind is TaskKind.PREDICT else self.sigmas[sub.step + 1]

    # ---- the sweeps in flight and their frontiers -----------------------------------------------
    def _frontier(self, task: Task, sub: Sweep, sigma: float) -> tuple[Frontier, torch.Tensor]:
        """The frontier and embedding of denoiser sweep `sub` (the task's own sweep, or one predict or
        correct of a steps task); a new task sweep starts with new, empty frontiers."""
        if self._sweep != task.sweep:
            left = [str(key) for key, (frontier, _) in self._frontiers.items() if len(frontier)]
            if left:
                raise RuntimeError(f"sweep {self._sweep} ended with K/V left in the frontier of {', '.join(left)}")
            self._peak_blocks = self.frontier_peak_blocks
            for frontier, _ in self._frontiers.values():
                frontier.close()
            self._frontiers = {}
            self._sweep = task.sweep
            if self.job.placement == "disk" and self.spill.is_dir():
                for stale in self.spill.rglob("kv_*.bin"):  # K/V are never persisted across sweeps or runs
                    stale.unlink()
        if sub not in self._frontiers:
            spill = self.spill / f"{sub.kind}-{sub.step}"  # one spill dir per sweep in flight
            frontier = Frontier(self.bound, self.model.cfg.layers, self.job.placement,
                                self.device, spill)
            with torch.no_grad():
                emb = embedding(self.model, torch.tensor([sigma], device=self.device), self.vector)  # (1, C)
            self._frontiers[sub] = (frontier, emb)
        return self._frontiers[sub]

    @property
    def frontier_peak_blocks(self) -> float:
        """The most blocks of K/V one frontier of this run held (a band's share of a row, with bands)."""
        return max([self._peak_blocks, *(frontier.peak_blocks for frontier, _ in self._frontiers.values())])

    def _denoise(self, task: Task, sub: Sweep, x: torch.Tensor, inputs: TaskInputs, sigma: float) -> torch.Tensor:
        """D(x; sigma) of the batch's blocks in sweep `sub`, x (1, 3, h, w): (1, 3, h, w) float32 on the device."""
        frontier, emb = self._frontier(task, sub, sigma)
        batch = task.batch
        if self._batch_plan is None or self._batch_plan.batch != batch:  # planned once per batch, not per sweep
            self._batch_plan = self.plan.batch_plan(batch)
        plan = self._batch_plan
        tag = HandoffTag(int(sub.kind is TaskKind.CORRECT), sub.step, batch.index // self.batches.cols)
        if plan.receive:  # column bands: the K/V of the band to the left, for this batch row
            with self.timers("handoff"):
                kv, self.snapshot_row = self.link.receive(tag, self.device)
                put_received(frontier, plan, kv)
        with self.timers("model"), torch.no_grad():
            x = x.to(self.device)  # (1, 3, h, w)
            up = inputs.up.to(self.device)  # (1, 3, h, w)
            d = denoise_batch(self.model, image_to_blocks(x, self.bs), image_to_blocks(up, self.bs),
                              sigma=torch.tensor([sigma], device=self.device), emb=emb,
                              windows=inputs.windows.to(self.device), plan=plan,
                              frontier=frontier, kernel=self.kernel)  # (1, N, 3, bs, bs)
            if self.device.type == "cuda":  # the compute stream only: prefetch copies keep running
                torch.cuda.current_stream(self.device).synchronize()
        if plan.send:  # ... and this band's last column, for the band to the right
            with self.timers("handoff"):
                self.link.send(take_sent(frontier, plan), tag, snapshot=self.snapshot_row)
        self.timers.model_blocks += batch.rows * batch.cols
        return blocks_to_image(d, Grid(batch.rows, batch.cols))  # (1, 3, h, w)

    def _initial_state(self, task: Task, up: torch.Tensor) -> torch.Tensor:
        """x_T over the task's batch: up(LR) + sigma_max * eps, eps drawn per block from (seed, block);
        x_T = up(LR) when the job's noise_init is off. (1, 3, h, w)"""
        if not self.job.noise_init:
            return up
        batch = task.batch
        eps = torch.stack([block_noise(self.job.seed, blk, (1, 3, self.bs, self.bs))
                           for blk in batch.blocks()], dim=1)  # (1, N, 3, bs, bs)
        return lr_noise_init(up, blocks_to_image(eps, Grid(batch.rows, batch.cols)), self.sigmas[0])  # (1, 3, h, w)

    # ---- the task kinds -------------------------------------------------------------------------
    def _init(self, task: Task, box: Box, inputs: TaskInputs) -> list[BlockWrite]:
        """The init sweep of job dirs made before x_T was computed in place: write x_T."""
        return [BlockWrite(state_array(0), box, inputs.x)]

    def _predict(self, task: Task, box: Box, inputs: TaskInputs) -> list[BlockWrite]:
        """Euler step from x_i; with Heun (EDM algorithm 2) a correct sweep follows unless sigma_{i+1} = 0."""
        i = task.step
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x = inputs.x.to(self.device)  # (1, 3, h, w)
        d = to_d(x, self._denoise(task, task.sweep, x, inputs, sigma), sigma)  # (1, 3, h, w)
        x_next = euler_step(x, d, sigma, sigma_next)  # (1, 3, h, w)
        if self.job.sampler == "heun" and sigma_next > 0:
            return [BlockWrite("pred", box, x_next), BlockWrite("deriv", box, d)]
        return [BlockWrite(state_array(i + 1), box, x_next)]

    def _steps(self, task: Task, box: Box, inputs: TaskInputs) -> torch.Tensor:
        """Sampler steps task.step .. + task.steps - 1 on the batch, as the per-sweep tasks compute them
        (each predict and correct in its own sweep), from the group's input x: (1, 3, h, w)."""
        x = inputs.x.to(self.device)  # (1, 3, h, w)
        for i in range(task.step, task.step + task.steps):
            sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
            d = to_d(x, self._denoise(task, Sweep(TaskKind.PREDICT, i), x, inputs, sigma), sigma)  # (1, 3, h, w)
            x_next = euler_step(x, d, sigma, sigma_next)  # (1, 3, h, w)
            if self.job.sampler == "heun" and sigma_next > 0:
                d_next = to_d(x_next, self._denoise(task, Sweep(TaskKind.CORRECT, i), x_next, inputs, sigma_next),
                              sigma_next)  # (1, 3, h, w)
                x_next = heun_correct(x, d, d_next, sigma, sigma_next)  # (1, 3, h, w)
            x = x_next
        return x

    def _correct(self, task: Task, box: Box, inputs: TaskInputs) -> list[BlockWrite]:
        """Heun's correction of the Euler prediction: x_{i+1} = x_i + (s' - s) (d + d') / 2."""
        i = task.step
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        pred = inputs.x.to(self.device)  # (1, 3, h, w)
        d_next = to_d(pred, self._denoise(task, task.sweep, pred, inputs, sigma_next), sigma_next)  # (1, 3, h, w)
        x, d = inputs.state.to(self.device), inputs.deriv.to(self.device)  # (1, 3, h, w) each
        return [BlockWrite(state_array(i + 1), box, heun_correct(x, d, d_next, sigma, sigma_next))]
