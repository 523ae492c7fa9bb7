"""The thumbnail a semantic encoder sees: torchvision's Resize + CenterCrop of the LR, streamed over tiles.

The official vector (FACTS.md 1.5) starts from the LR image x in [-1, 1] with
    thumb = CenterCrop(224)(Resize(224, BICUBIC, antialias)((x + 1) / 2))      (torchvision, no clamp)
`thumbnail` computes that geometry (any side: 224 for CLIP, 64 for the learned encoder) reading the LR
only in tiles, so a huge LR is never read at once.

torch's float32 antialiased resize places its taps with float32 arithmetic, which is up to ~1e-4 off
the exact kernel (`core.resample.axis_weights`) once a side reaches ~1000 px; `torch_axis_weights`
replays that float32 arithmetic so the thumbnail equals torchvision's (the official pipeline's) to ~1e-6.

- `resized_size`, `crop_offsets`: torchvision's Resize(size) and CenterCrop(size) geometry.
- `torch_axis_weights`: one axis' resize weights as torch's float32 CPU kernel computes them.
- `thumbnail`: (1, 3, size, size) float32 in [0, 1] (not clamped), streamed.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.resample import axis_weights
from ..errors import BadInput

THUMB_SIZE = 224  # CLIP input side (ViT-L-14)


def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(size) output (h, w): shorter side -> size, longer side int(size * long / short)."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (new_long, size) if w <= h else (size, new_long)


def crop_offsets(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision's CenterCrop(size) (top, left) on an h x w image with h, w >= size."""
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def _cubic_f32(x: np.ndarray) -> np.ndarray:
    """torch's `aa_filter` for bicubic (Keys, a = -0.5), evaluated in float32 as in ATen."""
    a, x = np.float32(-0.5), np.abs(x).astype(np.float32)
    near = ((a + np.float32(2)) * x - (a + np.float32(3))) * x * x + np.float32(1)  # |x| < 1
    far = ((a * x - np.float32(5) * a) * x + np.float32(8) * a) * x - np.float32(4) * a  # 1 <= |x| < 2
    return np.where(x < 1, near, np.where(x < 2, far, np.float32(0))).astype(np.float32)


