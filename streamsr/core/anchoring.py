"""Statistics anchoring: pull the sampled HR output back towards the statistics of the LR input.

Diffusion upsamplers drift in colour and brightness over many steps. After sampling, streamsr can
anchor the output to the LR image in one of two ways (`ANCHOR_MODES`):

Global anchoring (AccDiffusion v2, "rechange mean&var": `latents = (latents - latents.mean()) /
latents.std() * anchor_std + anchor_mean`), done here per channel and out of core in two passes:

1. stats pass: `block_moments` of every output block, folded with `merge` into one `Moments`
   (count, per-channel sum and sum of squares, float64). The anchor `Moments` is taken the same way
   from the reference (typically the LR image, streamed tile by tile).
2. apply pass: `global_affine(out, ref)` gives per-channel (scale, shift), and `apply_affine` maps
   every block x -> x * scale + shift.

Float64 addition is not associative, so different merge groupings agree only to round-off (about
1e-15 relative on mean/std for image data; the tests demand 1e-12). The runner therefore merges in
one fixed order, the raster order of the blocks, starting from `Moments.empty(C)`, so the moments,
and the anchored output, are bit-reproducible across runs, batch shapes and resumes. `Moments` holds
plain Python floats and round-trips through JSON bit-exactly (`to_json` / `from_json`), so a partial
stats pass can be stored in the job manifest and resumed.

Differences from AccDiffusion v2: moments are per channel (not over all channels at once) and the
std is the population std (divide by N, not N - 1).

Local anchoring: replace the low frequencies of the output by those of the bicubic-upsampled LR,
`out - lowpass(out) + lowpass(up)`, computed as `out + lowpass(up - out)` (one blur, by linearity).
`lowpass` is a separable Gaussian blur with radius r = ceil(3 * sigma). Border rule, per axis:
'reflect' (mirror without repeating the edge pixel, torch's `F.pad(mode="reflect")`, numpy's
'reflect') when the axis is longer than r; otherwise (n <= r, where reflect is undefined) the whole
axis uses 'replicate' (clamp the index to the edge). The rule depends only on (axis length, r), so the
whole-image path (`lowpass_full`, `local_anchor_full`, the references) and the per-block path
(`lowpass_region`, `local_anchor_region`) pad identically. The per-block path reads the box plus a
halo of r pixels clipped to the image, pads only where the halo leaves the image, blurs and crops;
it equals the whole-image result restricted to the box (same arithmetic on the same values).
Local anchoring reads neighbours' pixels, so its output must go to another array than the one it
reads (a task never reads what it writes).

- `Moments`, `merge`, `block_moments`: streaming per-channel statistics.
- `global_affine`, `apply_affine`: the global (AccDiffusion v2) anchor.
- `gaussian_radius`, `gaussian_kernel1d`, `lowpass_full`, `lowpass_region`: the Gaussian low-pass.
- `local_anchor_full`, `local_anchor_region`: the local anchor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

ANCHOR_MODES = ("none", "global", "local")

# Std of the local anchor's Gaussian low-pass, in HR pixels. 4.0 = one LR pixel of the x4 model: the
# output keeps what the LR cannot say (detail finer than an LR pixel) and takes colour/brightness at
# LR scale from the upsampled LR. A first guess, to be tuned by measurement.
LOCAL_SIGMA = 4.0

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, in image pixels
Reader = Callable[[int, int, int, int], torch.Tensor]  # read(y0, y1, x0, x1) -> (B, C, y1-y0, x1-x0)


# ----------------------------------------------------------------------------------------------------
# Global anchoring: streaming moments and the per-channel affine map
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moments:
    """Per-channel raw moments of a set of pixels: count, sum and sum of squares, float64.

    `count` is the number of pixels per channel (the same for every channel). Fields are plain Python
    ints/floats so that `Moments.from_json(m.to_json()) == m` bit for bit.
    """

    count: int  # pixels per channel
    sum: tuple[float, ...]  # (C,) sum of x per channel
    sumsq: tuple[float, ...]  # (C,) sum of x * x per channel

    def __post_init__(self):
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"Moments.count must be an int >= 0, got {self.count!r}")
        object.__setattr__(self, "sum", tuple(float(v) for v in self.sum))
        object.__setattr__(self, "sumsq", tuple(float(v) for v in self.sumsq))
        if len(self.sum) != len(self.sumsq) or not self.sum:
            raise ValueError(
                f"Moments.sum and Moments.sumsq must have the same length >= 1 (one per channel), "
                f"got {len(self.sum)} and {len(self.sumsq)}"
            )

    @classmethod
    def empty(cls, channels: int) -> "Moments":
        """The moments of no pixels (the identity of `merge`)."""
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {channels!r}")
        return cls(count=0, sum=(0.0,) * channels, sumsq=(0.0,) * channels)

    @property
    def channels(self) -> int:
        return len(self.sum)

    @property
    def mean(self) -> tuple[float, ...]:
        """(C,) per-channel mean."""
        if self.count == 0:
            raise ValueError("the mean of empty Moments (count 0) is undefined")
        return tuple(s / self.count for s in self.sum)

    @property
    def std(self) -> tuple[float, ...]:
        """(C,) per-channel population std, sqrt(E[x^2] - E[x]^2) (clamped at 0 against round-off)."""
        n = self.count
        if n == 0:
            raise ValueError("the std of empty Moments (count 0) is undefined")
        return tuple(math.sqrt(max(q / n - (s / n) ** 2, 0.0)) for s, q in zip(self.sum, self.sumsq))

    def to_json(self) -> dict:
        """A JSON-able dict; Python's float repr is shortest-round-trip, so this is bit-exact."""
        return {"count": self.count, "sum": list(self.sum), "sumsq": list(self.sumsq)}

    @classmethod
    def from_json(cls, d: dict) -> "Moments":
        """Inverse of `to_json`."""
        missing = {"count", "sum", "sumsq"} - set(d)
        if missing:
            raise ValueError(f"Moments JSON lacks {sorted(missing)}; has {sorted(d)}")
        return cls(count=d["count"], sum=tuple(d["sum"]), sumsq=tuple(d["sumsq"]))


