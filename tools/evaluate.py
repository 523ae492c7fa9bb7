"""Evaluate a streamsr model as a x4 super-resolver: PSNR / SSIM / fine detail vs bicubic and Lanczos.

The question it answers is the trade-off between the model's operating points (issue 9): `fidelity`
(the MMSE-like estimate, best PSNR / SSIM) and `detail` (a schedule that adds plausible fine detail at
some cost in PSNR), against the classic interpolators, on clean and on degraded LR inputs.

What it does. For every evaluation image (an image list, a directory and/or scikit-image's photographs)
the script takes `--crops-per-image` HR crops of `--crop` x `--crop` pixels at fixed positions (centre
first, then fixed offsets; nothing is downscaled, large images are only cropped) and, for each crop
and each LR set of `--sets` (default both):

1. makes the held-out LR and writes it as a PNG:
   - `clean`: bicubic x4 downsampling with antialias (torch `F.interpolate(mode="bicubic",
     antialias=True, align_corners=False)` on [0, 1] floats), quantised to 8 bits like a real LR file;
   - `degraded`: the clean LR, plus mild Gaussian noise (sigma 2/255 on [0, 1], from a numpy
     generator seeded with the CRC-32 of the crop name: the same noise on every run), quantised to
     8 bits again, then a JPEG round trip at quality 75 (Pillow, 4:2:0 chroma, in memory);
2. upscales the LR x4 once per model method through `streamsr.jobs.flows.upscale` (the real out-of-core
   job pipeline: job creation, semantic vector, streamed sampling, anchoring, PNG export) with a
   temporary job dir, and reads the output back;
3. makes two baselines from the 8-bit LR: PIL bicubic (Image.BICUBIC) and Lanczos (Image.LANCZOS) x4;
4. scores every method against the 8-bit HR crop:
   - PSNR-Y / SSIM-Y on the ITU-R BT.601 luma used in SR papers,
     Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B in [0, 1] (Y in [16, 235], not rounded),
     data range 255;
   - PSNR-RGB / SSIM-RGB on the 8-bit RGB values, data range 255;
   - both with a 4 px border shaved; SSIM is skimage.metrics.structural_similarity with the settings
     of Wang et al. 2004 (Gaussian window sigma 1.5, population covariance), `channel_axis` for RGB;
     PSNR of identical images is capped at 100 dB so that means and JSON stay finite;
   - the detail measure (see `detail_measure`): the energy of the output's fine detail relative to
     the HR crop's, on Y, hp(img) = Y - GaussianBlur(Y, sigma 2 px), detail = sum hp(out)^2 /
     sum hp(HR)^2 over the shaved region. 1.0 = as much fine detail as the original (not
     necessarily the same detail: PSNR says that), below 1 = smoother, above 1 = noisier or
     sharper. Bicubic of the clean LR scores about 0.13 on scikit-image's photographs, the scale
     of the issue's calibration (bicubic about 0.14, a GAN upscaler about 0.7);
   - the seam score: mean |gradient| of the pixel pairs straddling a block border (a multiple of the
     model's block_size, horizontally and vertically) divided by the mean |gradient| of the other
     pixel pairs at the same phase modulo 4 (pairs straddling an LR-pixel boundary, x+1 a multiple
     of 4, but not a block border: an x4 upsampling has larger gradients there at every phase-0
     pair, which are not seams); 1.0 means the block borders are statistically invisible. Reported
     for every method (bicubic and Lanczos have no blocks: the sanity reference, ~1.0). On the
     degraded set the JPEG's 8 x 8 LR px grid (32 HR px) falls on every block border when block_size
     is a multiple of 32 (64 and 128 are): its blocking raises the score of every method there, so
     read the model's seam on that set against bicubic's;
5. saves a side-by-side PNG: HR | bicubic | fidelity | detail (or the model methods present), full
   crops on top and, below, the 96 x 96 HR px region with the most detail, nearest-upscaled x3 (the
   region is outlined on the HR).

Model methods. When the model dir's `streamsr_defaults.json` names operating points (read by
`streamsr.weights.read_model_defaults`, the one owner of that file's schema), every mode it names is a
method (`fidelity`, `detail`), run with that mode's recommended settings; `--modes fidelity,detail`
picks some of them. A model dir without modes (a flat file, or none) gives one method, `model`, run
with its flat settings. Job settings given on the command line (--steps, --sampler, --seed, --batch,
--anchor, --sigma-min, --sigma-max, --device, --dtype, --backend) override those of every model
method; what is given neither way is JobConfig's default. The settings used per method are printed
and reported.

Outputs under --out:
- report.md: the settings (the full job settings of each model method), then per LR set a table of
  the mean of every metric per method, a line comparing fidelity and detail with bicubic (delta
  PSNR-Y, delta SSIM-Y, detail), the per-image table and the per-crop table;
- report.json: the same numbers: settings, methods, per set the per-crop records, per-image and
  overall means and the deltas vs bicubic;
- plot.png: the perception-distortion plot, x = detail measure, y = PSNR-Y, one labelled point per
  method and LR set (the overall mean; colour = method, disc = clean, square = degraded, the dashed
  line at x = 1 is the HR's own detail), drawn with Pillow;
- crops/<crop>_hr.png, crops/<crop>_<set>_lr.png, crops/<crop>_<set>_<method>.png (model methods)
  and crops/<crop>_<set>_side.png.
Means: "mean" is the mean over images of their crop means (the crop mean when every image gives
the same number of crops); NaN values are left out. The mean tables are also printed.

Run time: the model runs once per crop, per LR set and per model method (each call loads the model
and creates a job, like a real user), e.g. 8 crops x 2 sets x 2 modes = 32 upscale calls.

Images: --images is a JSON file in data/photos.json format ({"images": [{"path": ..., "split":
"eval" | "train", ...}]}, only split "eval" is used, relative paths are taken from the JSON file's
directory, then from the current directory) or a directory (its PNG / JPEG / TIFF files, sorted).
--skimage adds astronaut, coffee, chelsea and rocket from skimage.data (bundled with scikit-image,
which this tool needs for SSIM: pip install scikit-image).

Run from the repository root:

    .venv/bin/python tools/evaluate.py --model MODEL_DIR --skimage --out out/eval
    .venv/bin/python tools/evaluate.py --model MODEL_DIR --images data/photos.json --crop 256 \\
        --crops-per-image 2 --sets clean --modes detail --batch 2x2 --device cuda --out out/eval_photos
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from streamsr.config import MODES, ConfigError, JobConfig
from streamsr.errors import BadInput

REPO = Path(__file__).resolve().parents[1]

SCALE = 4
SHAVE = 4  # border pixels left out of PSNR / SSIM / detail, as in SR papers (= the scale)
PSNR_CAP = 100.0  # dB, the PSNR of identical images
DETAIL_SIGMA = 2.0  # HR px, the Gaussian of the detail measure's high-pass (see detail_measure)
NOISE_SIGMA = 2.0 / 255.0  # the degraded set's Gaussian noise, on [0, 1]
JPEG_QUALITY = 75  # the degraded set's JPEG round trip
SETS = ("clean", "degraded")
BASELINES = ("bicubic", "lanczos")
SKIMAGE_NAMES = ("astronaut", "coffee", "chelsea", "rocket")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "detail", "seam", "seconds")
ZOOM_PX, ZOOM_FACTOR = 96, 3
# crop positions as fractions of the free range (H - crop, W - crop): centre first, then fixed offsets
CROP_POSITIONS = ((0.5, 0.5), (0.25, 0.25), (0.75, 0.75), (0.25, 0.75), (0.75, 0.25),
                  (0.5, 0.25), (0.5, 0.75), (0.25, 0.5), (0.75, 0.5))


# ----------------------------------------------------------------------------- metrics (pure)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image (H, W, 3) as in SR papers: float64 (H, W) in [16, 235].

    uint8 input is divided by 255, float input is taken as [0, 1]; the result is not rounded.
    """
    x = np.asarray(img)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    return 16.0 + x[..., 0] * 65.481 + x[..., 1] * 128.553 + x[..., 2] * 24.966