def torch_axis_weights(in_size: int, out_size: int, out_start: int, out_stop: int) -> tuple[int, int, torch.Tensor]:
    """`core.resample.axis_weights` as torch's float32 CPU kernel computes it (ATen `_compute_weights_aa`).

    Same contract: (in_start, in_stop, W float64 (out_stop - out_start, in_stop - in_start)), but the
    scale, tap centres, filter and normalisation are rounded to float32 where ATen rounds them.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    if not 0 <= out_start < out_stop <= out_size:
        raise ValueError(f"output range [{out_start}, {out_stop}) is empty or outside [0, {out_size})")
    f32, f64 = np.float32, np.float64
    scale = f32(in_size) / f32(out_size)  # area_pixel_compute_scale<float>
    support = f32(2.0 * f64(scale)) if scale >= 1.0 else f32(2.0)  # interp_size 4 * 0.5, widened when downscaling
    invscale = f32(1.0 / f64(scale)) if scale >= 1.0 else f32(1.0)
    i = np.arange(out_start, out_stop, dtype=f64)  # (n,)
    center = (f64(scale) * (i + 0.5)).astype(f32)  # (n,) float32: the source of the deviation
    xmin = np.maximum(np.trunc((center - support).astype(f64) + 0.5), 0).astype(np.int64)  # (n,)
    xmax = np.minimum(np.trunc((center + support).astype(f64) + 0.5), in_size).astype(np.int64)  # (n,)
    taps = int((xmax - xmin).max())
    idx = xmin[:, None] + np.arange(taps)[None, :]  # (n, taps) input indices
    arg = ((idx.astype(f32) - center[:, None]).astype(f64) + 0.5) * f64(invscale)  # (n, taps)
    w = np.where(idx < xmax[:, None], _cubic_f32(arg.astype(f32)), f32(0)).astype(f32)  # (n, taps)
    total = np.zeros(len(i), dtype=f32)  # (n,) summed in tap order, in float32
    for k in range(taps):
        total = (total + w[:, k]).astype(f32)
    w = (w / total[:, None]).astype(f32)  # (n, taps)
    nz = w != 0
    lo = int(np.where(nz, idx, in_size).min())
    hi = int(np.where(nz, idx, -1).max()) + 1
    W = torch.zeros(len(i), hi - lo, dtype=torch.float64)  # (n, hi-lo)
    rows = np.broadcast_to(np.arange(len(i))[:, None], idx.shape)
    W[torch.from_numpy(rows[nz].copy()), torch.from_numpy(idx[nz] - lo)] = torch.from_numpy(w[nz].astype(f64))
    return lo, hi, W


def _lr_hw(lr) -> tuple[int, int]:
    """(h, w) of an LR of shape (1, 3, h, w) or (3, h, w); BadInput otherwise."""
    shape = tuple(int(s) for s in lr.shape)
    if not (len(shape) in (3, 4) and shape[-3] == 3 and (len(shape) == 3 or shape[0] == 1)):
        raise BadInput(f"the LR image must have shape (1, 3, h, w) or (3, h, w), got {shape}")
    if shape[-2] <= 0 or shape[-1] <= 0:
        raise BadInput(f"the LR image is empty: shape {shape}")
    return shape[-2], shape[-1]


def _read_tile(lr, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """lr[..., y0:y1, x0:x1] as a float64 CPU tensor (3, y1-y0, x1-x0)."""
    tile = lr[..., y0:y1, x0:x1]
    tile = tile.detach().cpu() if isinstance(tile, torch.Tensor) else torch.from_numpy(np.asarray(tile))
    return tile.to(torch.float64).reshape(3, y1 - y0, x1 - x0)


def thumbnail(lr, size: int = THUMB_SIZE, strip_rows: int = 256, strip_cols: int = 4096,
              exact: bool = False) -> torch.Tensor:
    """CLIP's input geometry of an LR in [-1, 1]: (1, 3, size, size) float32 in [0, 1] (not clamped).

    Equals `center_crop(resize((lr + 1) / 2, size, BICUBIC, antialias=True), size)` (torchvision on a
    float32 tensor, no clamp) to ~1e-6, but reads `lr` (a tensor, numpy or zarr array of shape
    (1, 3, h, w) or (3, h, w)) only in tiles `lr[..., y0:y1, x0:x1]` of at most strip_rows x strip_cols,
    and only the rows and columns that reach the crop. The resize is separable: out = sum over tiles of
    Wy[:, rows] @ tile @ Wx[:, cols]^T, in float64. `exact=True` uses the exact kernel
    (`core.resample.axis_weights`, = torch in float64) instead of torch's float32 tap placement.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if strip_rows <= 0 or strip_cols <= 0:
        raise ValueError(f"strip_rows and strip_cols must be positive, got {strip_rows}, {strip_cols}")
    h, w = _lr_hw(lr)
    rh, rw = resized_size(h, w, size)
    top, left = crop_offsets(rh, rw, size)
    weights = axis_weights if exact else torch_axis_weights
    iy0, iy1, wy = weights(h, rh, top, top + size)  # wy: (size, iy1-iy0), crop rows only
    ix0, ix1, wx = weights(w, rw, left, left + size)  # wx: (size, ix1-ix0), crop cols only
    out = torch.zeros(3, size, size, dtype=torch.float64)  # (3, size, size)
    for y0 in range(iy0, iy1, strip_rows):
        y1 = min(y0 + strip_rows, iy1)
        wy_s = wy[:, y0 - iy0:y1 - iy0]  # (size, y1-y0)
        for x0 in range(ix0, ix1, strip_cols):
            x1 = min(x0 + strip_cols, ix1)
            tile = (_read_tile(lr, y0, y1, x0, x1) + 1.0) / 2.0  # (3, y1-y0, x1-x0) in [0, 1]
            out += wy_s @ tile @ wx[:, x0 - ix0:x1 - ix0].T  # (3, size, size)
    return out.to(torch.float32)[None]  # (1, 3, size, size)
