"""Streamed denoising: block batches in raster order, neighbour K/V from the frontier (DESIGN.md 1, 3).

`denoise_batch` executes one batch's `BatchPlan` (planner.py): it stages the batch's reads, runs the
network layer by layer with a gather that only reads (each block's key slots from [the batch's own K/V,
then the reads]), and after each layer does the frontier bookkeeping itself: drop what this batch was
the last to read, put what later batches will read. At the end it stages the next batch's reads. Per
layer that is a fixed number of tensor ops whatever the batch size (the reads come out of the frontier
stacked, the kept blocks go in as one tensor), so the compute thread spends little time in Python.
`denoise_stream` sweeps an in-memory image with it. The result equals the full-image computation
(core/denoiser.denoise_full) to fp32 round-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.attention import get_kernel
from ..core.conditioning import LRRegion, LRWindows, lr_windows
from ..core.denoiser import Preconditioning, embedding
from ..core.grid import Block, Grid, blocks_to_image, image_to_blocks
from ..core.model import Gather, InfDiT, Kernel
from ..core.resample import upsample_region
from .frontier import Frontier
from .planner import BatchPlan, BatchShape, batch_box, frontier_bound, frontier_plan


@dataclass
class SweepStats:
    """What one streamed sweep held and did."""

    batches: int = 0
    frontier_peak_bytes: int = 0
    frontier_peak_blocks: float = 0.0
    frontier_bound_blocks: int = 0
    batch_sizes: list[int] = field(default_factory=list)


def pool_gather(frontier: Frontier, reads: tuple[Block, ...], slots: torch.Tensor) -> Gather:
    """The streamed gather: the pool is [the batch's own K/V, then `reads` from the frontier]; slots (N, 4)
    are the pool indices of each block's key slots. Reads the frontier, changes nothing."""

    def gather(layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not reads:
            return k[:, slots], v[:, slots]  # (B, N, 4, T, H, D) each
        k_reads, v_reads = frontier.gather(reads, layer)  # (B, R, T, H, D) each
        k_slots = torch.cat([k, k_reads], dim=1)[:, slots]  # (B, N, 4, T, H, D) from the pool (B, N + R, ...)
        del k_reads
        return k_slots, torch.cat([v, v_reads], dim=1)[:, slots]  # (B, N, 4, T, H, D) each

    return gather


def denoise_batch(model: InfDiT, x: torch.Tensor, up: torch.Tensor, *, sigma: torch.Tensor, emb: torch.Tensor,
                  windows: LRWindows, plan: BatchPlan, frontier: Frontier, kernel: Kernel) -> torch.Tensor:
    """D for the blocks of one batch: (B, N, 3, bs, bs) float32.

    x, up: (B, N, 3, bs, bs) noisy HR and upsampled LR of the batch's blocks (row-major); sigma (B,);
    emb (B, C) from denoiser.embedding at sigma; windows: the blocks' LR windows (conditioning.lr_windows)
    on x's device; plan: the batch's plan; frontier: the sweep's K/V frontier.
    """
    blocks = plan.batch.blocks()
    pre = Preconditioning.at(sigma, model)
    frontier.prefetch(plan.reads)  # host/disk placements: every layer of the reads onto the device
    ctx = model.context(emb, windows.pixels, windows.inside, blocks=blocks, kernel=kernel)
    slots = torch.tensor(plan.slots).to(x.device, non_blocking=True)  # (N, 4); no sync on CUDA
    if plan.keep:
        own = {blk: i for i, blk in enumerate(blocks)}  # block -> its index in x
        keep = torch.tensor([own[blk] for blk in plan.keep]).to(x.device, non_blocking=True)  # (K,)
    gather = pool_gather(frontier, plan.reads, slots)
    inp = pre.network_input(x, up).to(model.dtype)  # (B, N, 6, bs, bs), held to the end as in denoise_full
    h = model.embed_tokens(inp)  # (B, N, T, C)
    for layer in range(model.cfg.layers):
        h, k, v = model.layer(layer, h, ctx, gather=gather)  # h (B, N, T, C); k, v (B, N, T, H, D)
        for blk in plan.drop:  # this batch was their last reader
            frontier.drop(blk, layer)
        if plan.keep:  # later batches read these
            frontier.put_many(plan.keep, layer, k.index_select(1, keep), v.index_select(1, keep))  # (B, K, T, H, D)
        del k, v  # not held through the next layer
    d = pre.denoised(x, up, model.head(h, ctx))  # (B, N, 3, bs, bs) float32
    frontier.release_staged()
    frontier.prefetch(plan.next_reads)  # staged while the caller writes this batch (side stream on CUDA)
    return d


def denoise_into(out: torch.Tensor, model: InfDiT, x: torch.Tensor, *, sigma: torch.Tensor, emb: torch.Tensor,
                 lr: torch.Tensor, concat_lr: torch.Tensor | None, plan: BatchPlan, frontier: Frontier,
                 kernel: Kernel) -> None:
    """One batch of an in-memory sweep: its inputs cut from x (B, 3, H, W) and the LR (B, 3, H/4, W/4) (the
    upsampled LR from `concat_lr` (B, 3, H, W), or made from the batch's LR halo), denoise_batch, and D
    written into out (B, 3, H, W) at the batch's box."""
    bs = model.cfg.block_size
    y0, y1, x0, x1 = box = batch_box(plan.batch, bs)
    region = LRRegion.around(lr, box, model.cfg)  # the batch's LR, read once
    up = concat_lr[..., y0:y1, x0:x1] if concat_lr is not None else upsample_region(region, box).to(x.device)
    windows = lr_windows(region, plan.batch.blocks(), model.cfg).to(x.device)
    d = denoise_batch(model, image_to_blocks(x[..., y0:y1, x0:x1], bs), image_to_blocks(up, bs), sigma=sigma,
                      emb=emb, windows=windows, plan=plan, frontier=frontier, kernel=kernel)  # (B, N, 3, bs, bs)
    out[..., y0:y1, x0:x1] = blocks_to_image(d, Grid(plan.batch.rows, plan.batch.cols))


def denoise_stream(model: InfDiT, x: torch.Tensor, sigma: torch.Tensor, *, lr: torch.Tensor,
                   vector: torch.Tensor | None, concat_lr: torch.Tensor | None = None,
                   shape: BatchShape = BatchShape(1, 1), backend: str = "sdpa", stats: SweepStats | None = None,
                   placement: str = "device", spill_dir: Path | str | None = None) -> torch.Tensor:
    """One streamed sweep over an in-memory image: D (B, 3, H, W) float32.

    x (B, 3, H, W); sigma (B,); lr (B, 3, H/4, W/4); vector (B, V) or None; concat_lr: the upsampled LR
    (B, 3, H, W), or None to compute it per batch from `lr` with a halo.
    """
    bs = model.cfg.block_size
    grid = Grid.for_image(x.shape[-2], x.shape[-1], bs)
    sweep = frontier_plan(grid, shape)
    frontier = Frontier(frontier_bound(grid, shape), model.cfg.layers, placement, x.device, spill_dir)
    kernel = get_kernel(backend)
    emb = embedding(model, sigma, vector)  # (B, C)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)  # (B, 3, H, W)
    for plan in sweep.batch_plans():
        denoise_into(out, model, x, sigma=sigma, emb=emb, lr=lr, concat_lr=concat_lr, plan=plan, frontier=frontier,
                     kernel=kernel)
        if stats is not None:
            stats.batch_sizes.append(len(plan.batch.blocks()))
    if len(frontier):
        raise RuntimeError(f"frontier not empty after the sweep: {sorted(frontier.blocks())}")
    if stats is not None:
        stats.batches = len(sweep.batches)
        stats.frontier_peak_bytes = frontier.peak_bytes
        stats.frontier_peak_blocks = frontier.peak_blocks
        stats.frontier_bound_blocks = frontier_bound(grid, shape)
    return out