def shave(img: np.ndarray, border: int = SHAVE) -> np.ndarray:
    """The image without `border` pixels on each side (H and W are the first two axes)."""
    return img[border:img.shape[0] - border, border:img.shape[1] - border] if border else img


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB of two same-shape arrays; identical arrays give PSNR_CAP."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(data_range ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, channel_axis: int | None = None) -> float:
    """SSIM (Gaussian window sigma 1.5, population covariance: Wang et al. 2004) via skimage."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=channel_axis,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def quality(hr: np.ndarray, sr: np.ndarray, border: int = SHAVE) -> dict[str, float]:
    """PSNR / SSIM on Y and on RGB of an 8-bit RGB result `sr` vs the 8-bit RGB `hr`, border shaved."""
    if hr.shape != sr.shape:
        raise ValueError(f"shape mismatch {hr.shape} vs {sr.shape}")
    hy, sy = shave(rgb_to_y(hr), border), shave(rgb_to_y(sr), border)
    hc, sc = shave(hr.astype(np.float64), border), shave(sr.astype(np.float64), border)
    return {"psnr_y": psnr(hy, sy), "ssim_y": ssim(hy, sy),
            "psnr_rgb": psnr(hc, sc), "ssim_rgb": ssim(hc, sc, channel_axis=-1)}


def seam_score(img: np.ndarray, block_size: int, phase: int = SCALE) -> float:
    """Mean |gradient| across block borders / mean |gradient| of like pairs elsewhere (NaN: no border).

    A horizontal pair (x, x+1) is on a border when x+1 is a multiple of block_size, a vertical pair
    (y, y+1) likewise; both directions are pooled, colour channels averaged. The reference pairs are
    the other pairs at the same phase modulo `phase` (x+1 a multiple of `phase`, not of block_size):
    an x4 upsampling (bicubic, and the model through its bicubic conditioning) has systematically
    larger gradients across LR-pixel boundaries, which are not seams. phase=1 compares with every
    other pair. block_size must be a multiple of phase.
    """
    if block_size % phase:
        raise ValueError(f"block_size {block_size} is not a multiple of phase {phase}")
    x = np.asarray(img, dtype=np.float64)
    if x.ndim == 2:
        x = x[..., None]
    gx = np.abs(np.diff(x, axis=1)).mean(axis=-1)  # (H, W-1): pair (x, x+1)
    gy = np.abs(np.diff(x, axis=0)).mean(axis=-1)  # (H-1, W): pair (y, y+1)
    nx, ny = np.arange(1, x.shape[1]), np.arange(1, x.shape[0])  # x+1, y+1 of each pair
    bx, by = nx % block_size == 0, ny % block_size == 0  # pairs straddling a block border
    rx, ry = (nx % phase == 0) & ~bx, (ny % phase == 0) & ~by  # like pairs inside blocks
    on = np.concatenate([gx[:, bx].ravel(), gy[by, :].ravel()])
    ref = np.concatenate([gx[:, rx].ravel(), gy[ry, :].ravel()])
    if on.size == 0 or ref.size == 0:
        return float("nan")
    denom = ref.mean()
    return float(on.mean() / denom) if denom > 0 else (1.0 if on.mean() == 0 else float("inf"))


def fine_detail(img: np.ndarray, sigma: float = DETAIL_SIGMA) -> np.ndarray:
    """hp(img) = Y - GaussianBlur(Y, sigma) (float64, same H x W): the luma's detail finer than ~sigma.

    Y is the BT.601 luma of an RGB image (rgb_to_y); a 2-D input is taken as the luma itself. The blur
    is scipy.ndimage.gaussian_filter (reflect padding, truncated at 4 sigma).
    """
    from scipy.ndimage import gaussian_filter

    x = np.asarray(img)
    y = x.astype(np.float64) if x.ndim == 2 else rgb_to_y(x)
    return y - gaussian_filter(y, sigma, mode="reflect", truncate=4.0)


def detail_measure(out: np.ndarray, hr: np.ndarray, sigma: float = DETAIL_SIGMA, border: int = SHAVE) -> float:
    """Fine-detail energy of `out` relative to the HR's: sum(hp(out)^2) / sum(hp(hr)^2).

    hp = fine_detail (luma minus its Gaussian blur of `sigma` HR px), both sums over the image with
    `border` px shaved (the blur itself sees the whole crop). 1.0: as much fine detail as the HR (an
    identical image gives exactly 1.0; it says nothing about where the detail is, PSNR does), < 1:
    smoother (a blur, an interpolator, an MMSE estimate), > 1: more high-frequency energy than the
    HR (noise, ringing, oversharpening). Never NaN: a flat HR gives 1.0 for a flat output, else inf.

    Calibration of sigma = 2 px (DETAIL_SIGMA): 1 - exp(-2 pi^2 sigma^2 f^2), the high-pass's amplitude
    response, passes half the energy at f = 1/8 cycle per HR px, the LR's Nyquist frequency at x4, so
    the measure weighs the detail the LR cannot carry (periods below ~8 HR px, structures finer than
    ~2 LR px). PIL bicubic x4 of the clean LR (antialiased bicubic /4, 8 bit) of scikit-image's
    photographs, 256 px crops, 2 per image (this tool's defaults): astronaut 0.147 0.156, coffee
    0.163 0.176, chelsea 0.149 0.131, rocket 0.061 0.051 (a noisy photo: much fine HR energy),
    mean 0.129 (Lanczos 0.148): the issue's calibration (bicubic about 0.14, a GAN upscaler about 0.7).
    A narrower high-pass scores bicubic far lower (mean 0.035 at sigma 1 px, 0.015 at 0.5 px): the
    ratio is then dominated by periods of 2-4 px, where an x4 upsampler from a clean LR has nothing.
    """
    a = shave(fine_detail(out, sigma), border)
    b = shave(fine_detail(hr, sigma), border)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    num, den = float(np.sum(a * a)), float(np.sum(b * b))
    flat = 1e-9 * max(1, b.size)  # a flat image's hp is 0 up to rounding (~1e-14 per px)
    if den <= flat:
        return 1.0 if num <= flat else float("inf")
    return num / den


# ----------------------------------------------------------------------------- images, crops, degradation


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """Any (H, W[, C]) image (uint8, uint16 or float in [0, 1]) as uint8 RGB; alpha dropped, grey repeated."""
    x = np.asarray(img)
    if x.ndim == 2:
        x = x[..., None]
    if x.dtype == np.uint16:
        x = x.astype(np.float64) / 65535.0
    if x.dtype != np.uint8:
        x = np.rint(np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    channels = x.shape[-1]
    if channels in (1, 2):
        x = np.repeat(x[..., :1], 3, axis=-1)
    return np.ascontiguousarray(x[..., :3])


def crop_boxes(height: int, width: int, crop: int, count: int) -> list[tuple[int, int, int]]:
    """Up to `count` distinct (top, left, side) crops at fixed positions (centre first).

    The side is `crop`, or the largest multiple of SCALE that fits a smaller image.
    """
    side = min(crop, height, width) // SCALE * SCALE
    if side < SCALE:
        return []
    boxes: list[tuple[int, int, int]] = []
    positions = list(CROP_POSITIONS)
    i = 0
    while len(positions) < count:  # beyond the fixed list: a Halton (2, 3) sequence
        i += 1
        positions.append((_halton(i, 3), _halton(i, 2)))
    for fy, fx in positions[:count]:
        box = (int(round(fy * (height - side))), int(round(fx * (width - side))), side)
        if box not in boxes:
            boxes.append(box)
    return boxes


def _halton(i: int, base: int) -> float:
    f, r = 1.0, 0.0
    while i > 0:
        f /= base
        r += f * (i % base)
        i //= base
    return r


def degrade(hr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """uint8 HR (H, W, 3) -> uint8 LR (H/scale, W/scale, 3): antialiased bicubic on [0, 1], quantised."""
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"HR size {w}x{h} is not a multiple of {scale}")
    x = torch.from_numpy(hr.astype(np.float32) / 255.0).permute(2, 0, 1)[None]  # (1, 3, H, W)
    y = F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True)
    lr = y[0].permute(1, 2, 0).clamp(0.0, 1.0).numpy()  # (h, w, 3)
    return np.rint(lr * 255.0).astype(np.uint8)


def crop_seed(crop_id: str) -> int:
    """The degraded set's noise seed of a crop: CRC-32 of its name (the same on every run and machine)."""
    return zlib.crc32(crop_id.encode("utf-8"))


def noise_jpeg(lr: np.ndarray, seed: int, noise: float = NOISE_SIGMA, quality: int = JPEG_QUALITY) -> np.ndarray:
    """uint8 RGB LR + Gaussian noise (std `noise` on [0, 1], numpy generator seeded `seed`), quantised to
    8 bits, then a JPEG round trip (Pillow, `quality`, 4:2:0 chroma) in memory; uint8 RGB out."""
    rng = np.random.default_rng(seed)
    x = lr.astype(np.float64) / 255.0 + rng.normal(0.0, noise, lr.shape)
    noisy = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=quality, subsampling="4:2:0", optimize=False)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()


