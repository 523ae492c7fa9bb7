"""Evaluate a streamsr model as a x4 super-resolver: PSNR / SSIM vs bicubic and Lanczos, plus a seam score.

What it does. For every evaluation image (an image list, a directory and/or scikit-image's photographs)
the script takes `--crops-per-image` HR crops of `--crop` x `--crop` pixels at fixed positions (centre
first, then fixed offsets; nothing is downscaled, large images are only cropped) and, for each crop:

1. degrades it to LR: bicubic x4 downsampling with antialias (torch
   `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` on [0, 1] floats), then
   quantised to 8 bits like a real LR file, and writes the LR as a PNG;
2. upscales the LR x4 through `streamsr.upscale.upscale` (the real out-of-core job pipeline: job
   creation, semantic vector, streamed sampling, anchoring, PNG export) with a temporary job dir,
   and reads the output back;
3. makes two baselines from the 8-bit LR: PIL bicubic (Image.BICUBIC) and Lanczos (Image.LANCZOS) x4;
4. scores each of the three against the 8-bit HR crop:
   - PSNR-Y / SSIM-Y on the ITU-R BT.601 luma used in SR papers,
     Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B in [0, 1] (Y in [16, 235], not rounded),
     data range 255;
   - PSNR-RGB / SSIM-RGB on the 8-bit RGB values, data range 255;
   - both with a 4 px border shaved; SSIM is skimage.metrics.structural_similarity with the settings
     of Wang et al. 2004 (Gaussian window sigma 1.5, population covariance), `channel_axis` for RGB;
     PSNR of identical images is capped at 100 dB so that means and JSON stay finite;
   - the seam score: mean |gradient| of the pixel pairs straddling a block border (a multiple of the
     model's block_size, horizontally and vertically) divided by the mean |gradient| of the other
     pixel pairs at the same phase modulo 4 (pairs straddling an LR-pixel boundary, x+1 a multiple
     of 4, but not a block border: an x4 upsampling has larger gradients there at every phase-0
     pair, which are not seams); 1.0 means the block borders are statistically invisible. Reported
     for all three methods (bicubic and Lanczos have no blocks: the sanity reference, ~1.0);
5. saves a side-by-side PNG: HR | bicubic | Lanczos | model, full crops on top and, below, the
   96 x 96 HR px region with the most detail, nearest-upscaled x3 (the region is outlined on the HR).

Job settings (--steps, --sampler, --seed, --batch, --anchor, --sigma-min, --sigma-max, --device,
--dtype, --backend) are passed to JobConfig. Their defaults are JobConfig's, overridden by the model
dir's `streamsr_defaults.json` when present (a JSON object of JobConfig fields, flat or under "job";
"batch" may be "RxC" or [R, C]; it is printed), overridden in turn by what is given on the command line.

Outputs under --out: report.md (settings, per-image + mean table, per-crop table), report.json (the
same numbers per crop, per image and the mean), crops/<crop>_{hr,lr,model}.png and
crops/<crop>_side.png. The table is also printed.

Images: --images is a JSON file in data/photos.json format ({"images": [{"path": ..., "split":
"eval" | "train", ...}]}, only split "eval" is used, relative paths are taken from the JSON file's
directory, then from the current directory) or a directory (its PNG / JPEG / TIFF files, sorted).
--skimage adds astronaut, coffee, chelsea and rocket from skimage.data (bundled with scikit-image,
which this tool needs for SSIM: pip install scikit-image).

Run from the repository root:

    .venv/bin/python tools/evaluate.py --model MODEL_DIR --skimage --out out/eval
    .venv/bin/python tools/evaluate.py --model MODEL_DIR --images data/photos.json --crop 256 \\
        --crops-per-image 2 --steps 20 --batch 2x2 --device cuda --out out/eval_photos
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: import the streamsr beside this file
    sys.path.insert(0, str(REPO))

from streamsr.config import JobConfig  # noqa: E402

SCALE = 4
SHAVE = 4  # border pixels left out of PSNR / SSIM, as in SR papers (= the scale)
PSNR_CAP = 100.0  # dB, the PSNR of identical images
DEFAULTS_NAME = "streamsr_defaults.json"
SKIMAGE_NAMES = ("astronaut", "coffee", "chelsea", "rocket")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
METHODS = ("bicubic", "lanczos", "model")
METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "seam", "seconds")
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


# ----------------------------------------------------------------------------- inputs and settings


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "image"


def list_images(images: str | None, use_skimage: bool) -> list[tuple[str, object]]:
    """[(name, loader)] where loader() returns the image as uint8 RGB (H, W, 3)."""
    from streamsr.imageio import read_image

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
    from streamsr.planner import BatchShape

    if isinstance(value, str):
        shape = BatchShape.parse(value)
        return shape.rows, shape.cols
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    rows, cols = value
    return int(rows), int(cols)


def read_model_defaults(model_dir: Path) -> tuple[dict, list[str]]:
    """JobConfig fields recommended by the model dir's streamsr_defaults.json ({} if absent), and
    the keys that were ignored."""
    path = model_dir / DEFAULTS_NAME
    if not path.is_file():
        return {}, []
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise SystemExit(f"evaluate: {path} is not a JSON object")
    if isinstance(data.get("job"), dict):
        data = data["job"]
    fields = {f.name for f in dataclasses.fields(JobConfig)}
    out, ignored = {}, []
    for key, value in data.items():
        k = key.replace("-", "_")
        if k == "batch":
            out["batch_rows"], out["batch_cols"] = parse_batch(value)
        elif k in fields:
            out[k] = value
        else:
            ignored.append(key)
    return out, ignored


def job_config(args: argparse.Namespace, defaults: dict) -> JobConfig:
    """JobConfig defaults < model dir defaults < explicit command-line values."""
    values = JobConfig().to_dict()
    values.update(defaults)
    for flag, field in JOB_FLAGS.items():
        if getattr(args, flag) is not None:
            values[field] = getattr(args, flag)
    if args.batch is not None:
        values["batch_rows"], values["batch_cols"] = args.batch
    return JobConfig.from_dict(values)


# ----------------------------------------------------------------------------- the model run


def run_model(lr_path: Path, out_path: Path, model_dir: Path, cfg: JobConfig, verbose: bool) -> tuple[np.ndarray, dict]:
    """Upscale an LR PNG through the real job pipeline (temporary job dir); (uint8 RGB output, timings)."""
    from streamsr.imageio import read_image
    from streamsr.store import read_manifest
    from streamsr.upscale import upscale

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
        seconds = read_manifest(job).get("seconds", {})
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
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def mean_metrics(records: list[dict]) -> dict:
    """Per method, the mean of every metric over `records` (NaNs left out)."""
    out = {}
    for method in METHODS:
        out[method] = {}
        for m in METRICS:
            vals = [r[method][m] for r in records if r[method].get(m) is not None and math.isfinite(r[method][m])]
            out[method][m] = float(np.mean(vals)) if vals else float("nan")
    return out


def _fmt(value: float, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table: one line per (row name, method)."""
    lines = ["| image | method | PSNR-Y | SSIM-Y | PSNR-RGB | SSIM-RGB | seam | s/crop |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, res in rows:
        for method in METHODS:
            r = res[method]
            lines.append(f"| {name} | {method} | {_fmt(r['psnr_y'], 2)} | {_fmt(r['ssim_y'], 4)} | "
                         f"{_fmt(r['psnr_rgb'], 2)} | {_fmt(r['ssim_rgb'], 4)} | {_fmt(r['seam'], 3)} | "
                         f"{_fmt(r['seconds'], 2)} |")
    return "\n".join(lines)


def write_reports(out: Path, settings: dict, crops: list[dict], images: list[dict], mean: dict) -> str:
    summary = table([(im["image"], im["metrics"]) for im in images] + [("**mean**", mean)])
    per_crop = table([(c["crop"], c) for c in crops])
    job = settings["job"]
    md = [
        "# streamsr x4 evaluation", "",
        f"- model: `{settings['model_dir']}` (block_size {settings['block_size']} HR px)",
        f"- job settings: steps {job['steps']} {job['sampler']}, seed {job['seed']}, batch "
        f"{job['batch_rows']}x{job['batch_cols']}, anchor {job['anchor']}, sigma {job['sigma_min']}..{job['sigma_max']}, "
        f"rho {job['rho']}, {job['device']} {job['dtype']} {job['backend']}"
        + (f" (model dir defaults from {DEFAULTS_NAME}: {json.dumps(settings['model_defaults'])})"
           if settings["model_defaults"] else ""),
        f"- crops: {settings['crop']} px HR, up to {settings['crops_per_image']} per image (centre first), "
        f"{len(crops)} crops from {len(images)} images",
        "- LR: antialiased bicubic x4 downsampling (torch, [0, 1] floats), quantised to 8 bits",
        f"- metrics vs the 8-bit HR crop, {SHAVE} px border shaved: PSNR / SSIM on BT.601 Y "
        "(16 + 65.481 R + 128.553 G + 24.966 B, R,G,B in [0,1]) and on RGB, data range 255; SSIM with a "
        f"Gaussian window (sigma 1.5); PSNR capped at {PSNR_CAP:g} dB",
        "- seam: mean |gradient| across block borders / across the other LR-pixel boundaries (x+1 a multiple "
        "of 4) inside blocks (1.0 = invisible); s/crop: wall seconds "
        "(model: the whole upscale() call incl. job creation and model load)",
        f"- date: {settings['date']}, torch {settings['torch']}, threads {settings['threads']}", "",
        "## Per image (mean over its crops) and overall mean", "", summary, "",
        "## Per crop", "", per_crop, "",
        "Side-by-side images (HR | bicubic | Lanczos | model, detail region x3 below): "
        + ", ".join(f"`crops/{c['crop']}_side.png`" for c in crops), "",
    ]
    (out / "report.md").write_text("\n".join(md))
    report = {"settings": settings, "crops": crops, "images": images, "mean": mean}
    (out / "report.json").write_text(json.dumps(_clean(report), indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="streamsr model dir (config.json + safetensors)")
    p.add_argument("--images", help="JSON image list (data/photos.json format, split 'eval' used) or a directory")
    p.add_argument("--skimage", action="store_true", help="add skimage.data astronaut, coffee, chelsea, rocket")
    p.add_argument("--crop", type=int, default=256, help="HR crop side in px, a multiple of 4 (default 256)")
    p.add_argument("--crops-per-image", type=int, default=2, help="crops per image at fixed positions (default 2)")
    p.add_argument("--out", default="out/evaluate", help="report dir (default out/evaluate)")
    g = p.add_argument_group("job settings (default: JobConfig, then the model dir's streamsr_defaults.json)")
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
    from streamsr.weights import read_model_config

    if args.crop < SCALE or args.crop % SCALE:
        raise SystemExit(f"evaluate: --crop must be a positive multiple of {SCALE}, got {args.crop}")
    if args.crops_per_image < 1:
        raise SystemExit("evaluate: --crops-per-image must be >= 1")
    model_dir = Path(args.model).resolve()
    mcfg = read_model_config(model_dir)
    defaults, ignored = read_model_defaults(model_dir)
    if defaults or ignored:
        print(f"model dir defaults ({model_dir / DEFAULTS_NAME}): {json.dumps(defaults)}"
              + (f"; ignored keys: {', '.join(ignored)}" if ignored else ""))
    cfg = job_config(args, defaults)
    images = list_images(args.images, args.skimage)
    if not images:
        raise SystemExit("evaluate: no images (give --images and/or --skimage)")
    out = Path(args.out)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    print(f"model {model_dir} (block_size {mcfg.block_size}); job {json.dumps(cfg.to_dict())}")

    crops: list[dict] = []
    per_image: list[dict] = []
    for name, load in images:
        hr_full = load()
        boxes = crop_boxes(hr_full.shape[0], hr_full.shape[1], args.crop, args.crops_per_image)
        if not boxes:
            print(f"{name}: {hr_full.shape[1]}x{hr_full.shape[0]} is too small, skipped")
            continue
        records = []
        for i, (top, left, side) in enumerate(boxes):
            cid = f"{name}_c{i}"
            hr = np.ascontiguousarray(hr_full[top:top + side, left:left + side])
            t0 = time.perf_counter()
            lr = degrade(hr)
            save_png(out / "crops" / f"{cid}_hr.png", hr)
            save_png(out / "crops" / f"{cid}_lr.png", lr)
            t1 = time.perf_counter()
            bic = pil_upscale(lr, SCALE, Image.BICUBIC)
            t2 = time.perf_counter()
            lan = pil_upscale(lr, SCALE, Image.LANCZOS)
            t3 = time.perf_counter()
            model, timing = run_model(out / "crops" / f"{cid}_lr.png", out / "crops" / f"{cid}_model.png",
                                      model_dir, cfg, args.verbose)
            if model.shape != hr.shape:
                raise SystemExit(f"evaluate: model output {model.shape} != HR crop {hr.shape}")
            rec = {"crop": cid, "image": name, "box": {"top": top, "left": left, "side": side},
                   "lr_size": [lr.shape[1], lr.shape[0]], "degrade_seconds": t1 - t0, "model_timing": timing}
            for method, img, secs in (("bicubic", bic, t2 - t1), ("lanczos", lan, t3 - t2),
                                      ("model", model, timing["wall"])):
                rec[method] = {**quality(hr, img), "seam": seam_score(img, mcfg.block_size), "seconds": secs}
            save_png(out / "crops" / f"{cid}_side.png",
                     side_by_side([("HR", hr), ("bicubic", bic), ("Lanczos", lan), ("model", model)]))
            records.append(rec)
            crops.append(rec)
            print(f"{cid} ({side}px at {left},{top}): PSNR-Y bicubic {rec['bicubic']['psnr_y']:.2f} "
                  f"lanczos {rec['lanczos']['psnr_y']:.2f} model {rec['model']['psnr_y']:.2f}, "
                  f"seam {rec['model']['seam']:.3f}, model {timing['wall']:.2f}s", flush=True)
        per_image.append({"image": name, "size": [hr_full.shape[1], hr_full.shape[0]], "crops": len(records),
                          "metrics": mean_metrics(records)})
    if not crops:
        raise SystemExit("evaluate: every image was too small for a crop")
    mean = {m: {k: float(np.mean([im["metrics"][m][k] for im in per_image
                                  if math.isfinite(im["metrics"][m][k])] or [float("nan")]))
                for k in METRICS} for m in METHODS}
    settings = {"model_dir": str(model_dir), "model_config": mcfg.to_dict(), "block_size": mcfg.block_size,
                "model_defaults": defaults, "job": cfg.to_dict(), "crop": args.crop,
                "crops_per_image": args.crops_per_image, "images_arg": args.images, "skimage": args.skimage,
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
                "threads": torch.get_num_threads()}
    main_table = write_reports(out, settings, crops, per_image, mean)
    print()
    print(main_table)
    print()
    print(f"wrote {out / 'report.md'}, {out / 'report.json'} and {len(crops)} x 4 PNGs under {out / 'crops'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
