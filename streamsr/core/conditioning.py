"""Conditioning inputs built per block: the nearby-LR window of the layer-0 cross-attention.

A block's window is its own LR footprint plus one footprint on every side (3x3 blocks), as LR pixels,
with a token mask saying which LR tokens lie inside the image: the official model zero-pads the LR
*token* map (after proj_lr), so outside tokens must be exactly zero, not proj_lr of zero pixels.
Only the window is read from `lr`, which may be any array sliceable as lr[..., y0:y1, x0:x1].

`LRRegion.around(lr, box, cfg)` reads, once, everything a batch of blocks needs from the LR image: the
windows of its blocks and the halo of its upsampled LR (core/resample.upsample_region); both then slice
the region with the whole image's coordinates.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..config import SR_SCALE, ModelConfig
from .resample import halo


class LRWindows(NamedTuple):
    """The layer-0 cross-attention input of N blocks: pixels (B, N, 3, 3L, 3L), inside (N, 3L/lp, 3L/lp)."""

    pixels: torch.Tensor
    inside: torch.Tensor

    def to(self, device: torch.device) -> "LRWindows":
        return LRWindows(self.pixels.to(device), self.inside.to(device))


def lr_window(lr, block: tuple[int, int], cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One block's window: pixels (B, 3, 3L, 3L) zero outside the image, inside (3L/lp, 3L/lp) bool."""
    size, lp = cfg.lr_block_size, cfg.lr_patch
    h, w = lr.shape[-2:]
    r, c = block
    y0, x0 = (r - 1) * size, (c - 1) * size  # window origin in LR pixels (may be negative)
    ya, yb = max(y0, 0), min(y0 + 3 * size, h)
    xa, xb = max(x0, 0), min(x0 + 3 * size, w)
    region = lr[..., ya:yb, xa:xb]
    region = torch.as_tensor(np.asarray(region)) if not isinstance(region, torch.Tensor) else region
    pixels = region.new_zeros(*region.shape[:-2], 3 * size, 3 * size)  # (B, 3, 3L, 3L)
    pixels[..., ya - y0:yb - y0, xa - x0:xb - x0] = region
    inside = torch.zeros(3 * size // lp, 3 * size // lp, dtype=torch.bool, device=region.device)
    inside[(ya - y0) // lp:(yb - y0) // lp, (xa - x0) // lp:(xb - x0) // lp] = True
    return pixels, inside


class LRRegion:
    """A region of an LR array read once (a tensor), sliced with the whole array's coordinates
    (`region[..., ys, xs]` with slices inside the region) and with the whole array's `shape`."""

    def __init__(self, lr, y0: int, y1: int, x0: int, x1: int):
        self.shape = tuple(lr.shape)
        self.y0, self.y1, self.x0, self.x1 = y0, y1, x0, x1
        data = lr[..., y0:y1, x0:x1]
        self.data = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))

    @classmethod
    def around(cls, lr, box: tuple[int, int, int, int], cfg: ModelConfig) -> "LRRegion":
        """What the blocks of the HR box (y0, y1, x0, x1) need from `lr`: the union of their windows
        (one LR block around the box's footprint) and of their upsampled LR's halo, inside the image."""
        h, w = int(lr.shape[-2]), int(lr.shape[-1])
        size, scale = cfg.lr_block_size, SR_SCALE
        y0, y1, x0, x1 = box
        uy0, uy1 = halo(h, h * scale, y0, y1)
        ux0, ux1 = halo(w, w * scale, x0, x1)
        return cls(lr, max(min(y0 // scale - size, uy0), 0), min(max(y1 // scale + size, uy1), h),
                   max(min(x0 // scale - size, ux0), 0), min(max(x1 // scale + size, ux1), w))

    def __getitem__(self, key):
        _, ys, xs = key  # (..., rows, cols) as lr_window and upsample_region slice
        if not (self.y0 <= ys.start <= ys.stop <= self.y1 and self.x0 <= xs.start <= xs.stop <= self.x1):
            raise IndexError(f"rows {ys.start}:{ys.stop}, cols {xs.start}:{xs.stop} are outside the region "
                             f"{self.y0}:{self.y1}, {self.x0}:{self.x1} that was read")
        return self.data[..., ys.start - self.y0:ys.stop - self.y0, xs.start - self.x0:xs.stop - self.x0]


def lr_windows(lr, blocks: list[tuple[int, int]], cfg: ModelConfig) -> LRWindows:
    """Windows of N blocks: pixels (B, N, 3, 3L, 3L), inside (N, 3L/lp, 3L/lp); equal to `lr_window` of
    each block.

    The union of the windows is read from `lr` once (one store read per batch, not one per block) into a
    zero canvas one LR block larger on every side; every window is then a strided view of it, and one
    indexed copy takes the blocks' windows (a fixed number of tensor ops whatever N is). `lr` may be an
    LRRegion that holds them.
    """
    size, lp = cfg.lr_block_size, cfg.lr_patch
    h, w = lr.shape[-2:]
    rows = [r for r, _ in blocks]
    cols = [c for _, c in blocks]
    r0, c0 = min(rows), min(cols)
    y0, y1, x0, x1 = (r0 - 1) * size, (max(rows) + 2) * size, (c0 - 1) * size, (max(cols) + 2) * size
    ya, yb, xa, xb = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    region = LRRegion(lr, ya, yb, xa, xb).data  # (B, 3, yb - ya, xb - xa)
    canvas = region.new_zeros(*region.shape[:-2], y1 - y0, x1 - x0)  # (B, 3, Hc, Wc) zero outside the image
    canvas[..., ya - y0:yb - y0, xa - x0:xb - x0] = region
    inside = torch.zeros((y1 - y0) // lp, (x1 - x0) // lp, dtype=torch.bool, device=region.device)  # (Hc/lp, Wc/lp)
    inside[(ya - y0) // lp:(yb - y0) // lp, (xa - x0) // lp:(xb - x0) // lp] = True
    views = canvas.unfold(-2, 3 * size, size).unfold(-2, 3 * size, size)  # (B, 3, nr, nc, 3L, 3L) views
    masks = inside.unfold(0, 3 * size // lp, size // lp).unfold(1, 3 * size // lp, size // lp)  # (nr, nc, 3L/lp, 3L/lp)
    r = torch.tensor(rows, device=region.device) - r0  # (N,)
    c = torch.tensor(cols, device=region.device) - c0  # (N,)
    pixels = views.permute(0, 2, 3, 1, 4, 5)[:, r, c]  # (B, N, 3, 3L, 3L)
    return LRWindows(pixels, masks[r, c])  # (B, N, 3, 3L, 3L), (N, 3L/lp, 3L/lp)
