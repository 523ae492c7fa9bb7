"""Region-wise bicubic upsampling of the LR image (the `concat_lr` conditioning input).

The model is conditioned on `clamp(resize(lr, (h*s, w*s)), -1, 1)` with torchvision's antialiased
bicubic kernel (Keys cubic, a = -0.5). The resize is separable, so any output box depends only on a
small input box (the box / s plus a halo of about 2 LR pixels). This file computes that box directly,
reading only the halo of `lr`, so the engine never needs the whole upsampled image in memory, and the
result equals `F.interpolate(lr, size=(h*s, w*s), mode="bicubic", align_corners=False,
antialias=True).clamp(-1, 1)` restricted to the box.

- `axis_weights`: the input range and weight matrix of one axis for an output range.
- `input_range`: the input range that an output range reads (nonzero weights).
- `halo`: the input crop that upsample_region reads for an output range.
- `upsample_region`: one output box (y0, y1, x0, x1) of the upsampled image.
- `upsample_full`: the whole upsampled image (upsample_region over everything).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

_A = -0.5  # Keys cubic parameter of the antialiased bicubic kernel (torch/PIL use -0.5 here)


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys cubic convolution kernel with a = -0.5, support [-2, 2]."""
    x = x.abs()
    near = ((_A + 2) * x - (_A + 3)) * x * x + 1  # |x| <= 1
    far = ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A  # 1 < |x| < 2
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def axis_weights(in_size: int, out_size: int, out_start: int, out_stop: int) -> tuple[int, int, torch.Tensor]:
    """Weights of the antialiased bicubic resize `in_size -> out_size` for outputs [out_start, out_stop).

    Returns (in_start, in_stop, W), W float64 of shape (out_stop - out_start, in_stop - in_start), such
    that `out[out_start:out_stop] = W @ inp[in_start:in_stop]` along this axis; [in_start, in_stop) is
    the minimal input range with a nonzero weight (the halo). W is a fresh tensor (callers may change it);
    the computation is cached (`_axis_weights`): it depends only on the four sizes.
    """
    lo, hi, W = _axis_weights(in_size, out_size, out_start, out_stop)
    return lo, hi, W.clone()


@functools.lru_cache(maxsize=1024)
def _axis_weights(in_size: int, out_size: int, out_start: int, out_stop: int) -> tuple[int, int, torch.Tensor]:
    """axis_weights, vectorised over the outputs (torch's `_compute_weights_aa` per output row i):
    center = scale (i + 0.5), taps x in [xmin, xmax), w = cubic((x - center + 0.5) / max(scale, 1)),
    normalised to sum 1. Cached: do not change the returned tensor."""
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    if not 0 <= out_start < out_stop <= out_size:
        raise ValueError(f"output range [{out_start}, {out_stop}) is empty or outside [0, {out_size})")
    scale = in_size / out_size
    support = 2.0 * max(scale, 1.0)  # bicubic interp_size 4, times 0.5, widened when downscaling
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (torch.arange(out_start, out_stop, dtype=torch.float64) + 0.5)  # (n_out,)
    xmin = torch.trunc(center - support + 0.5).clamp(min=0)  # (n_out,) C-style truncation, as in torch
    xmax = torch.trunc(center + support + 0.5).clamp(max=in_size)  # (n_out,)
    taps = int((xmax - xmin).max())
    x = xmin[:, None] + torch.arange(taps, dtype=torch.float64)  # (n_out, taps) input positions
    valid = x < xmax[:, None]  # (n_out, taps)
    w = torch.where(valid, _cubic((x - center[:, None] + 0.5) * invscale), 0.0)  # (n_out, taps)
    w = w / w.sum(dim=1, keepdim=True)  # (n_out, taps)
    nonzero = w != 0  # (n_out, taps)
    lo = int(x[nonzero].min())
    hi = int(x[nonzero].max()) + 1
    W = torch.zeros(out_stop - out_start, hi - lo, dtype=torch.float64)  # (n_out, n_in)
    keep = valid & (x >= lo) & (x < hi)  # (n_out, taps) drop only zero weights outside [lo, hi)
    rows = torch.arange(out_stop - out_start)[:, None].expand_as(x)  # (n_out, taps)
    W[rows[keep], (x[keep] - lo).long()] = w[keep]
    return lo, hi, W


def input_range(in_size: int, out_size: int, out_start: int, out_stop: int) -> tuple[int, int]:
    """The input range [in_start, in_stop) that outputs [out_start, out_stop) of the resize read."""
    lo, hi, _ = _axis_weights(in_size, out_size, out_start, out_stop)
    return lo, hi


def upsample_region(lr, box: tuple[int, int, int, int], scale: int = 4, clamp: bool = True) -> torch.Tensor:
    """Output box `(y0, y1, x0, x1)` (HR pixels) of the bicubic x`scale` upsampling of `lr`.

    `lr` is anything with `.shape == (B, C, h, w)` that can be sliced as `lr[..., ys, xs]` into a torch
    tensor or numpy array (a tensor, a zarr array, ...); only the needed halo of `lr` is read (`halo`),
    and torch's own antialiased bicubic kernel resizes it, in the input's float dtype (float32 for numpy /
    integer input): an output's weights depend only on its centre relative to the crop, so the box comes
    out as from the whole image. Returns (B, C, y1 - y0, x1 - x0), clamped to [-1, 1] when `clamp`.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale <= 0:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    h, w = int(lr.shape[-2]), int(lr.shape[-1])
    H, W = h * scale, w * scale
    y0, y1, x0, x1 = (int(v) for v in box)
    if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
        raise ValueError(f"box (y0, y1, x0, x1)={tuple(box)} is empty or outside the {H}x{W} output image")
    iy0, iy1 = halo(h, H, y0, y1)
    ix0, ix1 = halo(w, W, x0, x1)
    patch = lr[..., iy0:iy1, ix0:ix1]  # (B, C, iy1-iy0, ix1-ix0), the halo only
    if isinstance(patch, torch.Tensor):
        dtype = patch.dtype if patch.is_floating_point() else torch.float32
    else:
        patch, dtype = torch.from_numpy(np.asarray(patch)), torch.float32
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32  # no half kernels on CPU
    up = F.interpolate(patch.to(work), size=((iy1 - iy0) * scale, (ix1 - ix0) * scale), mode="bicubic",
                       align_corners=False, antialias=True)  # (B, C, scale*(iy1-iy0), scale*(ix1-ix0))
    out = up[..., y0 - iy0 * scale:y1 - iy0 * scale, x0 - ix0 * scale:x1 - ix0 * scale]  # (B, C, y1-y0, x1-x0)
    return (out.clamp(-1.0, 1.0) if clamp else out.contiguous()).to(dtype)


def halo(in_size: int, out_size: int, out_start: int, out_stop: int) -> tuple[int, int]:
    """The input crop whose own resize gives outputs [out_start, out_stop) exactly as the whole input's:
    the range of their nonzero taps (an output's weights depend only on its centre relative to the crop;
    the taps the crop cuts off have zero weight, so the normalisation is unchanged; tests/test_upsample.py
    checks equality on random boxes)."""
    return input_range(in_size, out_size, out_start, out_stop)


def upsample_full(lr, scale: int = 4, clamp: bool = True) -> torch.Tensor:
    """The whole bicubic x`scale` upsampled image of `lr` (B, C, h, w) -> (B, C, h*scale, w*scale)."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale <= 0:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    h, w = int(lr.shape[-2]), int(lr.shape[-1])
    return upsample_region(lr, (0, h * scale, 0, w * scale), scale=scale, clamp=clamp)