def make_lr(hr: np.ndarray, lr_set: str, seed: int) -> np.ndarray:
    """The held-out uint8 LR of an HR crop for an LR set: `clean` = degrade(hr), `degraded` =
    noise_jpeg(degrade(hr), seed)."""
    if lr_set not in SETS:
        raise ValueError(f"LR set must be one of {', '.join(SETS)}, got {lr_set!r}")
    lr = degrade(hr)
    return lr if lr_set == "clean" else noise_jpeg(lr, seed)


def pil_upscale(lr: np.ndarray, scale: int, resample: int) -> np.ndarray:
    """uint8 RGB LR x`scale` with a PIL filter (Image.BICUBIC, Image.LANCZOS)."""
    h, w = lr.shape[:2]
    return np.asarray(Image.fromarray(lr).resize((w * scale, h * scale), resample=resample))


def detail_window(img: np.ndarray, size: int, stride: int = 8) -> tuple[int, int]:
    """(top, left) of the size x size window with the largest mean |gradient| of the luma."""
    y = rgb_to_y(img)
    g = np.zeros_like(y)
    g[:, :-1] += np.abs(np.diff(y, axis=1))
    g[:-1, :] += np.abs(np.diff(y, axis=0))
    ii = np.pad(g.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # integral image
    best, where = -1.0, (0, 0)
    for t in range(0, y.shape[0] - size + 1, stride):
        for l in range(0, y.shape[1] - size + 1, stride):
            s = ii[t + size, l + size] - ii[t, l + size] - ii[t + size, l] + ii[t, l]
            if s > best:
                best, where = s, (t, l)
    return where


def side_by_side(panels: list[tuple[str, np.ndarray]], zoom: int = ZOOM_PX, factor: int = ZOOM_FACTOR,
                 gap: int = 4) -> np.ndarray:
    """Labelled panels side by side: full images on top, a nearest-upscaled detail region below."""
    h, w = panels[0][1].shape[:2]
    z = min(zoom, h, w)
    top, left = detail_window(panels[0][1], z)
    label_h = 14
    row1_w = len(panels) * w + (len(panels) - 1) * gap
    row2_w = len(panels) * z * factor + (len(panels) - 1) * gap
    canvas = Image.new("RGB", (max(row1_w, row2_w), 2 * label_h + h + gap + z * factor), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    for i, (name, img) in enumerate(panels):
        x1 = i * (w + gap)
        draw.text((x1 + 2, 1), name, fill=(255, 255, 255))
        canvas.paste(Image.fromarray(img), (x1, label_h))
        if i == 0:
            draw.rectangle((x1 + left, label_h + top, x1 + left + z - 1, label_h + top + z - 1), outline=(255, 220, 0))
        region = Image.fromarray(img[top:top + z, left:left + z]).resize((z * factor, z * factor), Image.NEAREST)
        x2, y2 = i * (z * factor + gap), label_h + h + gap
        draw.text((x2 + 2, y2 + 1), f"{name} x{factor} @({left},{top})", fill=(255, 255, 255))
        canvas.paste(region, (x2, y2 + label_h))
    return np.asarray(canvas)


def save_png(path: Path, img: np.ndarray) -> None:
    Image.fromarray(img).save(path, format="PNG")


# ----------------------------------------------------------------------------- the perception-distortion plot


PLOT_SIZE = (800, 600)
METHOD_COLOURS = {"bicubic": (90, 90, 90), "lanczos": (150, 150, 150), "fidelity": (31, 119, 180),
                  "detail": (214, 39, 40), "model": (44, 160, 44)}


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About `count` round tick values (1, 2, 2.5 or 5 x 10^k apart) from <= lo to >= hi."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range {lo}..{hi} is not finite")
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, count - 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def _tick_text(value: float, ticks: list[float]) -> str:
    """A tick label with as many decimals as the tick step needs (0.25 -> 2, 0.5 -> 1, 2 -> 0)."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    digits = next(d for d in range(7) if abs(round(step, d) - step) < 1e-9 * max(1.0, abs(step)) or d == 6)
    return f"{value:.{digits}f}"


def perception_distortion_plot(points: list[dict], title: str = "", size: tuple[int, int] = PLOT_SIZE) -> np.ndarray:
    """The perception-distortion plot as a uint8 RGB image (H, W, 3), drawn with Pillow's ImageDraw.

    points: [{"method": ..., "set": ..., "detail": x, "psnr_y": y}], one per method and LR set; x =
    detail measure, y = PSNR-Y in dB. Colour = method, filled disc = set clean, filled square = any other
    set; each point is labelled "method (set)". Points with a non-finite coordinate are left out. The
    x axis always shows 0 and 1 (the dashed line at 1 = the HR's own fine-detail energy).
    """
    width, height = size
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    f_title, f_axis, f_tick, f_label = _font(18), _font(15), _font(13), _font(13)
    nan = float("nan")
    pts = [p for p in points if math.isfinite(p.get("detail", nan)) and math.isfinite(p.get("psnr_y", nan))]
    left, right, top, bottom = 80, width - 30, 60, height - 70  # the plot area
    xs = [p["detail"] for p in pts]
    ys = [p["psnr_y"] for p in pts]
    xt = nice_ticks(0.0, max([1.0] + xs) * 1.05)
    y_lo, y_hi = (min(ys), max(ys)) if ys else (20.0, 30.0)
    pad = max(0.5, 0.08 * (y_hi - y_lo))
    yt = nice_ticks(y_lo - pad, y_hi + pad)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))

    draw.text((width / 2, 14), title or "perception-distortion: PSNR-Y vs fine detail", fill=(0, 0, 0),
              font=f_title, anchor="mt")
    for x in xt:  # grid, ticks and tick labels
        u, _ = px(x, y0)
        draw.line((u, top, u, bottom), fill=(230, 230, 230))
        draw.line((u, bottom, u, bottom + 5), fill=(0, 0, 0))
        draw.text((u, bottom + 8), _tick_text(x, xt), fill=(0, 0, 0), font=f_tick, anchor="mt")
    for y in yt:
        _, v = px(x0, y)
        draw.line((left, v, right, v), fill=(230, 230, 230))
        draw.line((left - 5, v, left, v), fill=(0, 0, 0))
        draw.text((left - 8, v), _tick_text(y, yt), fill=(0, 0, 0), font=f_tick, anchor="rm")
    u1, _ = px(1.0, y0)  # the HR's detail level
    for v in range(top, bottom, 8):
        draw.line((u1, v, u1, min(v + 4, bottom)), fill=(120, 120, 120))
    draw.text((u1 - 4, top + 4), "HR detail", fill=(90, 90, 90), font=f_tick, anchor="ra")
    hr_box = draw.textbbox((u1 - 4, top + 4), "HR detail", font=f_tick, anchor="ra")
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    draw.text(((left + right) / 2, height - 14),
              "detail measure: fine-detail energy of the output / of the HR (sigma "
              f"{DETAIL_SIGMA:g} px high-pass on Y)", fill=(0, 0, 0), font=f_axis, anchor="mb")
    axis = Image.new("RGB", (bottom - top, 24), (255, 255, 255))
    ImageDraw.Draw(axis).text(((bottom - top) / 2, 12), "PSNR-Y (dB)", fill=(0, 0, 0), font=f_axis, anchor="mm")
    img.paste(axis.rotate(90, expand=True), (4, top))
    lx = right - 210  # legend of the marker shapes, above the plot area
    draw.ellipse((lx, 40, lx + 10, 50), fill=(255, 255, 255), outline=(0, 0, 0))
    draw.text((lx + 15, 45), "clean LR", fill=(0, 0, 0), font=f_tick, anchor="lm")
    draw.rectangle((lx + 100, 40, lx + 110, 50), fill=(255, 255, 255), outline=(0, 0, 0))
    draw.text((lx + 115, 45), "degraded LR", fill=(0, 0, 0), font=f_tick, anchor="lm")

    r = 6
    centres = [px(p["detail"], p["psnr_y"]) for p in pts]
    taken = [(u - r, v - r, u + r, v + r) for u, v in centres] + [hr_box]  # boxes a label should not cover
    for p, (u, v) in zip(pts, centres):  # markers
        colour = METHOD_COLOURS.get(p["method"], (0, 0, 0))
        shape = draw.ellipse if p["set"] == "clean" else draw.rectangle
        shape((u - r, v - r, u + r, v + r), fill=colour, outline=(0, 0, 0))

    def free(box: tuple[float, float, float, float]) -> bool:
        inside = left < box[0] and box[2] < right and top < box[1] and box[3] < bottom
        return inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken)

    for p, (u, v) in zip(pts, centres):  # labels, where they cover no marker and no other label if possible
        text = f"{p['method']} ({p['set']})"
        tw, th = draw.textbbox((0, 0), text, font=f_label)[2:]
        candidates = [(u + r + 4, v - th / 2), (u + r + 4, v - th - 2), (u + r + 4, v + 2),
                      (u - r - 4 - tw, v - th / 2), (u - tw / 2, v - r - 4 - th), (u - tw / 2, v + r + 4),
                      (u + r + 4, v - 2 * th - 4), (u + r + 4, v + th + 4),
                      (u - r - 4 - tw, v - th - 2), (u - r - 4 - tw, v + 2)]
        cx, cy = next((c for c in candidates if free((c[0], c[1], c[0] + tw, c[1] + th))), candidates[0])
        taken.append((cx, cy, cx + tw, cy + th))
        draw.text((cx, cy), text, fill=METHOD_COLOURS.get(p["method"], (0, 0, 0)), font=f_label)
    return np.asarray(img)


def write_plot(path: Path, points: list[dict], title: str = "") -> None:
    """perception_distortion_plot(points, title) saved as a PNG."""
    save_png(path, perception_distortion_plot(points, title))


# ----------------------------------------------------------------------------- inputs and settings


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "image"


def list_images(images: str | None, use_skimage: bool) -> list[tuple[str, object]]:
    """[(name, loader)] where loader() returns the image as uint8 RGB (H, W, 3)."""
    from streamsr.io.read import read_image

    def from_file(path: Path):
        return lambda: to_rgb8(read_image(path)[0])

    paths: list[Path] = []
    if images:
        src = Path(images)
        if src.is_dir():
            paths = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif src.is_file():
            data = json.loads(src.read_text())
            entries = data.get("images", []) if isinstance(data, dict) else data
            for entry in entries:
                if not isinstance(entry, dict) or entry.get("split") != "eval":
                    continue
                p = Path(entry["path"])
                if not p.is_absolute():
                    p = src.parent / p if (src.parent / p).exists() else Path.cwd() / p
                if not p.is_file():
                    raise SystemExit(f"evaluate: image {entry['path']} listed in {src} does not exist")
                paths.append(p)
        else:
            raise SystemExit(f"evaluate: --images {src} is neither a JSON list file nor a directory")
    found: list[tuple[str, object]] = []
    seen: set[str] = set()
    for p in paths:
        name, k = safe_name(p.stem), 2
        while name in seen:
            name, k = f"{safe_name(p.stem)}_{k}", k + 1
        seen.add(name)
        found.append((name, from_file(p)))
    if use_skimage:
        import skimage.data

        for name in SKIMAGE_NAMES:
            found.append((name if name not in seen else f"skimage_{name}",
                          (lambda n=name: to_rgb8(getattr(skimage.data, n)()))))
    return found

JOB_FLAGS = {"steps": "steps", "sampler": "sampler", "seed": "seed", "anchor": "anchor", "sigma_min": "sigma_min",
             "sigma_max": "sigma_max", "device": "device", "dtype": "dtype", "backend": "backend"}


def parse_batch(value) -> tuple[int, int]:
    from streamsr.stream.planner import BatchShape

    if isinstance(value, str):
        shape = BatchShape.parse(value)
        return shape.rows, shape.cols
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    rows, cols = value
    return int(rows), int(cols)


def parse_names(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A comma-separated subset of `allowed`, in `allowed`'s order; argparse error otherwise."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{what} must be a comma-separated list of {', '.join(allowed)}, "
                                         f"got {value!r}")
    return tuple(n for n in allowed if n in names)


def job_config(args: argparse.Namespace, recommended: dict) -> JobConfig:
    """JobConfig defaults < the model dir's recommended settings < explicit command-line values."""
    values = JobConfig().to_dict()
    values.update(recommended)
    for flag, field in JOB_FLAGS.items():
        if getattr(args, flag) is not None:
            values[field] = getattr(args, flag)
    if args.batch is not None:
        values["batch_rows"], values["batch_cols"] = args.batch
    return JobConfig.from_dict(values)


def method_configs(args: argparse.Namespace, defaults) -> dict[str, tuple[dict, JobConfig]]:
    """The model methods: {method: (the model dir's recommended settings, the JobConfig to run)}.

    `defaults` is streamsr.weights.read_model_defaults(model dir). With named modes: one method per mode
    of args.modes (None: every mode the model dir names, in MODES order); without: one method "model"
    with the flat settings ({} when the model dir has no streamsr_defaults.json). SystemExit for a
    mode the model dir lacks or for settings JobConfig rejects.
    """
    try:
        if not defaults.modes:
            if args.modes:
                raise SystemExit(f"evaluate: the model dir names no modes (no \"modes\" in its streamsr_defaults.json);"
                                 f" drop --modes {','.join(args.modes)}")
            return {"model": (dict(defaults.flat), job_config(args, defaults.flat))}
        modes = args.modes or tuple(m for m in MODES if m in defaults.modes)
        out = {}
        for mode in modes:
            recommended = defaults.settings(mode)
            out[mode] = (recommended, job_config(args, recommended))
        return out
    except (BadInput, ConfigError) as exc:
        raise SystemExit(f"evaluate: {exc}") from None


# ----------------------------------------------------------------------------- the model run


def run_model(lr_path: Path, out_path: Path, model_dir: Path, cfg: JobConfig, verbose: bool) -> tuple[np.ndarray, dict]:
    """Upscale an LR PNG through the real job pipeline (temporary job dir); (uint8 RGB output, timings)."""
    from streamsr.io.read import read_image
    from streamsr.jobs.flows import upscale
    from streamsr.jobs.store import read_manifest

    with tempfile.TemporaryDirectory(prefix=".evaluate-job-", dir=out_path.parent) as tmp:
        job = Path(tmp) / "job"
        captured = io.StringIO()
        start = time.perf_counter()
        try:
            with contextlib.nullcontext() if verbose else contextlib.redirect_stderr(captured):
                upscale(lr_path, out_path, model_dir=model_dir, job_dir=job, cfg=cfg, progress=False)
        except BaseException:
            sys.stderr.write(captured.getvalue())
            raise
        wall = time.perf_counter() - start
        seconds = dict(read_manifest(job).seconds)
    img, _ = read_image(out_path)
    return to_rgb8(img), {"wall": wall, "loop": float(seconds.get("total", float("nan"))),
                          "model": float(seconds.get("model", float("nan")))}


# ----------------------------------------------------------------------------- report


def _clean(value):
    """JSON-safe: NaN / inf floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def mean_metrics(records: list[dict], methods: tuple[str, ...]) -> dict:
    """Per method, the mean of every metric over `records` (NaNs and infs left out)."""
    out = {}
    for method in methods:
        out[method] = {}
        for m in METRICS:
            vals = [r[method][m] for r in records if r[method].get(m) is not None and math.isfinite(r[method][m])]
            out[method][m] = float(np.mean(vals)) if vals else float("nan")
    return out


def vs_bicubic(mean: dict, methods: tuple[str, ...]) -> dict:
    """Per model method: delta PSNR-Y (dB) and delta SSIM-Y vs bicubic, and both detail measures."""
    b = mean["bicubic"]
    return {m: {"delta_psnr_y": mean[m]["psnr_y"] - b["psnr_y"], "delta_ssim_y": mean[m]["ssim_y"] - b["ssim_y"],
                "detail": mean[m]["detail"], "bicubic_detail": b["detail"]}
            for m in methods if m not in BASELINES}


def _fmt(value: float, digits: int, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _cells(r: dict) -> str:
    return (f"{_fmt(r['psnr_y'], 2)} | {_fmt(r['ssim_y'], 4)} | {_fmt(r['psnr_rgb'], 2)} | {_fmt(r['ssim_rgb'], 4)} | "
            f"{_fmt(r['detail'], 3)} | {_fmt(r['seam'], 3)} | {_fmt(r['seconds'], 2)} |")


HEADER = "PSNR-Y | SSIM-Y | PSNR-RGB | SSIM-RGB | detail | seam | s/crop |"


def mean_table(mean: dict, methods: tuple[str, ...]) -> str:
    """Markdown table: one line per method."""
    lines = [f"| method | {HEADER}", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {m} | {_cells(mean[m])}" for m in methods]
    return "\n".join(lines)


def table(rows: list[tuple[str, dict]], methods: tuple[str, ...]) -> str:
    """Markdown table: one line per (row name, method)."""
    lines = [f"| image | method | {HEADER}", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, res in rows:
        lines += [f"| {name} | {m} | {_cells(res[m])}" for m in methods]
    return "\n".join(lines)


def comparison_line(deltas: dict) -> str:
    """'vs bicubic: fidelity PSNR-Y +x dB, SSIM-Y +y, detail a (bicubic b); detail ...'."""
    parts = [f"**{m}** PSNR-Y {_fmt(d['delta_psnr_y'], 2, True)} dB, SSIM-Y {_fmt(d['delta_ssim_y'], 4, True)}, "
             f"detail {_fmt(d['detail'], 3)} (bicubic {_fmt(d['bicubic_detail'], 3)})" for m, d in deltas.items()]
    return "vs bicubic (mean): " + "; ".join(parts)


SET_TEXT = {
    "clean": "antialiased bicubic x4 downsampling (torch, [0, 1] floats), quantised to 8 bits",
    "degraded": (f"the clean LR + Gaussian noise (sigma {NOISE_SIGMA * 255:g}/255, numpy generator seeded with the "
                 f"CRC-32 of the crop name), quantised to 8 bits, JPEG round trip at quality {JPEG_QUALITY} "
                 "(Pillow, 4:2:0)"),
}


def _job_text(job: dict) -> str:
    return (f"steps {job['steps']} {job['sampler']}, sigma {job['sigma_min']:g}..{job['sigma_max']:g}, rho "
            f"{job['rho']:g}, anchor {job['anchor']}, seed {job['seed']}, batch "
            f"{job['batch_rows']}x{job['batch_cols']}, {job['device']} {job['dtype']} {job['backend']}")


def write_reports(out: Path, settings: dict, methods: tuple[str, ...], results: dict, points: list[dict]) -> str:
    """report.md and report.json; returns the mean tables (one per set) as printed text."""
    md = [
        "# streamsr x4 evaluation", "",
        f"- model: `{settings['model_dir']}` (block_size {settings['block_size']} HR px)",
        f"- methods: {', '.join(methods)}; model methods run through `streamsr.jobs.flows.upscale`, settings "
        "(the model dir's recommended ones, then the command-line overrides "
        f"({json.dumps(settings['overrides']) if settings['overrides'] else 'none given'}):",
    ]
    for m, s in settings["methods"].items():
        rec = json.dumps(s["recommended"]) if s["recommended"] else "nothing"
        md.append(f"  - `{m}`: {_job_text(s['job'])} (model dir recommends {rec})")
    md += [
        f"- crops: {settings['crop']} px HR, up to {settings['crops_per_image']} per image (centre first), "
        f"{settings['crops']} crops from {settings['images']} images",
        "- LR sets: " + "; ".join(f"`{s}`: {SET_TEXT[s]}" for s in results),
        f"- metrics vs the 8-bit HR crop, {SHAVE} px border shaved: PSNR / SSIM on BT.601 Y "
        "(16 + 65.481 R + 128.553 G + 24.966 B, R,G,B in [0,1]) and on RGB, data range 255; SSIM with a "
        f"Gaussian window (sigma 1.5); PSNR capped at {PSNR_CAP:g} dB",
        f"- detail: sum hp(output)^2 / sum hp(HR)^2 with hp = Y - GaussianBlur(Y, sigma {DETAIL_SIGMA:g} px) "
        "(1.0 = the HR's fine-detail energy; bicubic of clean LR ~0.13 on natural photographs)",
        "- seam: mean |gradient| across block borders / across the other LR-pixel boundaries (x+1 a multiple "
        "of 4) inside blocks (1.0 = invisible); s/crop: wall seconds "
        "(model methods: the whole upscale() call incl. job creation and model load); on the degraded set the "
        "JPEG 8x8 LR grid (32 HR px) lies on the block borders when block_size is a multiple of 32: compare "
        "the seam there with bicubic's",
        "- mean: over images of their crop means",
        f"- date: {settings['date']}, torch {settings['torch']}, threads {settings['threads']}", "",
        "Perception-distortion plot (x = detail, y = PSNR-Y, mean per method and set): `plot.png`", "",
    ]
    printed = []
    for lr_set, res in results.items():
        means = mean_table(res["mean"], methods)
        printed.append(f"{lr_set}:\n{means}\n{comparison_line(res['vs_bicubic'])}")
        md += [
            f"## LR set `{lr_set}`", "", f"LR: {SET_TEXT[lr_set]}.", "",
            "### Mean", "", means, "", comparison_line(res["vs_bicubic"]), "",
            "### Per image (mean over its crops)", "",
            table([(im["image"], im["metrics"]) for im in res["images"]], methods), "",
            "### Per crop", "", table([(c["crop"], c) for c in res["crops"]], methods), "",
            f"Side-by-side images (HR | bicubic | {' | '.join(m for m in methods if m not in BASELINES)}, "
            "detail region x3 below): " + ", ".join(f"`crops/{c['crop']}_{lr_set}_side.png`" for c in res["crops"]), "",
        ]
    (out / "report.md").write_text("\n".join(md))
    report = {"settings": settings, "methods": list(methods), "sets": results, "plot": points}
    (out / "report.json").write_text(json.dumps(_clean(report), indent=2) + "\n")
    return "\n\n".join(printed)


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="streamsr model dir (config.json + safetensors)")
    p.add_argument("--images", help="JSON image list (data/photos.json format, split 'eval' used) or a directory")
    p.add_argument("--skimage", action="store_true", help="add skimage.data astronaut, coffee, chelsea, rocket")
    p.add_argument("--crop", type=int, default=256, help="HR crop side in px, a multiple of 4 (default 256)")
    p.add_argument("--crops-per-image", type=int, default=2, help="crops per image at fixed positions (default 2)")
    p.add_argument("--sets", type=lambda v: parse_names(v, SETS, "--sets"), default=SETS,
                   help=f"LR sets, comma-separated among {', '.join(SETS)} (default both)")
    p.add_argument("--modes", type=lambda v: parse_names(v, MODES, "--modes"),
                   help=f"model modes, comma-separated among {', '.join(MODES)} (default: every mode the model "
                        "dir's streamsr_defaults.json names)")
    p.add_argument("--out", default="out/evaluate", help="report dir (default out/evaluate)")
    g = p.add_argument_group("job settings of every model method (default: JobConfig, then the mode's settings "
                             "in the model dir's streamsr_defaults.json)")
    g.add_argument("--steps", type=int)
    g.add_argument("--sampler", choices=("heun", "euler"))
    g.add_argument("--seed", type=int)
    g.add_argument("--batch", type=parse_batch, metavar="RxC", help="blocks per batch, rows x cols")
    g.add_argument("--anchor", choices=("none", "global", "local"))
    g.add_argument("--sigma-min", type=float)
    g.add_argument("--sigma-max", type=float)
    g.add_argument("--device", help="cpu or cuda")
    g.add_argument("--dtype", choices=("fp32", "bf16"))
    g.add_argument("--backend", choices=("sdpa", "reference", "xformers"))
    p.add_argument("--verbose", action="store_true", help="show streamsr's own log lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from streamsr.weights import DEFAULTS_NAME, read_model_config, read_model_defaults

    if args.crop < SCALE or args.crop % SCALE:
        raise SystemExit(f"evaluate: --crop must be a positive multiple of {SCALE}, got {args.crop}")
    if args.crops_per_image < 1:
        raise SystemExit("evaluate: --crops-per-image must be >= 1")
    model_dir = Path(args.model).resolve()
    try:
        mcfg = read_model_config(model_dir)
        defaults = read_model_defaults(model_dir)
    except BadInput as exc:
        raise SystemExit(f"evaluate: {exc}") from None
    if defaults.modes or defaults.flat:
        print(f"model dir recommends ({model_dir / DEFAULTS_NAME}): {json.dumps(defaults.to_json())}")
    configs = method_configs(args, defaults)
    methods = BASELINES + tuple(configs)
    sets = tuple(args.sets)
    images = list_images(args.images, args.skimage)
    if not images:
        raise SystemExit("evaluate: no images (give --images and/or --skimage)")
    out = Path(args.out)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    print(f"model {model_dir} (block_size {mcfg.block_size}); LR sets {', '.join(sets)}")
    for method, (_, cfg) in configs.items():
        print(f"{method}: job {json.dumps(cfg.to_dict())}")

    results = {s: {"crops": [], "images": []} for s in sets}
    for name, load in images:
        hr_full = load()
        boxes = crop_boxes(hr_full.shape[0], hr_full.shape[1], args.crop, args.crops_per_image)
        if not boxes:
            print(f"{name}: {hr_full.shape[1]}x{hr_full.shape[0]} is too small, skipped")
            continue
        records = {s: [] for s in sets}
        for i, (top, left, side) in enumerate(boxes):
            cid = f"{name}_c{i}"
            hr = np.ascontiguousarray(hr_full[top:top + side, left:left + side])
            save_png(out / "crops" / f"{cid}_hr.png", hr)
            seed = crop_seed(cid)
            for lr_set in sets:
                sid = f"{cid}_{lr_set}"
                t0 = time.perf_counter()
                lr = make_lr(hr, lr_set, seed)
                t1 = time.perf_counter()
                lr_path = out / "crops" / f"{sid}_lr.png"
                save_png(lr_path, lr)
                outputs, seconds, timings = {}, {}, {}
                for method, resample in (("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS)):
                    t = time.perf_counter()
                    outputs[method] = pil_upscale(lr, SCALE, resample)
                    seconds[method] = time.perf_counter() - t
                for method, (_, cfg) in configs.items():
                    img, timing = run_model(lr_path, out / "crops" / f"{sid}_{method}.png", model_dir, cfg,
                                            args.verbose)
                    if img.shape != hr.shape:
                        raise SystemExit(f"evaluate: {method} output {img.shape} != HR crop {hr.shape}")
                    outputs[method], seconds[method], timings[method] = img, timing["wall"], timing
                rec = {"crop": cid, "image": name, "set": lr_set, "box": {"top": top, "left": left, "side": side},
                       "lr_size": [lr.shape[1], lr.shape[0]], "noise_seed": seed if lr_set == "degraded" else None,
                       "degrade_seconds": t1 - t0, "model_timing": timings}
                for method in methods:
                    img = outputs[method]
                    rec[method] = {**quality(hr, img), "detail": detail_measure(img, hr),
                                   "seam": seam_score(img, mcfg.block_size), "seconds": seconds[method]}
                save_png(out / "crops" / f"{sid}_side.png",
                         side_by_side([("HR", hr), ("bicubic", outputs["bicubic"])]
                                      + [(m, outputs[m]) for m in configs]))
                records[lr_set].append(rec)
                results[lr_set]["crops"].append(rec)
                print(f"{sid} ({side}px at {left},{top}): PSNR-Y / detail "
                      + ", ".join(f"{m} {rec[m]['psnr_y']:.2f} / {rec[m]['detail']:.3f}" for m in methods)
                      + "; seam " + ", ".join(f"{m} {rec[m]['seam']:.3f}" for m in configs)
                      + "; " + ", ".join(f"{m} {seconds[m]:.2f}s" for m in configs), flush=True)
        for lr_set in sets:
            results[lr_set]["images"].append({"image": name, "size": [hr_full.shape[1], hr_full.shape[0]],
                                              "crops": len(records[lr_set]),
                                              "metrics": mean_metrics(records[lr_set], methods)})
    if not any(res["crops"] for res in results.values()):
        raise SystemExit("evaluate: every image was too small for a crop")
    points = []
    for lr_set, res in results.items():
        res["mean"] = {m: {k: float(np.mean([im["metrics"][m][k] for im in res["images"]
                                             if math.isfinite(im["metrics"][m][k])] or [float("nan")]))
                           for k in METRICS} for m in methods}
        res["vs_bicubic"] = vs_bicubic(res["mean"], methods)
        points += [{"method": m, "set": lr_set, "detail": res["mean"][m]["detail"], "psnr_y": res["mean"][m]["psnr_y"]}
                   for m in methods]
    n_crops = len(next(iter(results.values()))["crops"])
    n_images = len(next(iter(results.values()))["images"])
    write_plot(out / "plot.png", points,
               title=f"{model_dir.name}: PSNR-Y vs fine detail, mean of {n_crops} crops")
    overrides = {f: getattr(args, f) for f in JOB_FLAGS if getattr(args, f) is not None}
    if args.batch is not None:
        overrides["batch"] = f"{args.batch[0]}x{args.batch[1]}"
    settings = {"model_dir": str(model_dir), "model_config": mcfg.to_dict(), "block_size": mcfg.block_size,
                "model_defaults": defaults.to_json(), "overrides": overrides,
                "methods": {m: {"recommended": rec, "job": cfg.to_dict()} for m, (rec, cfg) in configs.items()},
                "sets": list(sets), "detail_sigma": DETAIL_SIGMA, "noise_sigma": NOISE_SIGMA,
                "jpeg_quality": JPEG_QUALITY, "crop": args.crop, "crops_per_image": args.crops_per_image,
                "crops": n_crops, "images": n_images, "images_arg": args.images, "skimage": args.skimage,
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
                "threads": torch.get_num_threads()}
    printed = write_reports(out, settings, methods, results, points)
    print()
    print(printed)
    print()
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'plot.png'} and the crops under {out / 'crops'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
