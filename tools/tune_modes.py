"""Choose a model's fidelity and detail settings on a validation split of the *training* photos.

The held-out photos of tools/evaluate.py are for reporting only; settings are chosen here, on photos
that the training run never sampled (split "val" of a photos JSON, e.g. data/photos_trainval.json),
loaded exactly as training loads them (longer side <= --max-side, Lanczos). For each candidate schedule
and each LR set of evaluate.py (clean bicubic x4, and degraded: + noise + JPEG q75), the model samples
every crop in memory (streamsr.sample, full-image mode: equal to the streamed job to fp32 round-off,
without anchoring), and the tool prints mean PSNR-Y, SSIM-Y and the detail measure (evaluate.py's
definitions) next to bicubic's.

A candidate is SAMPLER:STEPS:SIGMA_MAX[:SIGMA_MIN], e.g. euler:1:1.0 (one step from sigma 1: the
MMSE-like estimate), euler:1:1.0:0.5:up (the same from x_T = up(LR), no noise), or heun:3:0.15:0.01.

    .venv/bin/python -m tools.tune_modes --model runs/res1/model --images data/photos_trainval.json \
        --candidates euler:1:1.0 euler:1:2.0 heun:2:0.1 heun:3:0.2:0.01 --out out/tune.json
    .venv/bin/python -m tools.tune_modes --checkpoint runs/res1/checkpoint ...   # EMA weights of a run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so that --help does not load torch
    import numpy as np
    import torch


@dataclass(frozen=True)
class Candidate:
    sampler: str
    steps: int
    sigma_max: float
    sigma_min: float
    noise_init: bool = True  # False ("up" suffix): x_T = up(LR), the deterministic fidelity point

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        parts = text.split(":")
        noise_init = parts[-1] != "up"
        if not noise_init:
            parts = parts[:-1]
        if len(parts) not in (3, 4) or parts[0] not in ("euler", "heun"):
            raise argparse.ArgumentTypeError(f"candidate must be SAMPLER:STEPS:SIGMA_MAX[:SIGMA_MIN][:up], "
                                             f"got {text!r}")
        sigma_max = float(parts[2])
        sigma_min = float(parts[3]) if len(parts) == 4 else sigma_max / 2
        return cls(parts[0], int(parts[1]), sigma_max, sigma_min, noise_init)

    def settings(self) -> dict:
        """The JobConfig fields of this candidate (what a model dir's mode records)."""
        return {"sampler": self.sampler, "steps": self.steps, "sigma_max": self.sigma_max,
                "sigma_min": self.sigma_min, "noise_init": self.noise_init}

    def __str__(self) -> str:
        return f"{self.sampler}:{self.steps}:{self.sigma_max:g}:{self.sigma_min:g}" + ("" if self.noise_init else ":up")


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W) float32 in [-1, 1]."""
    import torch

    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> uint8 (H, W, 3), as the job's export quantises."""
    import torch

    return ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def validation_crops(images: str, crop: int, per_image: int, max_side: int) -> list[tuple[str, np.ndarray]]:
    from streamsr.train.trainer import load_image
    from tools.evaluate import crop_boxes

    data = json.loads(Path(images).read_text())
    entries = data["images"] if isinstance(data, dict) else data
    out = []
    for entry in entries:
        if entry.get("split") != "val":
            continue
        path = Path(entry["path"])
        path = path if path.is_absolute() else Path(images).parent / path
        img = load_image(path, max_side)
        for top, left, side in crop_boxes(img.shape[0], img.shape[1], crop, per_image):
            out.append((f"{entry.get('name', path.stem)}@{top},{left}", img[top:top + side, left:left + side]))
    if not out:
        raise SystemExit(f"no split 'val' images in {images}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model dir")
    src.add_argument("--checkpoint", help="training checkpoint dir (its EMA weights are used)")
    p.add_argument("--images", required=True, help="photos JSON with split 'val' entries")
    p.add_argument("--candidates", nargs="+", type=Candidate.parse, required=True)
    p.add_argument("--crop", type=int, default=192, help="HR crop side (a multiple of the block size)")
    p.add_argument("--crops-per-image", type=int, default=3)
    p.add_argument("--max-side", type=int, default=2048, help="as the training run loaded its images")
    p.add_argument("--sets", help="comma list of LR sets (default: all of tools.evaluate.SETS)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", help="write the table as JSON here")
    args = p.parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    import streamsr
    from streamsr.semantic import semantic_vector
    from streamsr.train.trainer import Trainer
    from tools.evaluate import SETS, crop_seed, detail_measure, make_lr, pil_upscale, quality

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    model_dir = args.model
    if args.checkpoint:
        tmp = tempfile.TemporaryDirectory()
        model_dir = Trainer.from_checkpoint(args.checkpoint).export(Path(tmp.name) / "model")
    model = streamsr.load_model(model_dir)
    crops = validation_crops(args.images, args.crop, args.crops_per_image, args.max_side)
    print(f"{len(crops)} validation crops of {args.crop} px; model {model_dir}", flush=True)
    rows = []
    for lr_set in args.sets.split(",") if args.sets else SETS:
        scores: dict[str, list[dict]] = {"bicubic": []}
        for name, hr in crops:
            lr8 = make_lr(hr, lr_set, crop_seed(name))
            scores["bicubic"].append({**quality(hr, pil_upscale(lr8, 4, Image.BICUBIC)),
                                      "detail": detail_measure(pil_upscale(lr8, 4, Image.BICUBIC), hr)})
            lr = to_tensor(lr8)
            vector = semantic_vector(model_dir, model.cfg.vector_dim, lr)
            for cand in args.candidates:
                t0 = time.monotonic()
                with torch.no_grad():
                    out = streamsr.sample(model, lr, vector=vector, seed=0, mode="full", **cand.settings())
                sr = to_uint8(out)
                scores.setdefault(str(cand), []).append({**quality(hr, sr), "detail": detail_measure(sr, hr),
                                                         "seconds": time.monotonic() - t0})
        base = np.mean([s["psnr_y"] for s in scores["bicubic"]])
        for method, recs in scores.items():
            mean = {k: float(np.mean([r[k] for r in recs])) for k in ("psnr_y", "ssim_y", "detail")}
            worst = float(min(r["psnr_y"] - b["psnr_y"] for r, b in zip(recs, scores["bicubic"])))
            rows.append({"set": lr_set, "method": method, **mean, "d_psnr_y": mean["psnr_y"] - base,
                         "worst_crop_d_psnr_y": worst})
            print(f"{lr_set:9s} {method:24s} PSNR-Y {mean['psnr_y']:6.2f} ({mean['psnr_y'] - base:+.2f}, worst "
                  f"crop {worst:+.2f})  SSIM-Y {mean['ssim_y']:.4f}  detail {mean['detail']:.3f}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"crops": len(crops), "crop": args.crop, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