def merge(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two disjoint pixel sets (raw moments add)."""
    if a.channels != b.channels:
        raise ValueError(f"cannot merge Moments with {a.channels} and {b.channels} channels")
    return Moments(
        count=a.count + b.count,
        sum=tuple(x + y for x, y in zip(a.sum, b.sum)),
        sumsq=tuple(x + y for x, y in zip(a.sumsq, b.sumsq)),
    )


def block_moments(x: torch.Tensor) -> Moments:
    """Moments of a block x (C, h, w) or (B, C, h, w), accumulated in float64 (channels at dim -3)."""
    if x.ndim not in (3, 4):
        raise ValueError(f"block_moments wants (C, h, w) or (B, C, h, w), got shape {tuple(x.shape)}")
    x64 = x.detach().to(torch.float64)  # (..., C, h, w)
    dims = tuple(d for d in range(x64.ndim) if d != x64.ndim - 3)  # every axis but the channel axis
    count = x64.numel() // x64.shape[-3]
    return Moments(
        count=count,
        sum=tuple(x64.sum(dim=dims).tolist()),  # (C,)
        sumsq=tuple((x64 * x64).sum(dim=dims).tolist()),  # (C,)
    )


def global_affine(out: Moments, ref: Moments, eps: float = 1e-6) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """AccDiffusion v2 "rechange mean&var", per channel: (scale, shift) with out*scale+shift ~ ref.

    scale = ref.std / max(out.std, eps), shift = ref.mean - out.mean * scale. `eps` keeps a constant
    (std 0) output channel finite: it is mapped to ref.mean.
    """
    if out.channels != ref.channels:
        raise ValueError(f"output has {out.channels} channels but the reference has {ref.channels}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    scale = tuple(rs / max(os_, eps) for rs, os_ in zip(ref.std, out.std))
    shift = tuple(rm - om * s for rm, om, s in zip(ref.mean, out.mean, scale))
    return scale, shift


def apply_affine(x: torch.Tensor, scale, shift) -> torch.Tensor:
    """x (..., C, h, w) -> x * scale[c] + shift[c], computed in float64, returned in x's dtype.

    Float64 matters when scale is large (a near-constant channel): x * scale and shift then nearly
    cancel.
    """
    C = x.shape[-3] if x.ndim >= 3 else -1
    if len(scale) != C or len(shift) != C:
        raise ValueError(
            f"apply_affine wants x (..., C, h, w) and C scales/shifts, got x {tuple(x.shape)}, "
            f"{len(scale)} scales, {len(shift)} shifts"
        )
    s = torch.tensor(scale, dtype=torch.float64, device=x.device).view(C, 1, 1)  # (C, 1, 1)
    t = torch.tensor(shift, dtype=torch.float64, device=x.device).view(C, 1, 1)  # (C, 1, 1)
    return (x.to(torch.float64) * s + t).to(x.dtype)  # (..., C, h, w)


# ----------------------------------------------------------------------------------------------------
# Local anchoring: a separable Gaussian low-pass, whole-image and per block
# ----------------------------------------------------------------------------------------------------


def gaussian_radius(sigma: float) -> int:
    """Radius r = ceil(3 * sigma) of the Gaussian kernel (also the halo a block read needs)."""
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return math.ceil(3.0 * sigma)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """(2r+1,) float64 Gaussian weights exp(-k^2 / (2 sigma^2)), k = -r..r, normalised to sum 1."""
    r = gaussian_radius(sigma)
    k = torch.arange(-r, r + 1, dtype=torch.float64)  # (2r+1,)
    w = torch.exp(-(k * k) / (2.0 * sigma * sigma))  # (2r+1,)
    return w / w.sum()


def _border_mode(n: int, r: int) -> str:
    """The border rule of an axis of length n: 'reflect' if defined (r < n), else 'replicate'."""
    return "reflect" if r < n else "replicate"


def _pad_axis(x: torch.Tensor, dim: int, before: int, after: int, mode: str) -> torch.Tensor:
    """Pad x (B, C, h, w) by (before, after) along dim -2 or -1 with `mode`."""
    if before == 0 and after == 0:
        return x
    pad = (0, 0, before, after) if dim == -2 else (before, after, 0, 0)  # F.pad lists the last dim first
    return F.pad(x, pad, mode=mode)


def _blur_valid(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """'Valid' separable blur: x (B, C, h+2r, w+2r) -> (B, C, h, w) with the (2r+1,) kernel on both axes."""
    B, C, hp, wp = x.shape
    k = kernel.to(dtype=x.dtype, device=x.device)  # (2r+1,)
    y = x.reshape(B * C, 1, hp, wp)  # (B*C, 1, h+2r, w+2r)
    y = F.conv2d(y, k.view(1, 1, -1, 1))  # (B*C, 1, h, w+2r)
    y = F.conv2d(y, k.view(1, 1, 1, -1))  # (B*C, 1, h, w)
    return y.reshape(B, C, y.shape[-2], y.shape[-1])


def _check_box(image_hw: tuple[int, int], box: Box) -> tuple[int, int, int, int, int, int]:
    H, W = (int(v) for v in image_hw)
    y0, y1, x0, x1 = (int(v) for v in box)
    if H < 1 or W < 1:
        raise ValueError(f"image_hw must be positive, got {tuple(image_hw)}")
    if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
        raise ValueError(f"box (y0, y1, x0, x1)={tuple(box)} is empty or outside the {H}x{W} image")
    return H, W, y0, y1, x0, x1


def _read_padded(read: Reader, image_hw: tuple[int, int], box: Box, r: int) -> torch.Tensor:
    """The box plus an r-pixel halo: (B, C, y1-y0+2r, x1-x0+2r).

    Reads `box` grown by r and clipped to the image (one call to `read`), then pads with the border
    rule only where the grown box leaves the image.
    """
    H, W, y0, y1, x0, x1 = _check_box(image_hw, box)
    ry0, ry1, rx0, rx1 = max(y0 - r, 0), min(y1 + r, H), max(x0 - r, 0), min(x1 + r, W)
    patch = read(ry0, ry1, rx0, rx1)  # (B, C, ry1-ry0, rx1-rx0)
    if patch.ndim != 4 or tuple(patch.shape[-2:]) != (ry1 - ry0, rx1 - rx0):
        raise ValueError(
            f"read({ry0}, {ry1}, {rx0}, {rx1}) must return (B, C, {ry1 - ry0}, {rx1 - rx0}), "
            f"got {tuple(patch.shape)}"
        )
    patch = _pad_axis(patch, -2, ry0 - (y0 - r), (y1 + r) - ry1, _border_mode(H, r))  # (B, C, h+2r, rx1-rx0)
    patch = _pad_axis(patch, -1, rx0 - (x0 - r), (x1 + r) - rx1, _border_mode(W, r))  # (B, C, h+2r, w+2r)
    return patch


def lowpass_full(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian low-pass of the whole image (the reference): img (B, C, H, W) -> (B, C, H, W)."""
    if img.ndim != 4:
        raise ValueError(f"lowpass_full wants (B, C, H, W), got shape {tuple(img.shape)}")
    r = gaussian_radius(sigma)
    H, W = img.shape[-2:]
    x = _pad_axis(img, -2, r, r, _border_mode(H, r))  # (B, C, H+2r, W)
    x = _pad_axis(x, -1, r, r, _border_mode(W, r))  # (B, C, H+2r, W+2r)
    return _blur_valid(x, gaussian_kernel1d(sigma))  # (B, C, H, W)


def lowpass_region(read: Reader, image_hw: tuple[int, int], box: Box, sigma: float) -> torch.Tensor:
    """`lowpass_full(img, sigma)[..., y0:y1, x0:x1]` reading only box +- r of the image.

    `read(y0, y1, x0, x1)` returns `img[..., y0:y1, x0:x1]` as a (B, C, ...) tensor; `image_hw` is
    (H, W) of the whole image; `box` is (y0, y1, x0, x1). Returns (B, C, y1-y0, x1-x0).
    """
    r = gaussian_radius(sigma)
    patch = _read_padded(read, image_hw, box, r)  # (B, C, h+2r, w+2r)
    return _blur_valid(patch, gaussian_kernel1d(sigma))  # (B, C, h, w)


def _work_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """At least float32, float64 if either input is."""
    return torch.promote_types(torch.promote_types(a, b), torch.float32)


def local_anchor_full(out: torch.Tensor, up: torch.Tensor, sigma: float = LOCAL_SIGMA) -> torch.Tensor:
    """Reference local anchor: out - lowpass(out) + lowpass(up), as out + lowpass(up - out).

    out, up (B, C, H, W) -> (B, C, H, W) in out's dtype. `up` is the bicubic-upsampled LR.
    """
    if out.shape != up.shape or out.ndim != 4:
        raise ValueError(f"out and up must both be (B, C, H, W), got {tuple(out.shape)} and {tuple(up.shape)}")
    dt = _work_dtype(out.dtype, up.dtype)
    o = out.to(dt)  # (B, C, H, W)
    return (o + lowpass_full(up.to(dt) - o, sigma)).to(out.dtype)  # (B, C, H, W)


def local_anchor_region(
    read_out: Reader, read_up: Reader, image_hw: tuple[int, int], box: Box, sigma: float = LOCAL_SIGMA
) -> torch.Tensor:
    """`local_anchor_full(out, up, sigma)[..., y0:y1, x0:x1]`, reading only box +- r of out and up.

    `read_out` / `read_up` read regions of the output and of the upsampled LR (for the latter, e.g.
    `lambda y0, y1, x0, x1: upsample_region(lr, (y0, y1, x0, x1))`). Returns (B, C, y1-y0, x1-x0) in
    the output's dtype.
    """
    r = gaussian_radius(sigma)
    o = _read_padded(read_out, image_hw, box, r)  # (B, C, h+2r, w+2r)
    u = _read_padded(read_up, image_hw, box, r)  # (B, C, h+2r, w+2r)
    if o.shape != u.shape:
        raise ValueError(f"read_out and read_up disagree: {tuple(o.shape)} vs {tuple(u.shape)}")
    dt = _work_dtype(o.dtype, u.dtype)
    h, w = o.shape[-2] - 2 * r, o.shape[-1] - 2 * r
    core = o[..., r:r + h, r:r + w].to(dt)  # (B, C, h, w), the output inside the box
    low = _blur_valid(u.to(dt) - o.to(dt), gaussian_kernel1d(sigma))  # (B, C, h, w)
    return (core + low).to(o.dtype)  # (B, C, h, w)
