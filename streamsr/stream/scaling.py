"""The scaling model of issue 12: predicted wall time and per-rank memory of a job on N devices (no torch).

The block DAG allows exact multi-device execution with little communication (DESIGN.md 1, 3):

- **Sweep pipelining.** Within a sweep a block needs the K/V of its left, top and top-left neighbours of
  the same sweep; across sweeps it needs only its own state after the previous sweep. So sweep s can run
  batch b once sweep s-1 has finished batch b: rank k runs sweeps k, k+N, k+2N, ..., each lagging the one
  before it by one batch, each with its own frontier; ranks hand each other block states only (fp32,
  3 x bs^2 x 4 bytes per block), never K/V.
- **Column bands.** With more ranks than sweeps, a sweep is also split into column bands run as a
  wavefront: each rank holds its band's frontier only, and per block row hands the K/V of one block (its
  band's last column: `slot_bytes`) to the next band's rank.

Prediction, for S denoiser sweeps (evaluations per block) over R x C blocks, t the time of one block
evaluation on one device (memory.block_flops / CUDA_FLOPS: ~4.3 ms for the official model in bf16 on an
H100 at 40% of its dense peak), N ranks:

    a split          G <= min(N, S) sweeps in flight, b = N // G bands per sweep (the best G is chosen)
    one sweep         T_sweep = R C t / b  +  (b - 1) C/b t  (wavefront fill: a band starts a block row late)
                      + R (b - 1) kv_bytes / link            (K/V hand-offs per block row, not overlapped)
    the job           wall = ceil(S / G) T_sweep + (G - 1) batch_time   (pipeline fill: one batch per sweep)
                      + R C S state_bytes / (N link)          (state hand-offs, a lower bound on overlap)

`predict_scaling` computes it with the memory planner's per-rank device bytes (weights, activations, and
the frontier of a band: its width's share). The figures for the official model are in docs/scaling.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ModelConfig
from .memory import CUDA_FLOPS, block_flops, predict, slot_bytes

NVLINK_BYTES_PER_S = 200e9  # rank to rank within a node (H100 NVLink 4, ~450 GB/s per direction, derated)
IB_BYTES_PER_S = 40e9  # between nodes (400 Gb/s InfiniBand per GPU, derated)
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class ScalingPrediction:
    """A job's predicted execution on `workers` devices."""

    workers: int
    sweeps_in_flight: int  # sweep groups run at once (one per rank group)
    bands: int  # column bands per sweep (ranks per sweep)
    wall_seconds: float
    one_device_seconds: float
    rank_device_bytes: int  # peak device memory of one rank (its band's frontier on the device)
    rank_frontier_bytes: int  # K/V frontier of one rank

    @property
    def speedup(self) -> float:
        return self.one_device_seconds / self.wall_seconds

    @property
    def efficiency(self) -> float:
        return self.speedup / self.workers


def link_bytes_per_s(workers: int) -> float:
    """The slowest link a hand-off crosses: NVLink inside one node, InfiniBand across nodes."""
    return NVLINK_BYTES_PER_S if workers <= GPUS_PER_NODE else IB_BYTES_PER_S


def predict_scaling(cfg: ModelConfig, *, out_hw: tuple[int, int], sweeps: int, workers: int,
                    batch: tuple[int, int] = (4, 8), itemsize: int = 2, flops_per_s: float | None = None,
                    vram: int | None = None, split: tuple[int, int] | None = None) -> ScalingPrediction:
    """The scaling model (module docstring) for an output of out_hw pixels, `sweeps` model evaluations per
    block (Heun with n steps: 2n - 1), on `workers` devices with block batches of `batch`: the split (sweep
    groups x bands, at most `workers` ranks busy) with the least wall time among those whose rank fits `vram`
    (all splits if none fits, or without a budget); or the given `split` (sweeps in flight, bands)."""
    if workers < 1 or sweeps < 1:
        raise ValueError(f"workers and sweeps must be >= 1, got {workers} and {sweeps}")
    cols = -(-out_hw[1] // cfg.block_size)
    if split is not None:
        return _split(cfg, out_hw, sweeps, workers, *split, batch, itemsize, flops_per_s)
    splits = [_split(cfg, out_hw, sweeps, workers, groups, bands, batch, itemsize, flops_per_s)
              for groups in range(1, min(workers, sweeps) + 1) for bands in range(1, min(workers // groups, cols) + 1)]
    fitting = [p for p in splits if vram is None or p.rank_device_bytes <= vram]
    return min(fitting or splits, key=lambda p: (p.wall_seconds, p.rank_device_bytes))


def _split(cfg: ModelConfig, out_hw: tuple[int, int], sweeps: int, workers: int, groups: int, bands: int,
           batch: tuple[int, int], itemsize: int, flops_per_s: float | None) -> ScalingPrediction:
    """The prediction of one split: `groups` sweeps in flight of `bands` column bands each (groups x bands
    ranks busy; the others idle)."""
    rows, cols = -(-out_hw[0] // cfg.block_size), -(-out_hw[1] // cfg.block_size)
    t = block_flops(cfg) / (flops_per_s or CUDA_FLOPS.get(itemsize, CUDA_FLOPS[4]))  # seconds per block evaluation
    ranks = groups * bands
    link = link_bytes_per_s(ranks)
    kv = slot_bytes(cfg, itemsize)  # one block's K/V over every layer
    state = 3 * cfg.block_size ** 2 * 4  # one block's fp32 state
    band_cols = -(-cols // bands)
    sweep_time = rows * band_cols * t + (bands - 1) * band_cols * t + rows * (bands - 1) * kv / link
    batch_time = min(batch[0], rows) * min(batch[1], band_cols) * t
    wall = math.ceil(sweeps / groups) * sweep_time + (groups - 1) * batch_time
    wall += rows * cols * sweeps * state / (ranks * link) if ranks > 1 else 0.0
    rank = predict(cfg, itemsize, (out_hw[0], band_cols * cfg.block_size), batch, "device", "cuda")
    return ScalingPrediction(workers, groups, bands, wall, sweeps * rows * cols * t, rank.device_bytes,
                             rank.parts.get("frontier", 0))
