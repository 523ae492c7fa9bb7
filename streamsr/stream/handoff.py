"""The K/V hand-off between column bands (bands.py): what crosses from one band's frontier to the next's.

Per batch row, the band to the left sends the K/V of its last block column (`BatchPlan.send`), every layer,
as one tensor; the band to the right puts them in its frontier before its first batch of that row
(`BatchPlan.receive`). `denoise_bands` runs a whole sweep of bands as a wavefront in one process, with the
hand-offs passed directly: the oracle of the multi-rank path (tests/test_bands.py compares it with the
whole-image computation), as engine.denoise_stream is of the one-band one.
"""

from __future__ import annotations

import torch

from ..core.attention import get_kernel
from ..core.denoiser import embedding
from ..core.grid import Block, Grid
from ..core.model import InfDiT
from .bands import band_bound, band_plan, split_bands
from .engine import SweepStats, denoise_into
from .frontier import Frontier
from .planner import BatchPlan, BatchShape, raster_batches


def take_sent(frontier: Frontier, plan: BatchPlan) -> torch.Tensor:
    """After the batch: the K/V of `plan.send`, (n, L, 2, B, T, H, D), and the sent blocks that this band
    no longer reads dropped from its frontier."""
    kv = torch.stack([torch.stack([torch.stack(frontier.get(blk, layer)) for layer in range(frontier.layers)])
                      for blk in plan.send])  # (n, L, 2, B, T, H, D)
    for blk in plan.release:
        for layer in range(frontier.layers):
            frontier.drop(blk, layer)
    return kv


def put_received(frontier: Frontier, plan: BatchPlan, kv: torch.Tensor) -> None:
    """Before the batch: the K/V that arrived from the band to the left, kv (n, L, 2, B, T, H, D) for the
    blocks of `plan.receive`, into this band's frontier."""
    expect = (len(plan.receive), frontier.layers)
    if tuple(kv.shape[:2]) != expect:
        raise ValueError(f"a hand-off of {tuple(kv.shape[:2])} (blocks, layers) where {expect} were planned")
    for blk, per_layer in zip(plan.receive, kv):
        for layer, pair in enumerate(per_layer):  # pair (2, B, T, H, D)
            frontier.put(blk, layer, pair[0], pair[1])


def denoise_bands(model: InfDiT, x: torch.Tensor, sigma: torch.Tensor, *, lr: torch.Tensor,
                  vector: torch.Tensor | None, shape: BatchShape, bands: int, backend: str = "sdpa",
                  stats: list[SweepStats] | None = None) -> torch.Tensor:
    """One streamed sweep split into `bands` column bands run as a wavefront: D (B, 3, H, W) float32, equal
    to engine.denoise_stream's. x (B, 3, H, W); sigma (B,); lr (B, 3, H/4, W/4); vector (B, V) or None.
    `stats` receives one SweepStats per band (its frontier's peak)."""
    bs = model.cfg.block_size
    batches = raster_batches(Grid.for_image(x.shape[-2], x.shape[-1], bs), shape)
    split = split_bands(batches.cols, bands)
    plans = [band_plan(batches, band) for band in split]
    frontiers = [Frontier(band_bound(batches, band), model.cfg.layers, "device", x.device) for band in split]
    kernel = get_kernel(backend)
    emb = embedding(model, sigma, vector)  # (B, C)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)  # (B, 3, H, W)
    sent: list[list[torch.Tensor]] = [[] for _ in split]  # band k -> band k + 1, oldest first
    for row in range(batches.rows):  # the wavefront: each band's batch row after the band to its left's
        for band, plan, frontier in zip(split, plans, frontiers):
            for col in range(band.col0, band.col1):
                batch_plan = plan.batch_plan(batches[row * batches.cols + col])
                if batch_plan.receive:
                    put_received(frontier, batch_plan, sent[band.index - 1].pop(0))
                denoise_into(out, model, x, sigma=sigma, emb=emb, lr=lr, concat_lr=None, plan=batch_plan,
                             frontier=frontier, kernel=kernel)
                if batch_plan.send:
                    sent[band.index].append(take_sent(frontier, batch_plan))
    left: list[Block] = sorted(blk for frontier in frontiers for blk in frontier.blocks())
    if left or any(sent):
        raise RuntimeError(f"bands ended with K/V left: {left} and {sum(map(len, sent))} hand-off(s) unread")
    if stats is not None:
        stats.extend(SweepStats(batches=len(batches), frontier_peak_bytes=f.peak_bytes,
                                frontier_peak_blocks=f.peak_blocks, frontier_bound_blocks=band_bound(batches, band))
                     for band, f in zip(split, frontiers))
    return out
