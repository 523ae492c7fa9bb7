"""Streamed denoising: block batches in raster order, neighbour K/V from the frontier.

`denoise_batch` computes one batch of blocks, reading the K/V of blocks outside the batch from the
frontier and leaving there the K/V that later batches will read; `denoise_stream` sweeps an in-memory
image with it. The result equals the full-image forward (model.InfDiT.forward) to fp32 round-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.attention import get_kernel
from ..core.conditioning import lr_windows
from .frontier import Frontier
from ..core.model import InfDiT, blocks_to_image, image_to_blocks
from .planner import Batch, BatchShape, FrontierPlan, Grid, frontier_bound, frontier_plan, neighbors
from ..core.resample import upsample_region


@dataclass
class SweepStats:
    """What one streamed sweep held and did."""

    batches: int = 0
    frontier_peak_bytes: int = 0
    frontier_peak_blocks: float = 0.0
    frontier_bound_blocks: int = 0
    batch_sizes: list[int] = field(default_factory=list)


def batch_box(batch: Batch, block_size: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a batch in HR pixels."""
    return (batch.row0 * block_size, (batch.row0 + batch.rows) * block_size,
            batch.col0 * block_size, (batch.col0 + batch.cols) * block_size)


def slot_indices(batch: Batch, reads: tuple) -> torch.Tensor:
    """For each block of the batch, the pool index of its 4 key slots: (N, 4).

    The pool is [the batch's N blocks (row-major), then `reads` from the frontier].
    """
    local = {blk: i for i, blk in enumerate(batch.blocks())}
    local.update({blk: len(local) + j for j, blk in enumerate(reads)})
    return torch.tensor([[local[nb] for nb in neighbors(r, c)] for r, c in batch.blocks()])


def denoise_batch(model: InfDiT, batch: Batch, plan: FrontierPlan, frontier: Frontier, x: torch.Tensor,
                  up: torch.Tensor, lr, sigma: torch.Tensor, emb: torch.Tensor, kernel) -> torch.Tensor:
    """D for the blocks of one batch: (B, N, 3, bs, bs).

    x, up: (B, N, 3, bs, bs) noisy HR and upsampled LR of the batch's blocks (row-major); lr: the whole
    LR image (sliceable; only the batch's windows are read); sigma (B,); emb (B, C).
    """
    blocks = batch.blocks()
    reads, keep, drop = plan.reads(batch), plan.keep(batch), plan.drop(batch)
    index = slot_indices(batch, reads).to(x.device)  # (N, 4)
    local = {blk: i for i, blk in enumerate(blocks)}

    def gather_from_frontier(layer: int, k: torch.Tensor, v: torch.Tensor):
        outside = [frontier.get(blk, layer) for blk in reads]
        k_pool = torch.cat([k, *(kk[:, None] for kk, _ in outside)], dim=1)  # (B, N + R, T, H, D)
        v_pool = torch.cat([v, *(vv[:, None] for _, vv in outside)], dim=1)
        for blk in drop:  # their last reader was this batch
            frontier.drop(blk, layer)
        for blk in keep:  # later batches read these
            frontier.put(blk, layer, k[:, local[blk]].clone(), v[:, local[blk]].clone())
        return k_pool[:, index], v_pool[:, index]  # (B, N, 4, T, H, D)

    frontier.prefetch(reads)  # host/disk placements: every layer of the reads onto the device
    pixels, inside = lr_windows(lr, blocks, model.cfg)
    d = model.forward_blocks(blocks, x, up, pixels.to(x.device), inside.to(x.device), sigma, emb,
                             gather_from_frontier, kernel)
    frontier.release_staged()
    return d


def denoise_stream(model: InfDiT, x: torch.Tensor, sigma: torch.Tensor, lr: torch.Tensor,
                   vector: torch.Tensor | None, concat_lr: torch.Tensor | None = None,
                   shape: BatchShape = BatchShape(1, 1), backend: str = "sdpa",
                   stats: SweepStats | None = None, placement: str = "device",
                   spill_dir=None) -> torch.Tensor:
    """One streamed sweep over an in-memory image: D (B, 3, H, W) float32.

    concat_lr: the upsampled LR (B, 3, H, W); None computes it per batch from `lr` with a halo.
    """
    cfg = model.cfg
    bs = cfg.block_size
    grid = Grid.for_image(x.shape[-2], x.shape[-1], bs)
    plan = frontier_plan(grid, shape)
    frontier = Frontier(frontier_bound(grid, shape), cfg.layers, placement, x.device, spill_dir)
    kernel = get_kernel(backend)
    emb = model.embedding(sigma, vector)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for batch in plan.batches:
        y0, y1, x0, x1 = box = batch_box(batch, bs)
        up = concat_lr[..., y0:y1, x0:x1] if concat_lr is not None else upsample_region(lr, box).to(x.device)
        d = denoise_batch(model, batch, plan, frontier, image_to_blocks(x[..., y0:y1, x0:x1], bs),
                          image_to_blocks(up, bs), lr, sigma, emb, kernel)  # (B, N, 3, bs, bs)
        out[..., y0:y1, x0:x1] = blocks_to_image(d, Grid(batch.rows, batch.cols))
        if stats is not None:
            stats.batch_sizes.append(len(batch.blocks()))
    if len(frontier):
        raise RuntimeError(f"frontier not empty after the sweep: {sorted(frontier.blocks())}")
    if stats is not None:
        stats.batches = len(plan.batches)
        stats.frontier_peak_bytes = frontier.peak_bytes
        stats.frontier_peak_blocks = frontier.peak_blocks
        stats.frontier_bound_blocks = frontier_bound(grid, shape)
    return out
