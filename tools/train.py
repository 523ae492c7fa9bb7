"""Train a streamsr model from scratch (Inf-DiT's recipe, streamsr/train/) and export a model dir.

    .venv/bin/python tools/train.py --config configs/default-model.json --data data/extract \
        --out runs/default --steps 20000 --batch 8 --crop 256 --threads 2 --time-limit 3600 \
        --export models/default

--data is a directory (every JPEG/PNG under it) or a JSON list file of {"path", "split"} objects (only
split "train" is used; relative paths are relative to the file). --out holds the latest checkpoint
(OUT/checkpoint, replaced atomically) and OUT/log.jsonl. --steps is the total step count: a run with
--resume continues from the checkpoint's step to --steps, drawing exactly the batches an uninterrupted
run would have drawn (the recipe: config, batch, crop, lr, seed, ... comes from the checkpoint; giving a
different value is an error). --time-limit, SIGINT and SIGTERM stop after the current step and write a
checkpoint. --export writes the EMA weights as a model dir at the end (also with --resume and nothing
left to train).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import signal
import sys
import time
from pathlib import Path

import torch

from streamsr.config import ModelConfig
from streamsr.errors import StreamsrError
from streamsr.train.recipe import CropSampler, TrainSettings, list_images
from streamsr.train.trainer import Trainer, bin_labels, find_checkpoint, sigma_bin

RECIPE = ("batch", "crop", "lr", "warmup", "seed", "max_side", "scales", "clean_fraction", "fidelity_fraction",
          "fidelity_sigma", "p_mean", "p_std", "lr_dropout", "ema_decay")  # CLI options that are TrainSettings fields
SCHEDULE = ("decay_start", "decay_end", "seam_weight")  # TrainSettings fields a resumed run may change (future steps)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON of ModelConfig fields (required unless --resume)")
    p.add_argument("--data", help="image directory, or JSON list file with a 'split' field per entry")
    p.add_argument("--out", required=True, help="run dir: OUT/checkpoint and OUT/log.jsonl")
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps to reach")
    p.add_argument("--batch", type=int, help="crops per step (default 8)")
    p.add_argument("--crop", type=int, help="HR crop side in px, a multiple of block_size (default 256)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 2e-4)")
    p.add_argument("--warmup", type=int, help="linear learning-rate warmup steps (default 100)")
    p.add_argument("--seed", type=int, help="init and data/noise stream seed (default 0)")
    p.add_argument("--max-side", dest="max_side", type=int,
                   help="downscale images so their longer side is <= this on load (default 0: keep)")
    p.add_argument("--scales", type=lambda t: tuple(int(v) for v in t.split(",")),
                   help="also load every image with its longer side <= each of these, e.g. 1024,512 (each "
                        "scale gets an equal share of the crops)")
    p.add_argument("--clean-fraction", dest="clean_fraction", type=float,
                   help="share of samples with clean LR: bicubic x4 down + 8-bit only (default 0)")
    p.add_argument("--fidelity-fraction", dest="fidelity_fraction", type=float,
                   help="share of samples trained at --fidelity-sigma, the one-step operating point (default 0)")
    p.add_argument("--fidelity-sigma", dest="fidelity_sigma", type=float, help="sigma of those samples")
    p.add_argument("--p-mean", dest="p_mean", type=float, help="log-normal training sigma: mean of ln sigma (-1.0)")
    p.add_argument("--p-std", dest="p_std", type=float, help="log-normal training sigma: std of ln sigma (1.4)")
    p.add_argument("--lr-dropout", dest="lr_dropout", type=float, help="LR dropout probability (default 0.07)")
    p.add_argument("--ema-decay", dest="ema_decay", type=float, help="EMA decay (default 0.999)")
    p.add_argument("--decay-start", dest="decay_start", type=int,
                   help="cosine learning-rate decay starts at this step (may change on --resume)")
    p.add_argument("--decay-end", dest="decay_end", type=int, help="... and reaches 0 at this step (0: no decay)")
    p.add_argument("--seam-weight", dest="seam_weight", type=float,
                   help="weight of the block-border gradient loss term (default 0: off; may change on --resume)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (bf16 autocast on CUDA)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--time-limit", dest="time_limit", type=float, default=0,
                   help="stop (and checkpoint) before this many seconds have passed (0: none)")
    p.add_argument("--ckpt-every", dest="ckpt_every", type=int, default=1000, help="checkpoint every N steps")
    p.add_argument("--log-every", dest="log_every", type=int, default=50, help="print a log line every N steps")
    p.add_argument("--export", help="write the EMA weights as a model dir here at the end")
    return p.parse_args(argv)


def data_fingerprint(paths) -> str:
    return hashlib.sha256("\n".join(str(Path(p).resolve()) for p in paths).encode()).hexdigest()[:16]


def build_trainer(args, device) -> Trainer:
    ckpt = Path(args.out) / "checkpoint"
    given = {k: getattr(args, k) for k in RECIPE if getattr(args, k) is not None}
    if args.resume:
        trainer = Trainer.from_checkpoint(find_checkpoint(ckpt), device)
        current = trainer.settings.to_dict()
        differ = {k: (current[k], v) for k, v in given.items()
                  if current[k] != (list(v) if isinstance(v, tuple) else v)}
        if differ:
            listed = ", ".join(f"--{k.replace('_', '-')} {v} (checkpoint: {c})" for k, (c, v) in differ.items())
            raise SystemExit(f"--resume continues the checkpoint's recipe; these options differ from it: {listed}")
        if args.config and ModelConfig.from_dict(json.loads(Path(args.config).read_text())) != trainer.cfg:
            raise SystemExit(f"--config {args.config} differs from the checkpoint's model config")
        schedule = {k: getattr(args, k) for k in SCHEDULE if getattr(args, k) is not None}
        if schedule:
            trainer.settings = dataclasses.replace(trainer.settings, **schedule)
        print(f"resumed {ckpt} at step {trainer.step_count}", flush=True)
        return trainer
    if (ckpt / "train_state.json").is_file():
        raise SystemExit(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
    if not args.config:
        raise SystemExit("--config is required (unless --resume)")
    cfg = ModelConfig.from_dict(json.loads(Path(args.config).read_text()))
    given.update({k: getattr(args, k) for k in SCHEDULE if getattr(args, k) is not None})
    return Trainer(cfg, TrainSettings(**given), device)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(args, device)
    s = trainer.settings

    n_model = sum(p.numel() for p in trainer.model.parameters())
    n_enc = sum(p.numel() for p in trainer.encoder.parameters()) if trainer.encoder is not None else 0
    todo = max(0, args.steps - trainer.step_count)
    sampler = None
    if todo:
        data = args.data or trainer.extra.get("data")
        if data is None:
            raise SystemExit("--data is required")
        paths = list_images(data)
        fingerprint = data_fingerprint(paths)
        if args.resume and trainer.extra.get("data_fingerprint") not in (None, fingerprint):
            print("warning: the training image list differs from the checkpoint's; the stream will differ",
                  flush=True)
        trainer.extra = {"data": str(Path(data).resolve()), "data_fingerprint": fingerprint, "images": len(paths),
                         "args": dict(vars(args))}
        t0 = time.monotonic()
        sampler = CropSampler.from_paths(paths, s.crop, s.max_side, s.scales)
        mb = sum(im.nbytes for im in sampler.images) / 2 ** 20
        print(f"data: {len(sampler.images)} images ({mb:.0f} MiB uint8) from {data} in {time.monotonic() - t0:.1f}s"
              + (f", skipped {len(sampler.skipped)} smaller than {s.crop}px" if sampler.skipped else ""), flush=True)
    print(f"model: {n_model / 1e6:.2f}M params + encoder {n_enc / 1e3:.1f}k; batch {s.batch} x {s.crop}px, "
          f"lr {s.lr:g}, device {device}, threads {torch.get_num_threads()}; step {trainer.step_count} -> "
          f"{args.steps}", flush=True)

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    labels = bin_labels()
    window = {"loss": 0.0, "n": 0, "bins": [[0.0, 0] for _ in labels], "t": time.monotonic(), "steps": 0}
    step_times: list[float] = []
    saved_at = trainer.step_count
    reason = "done"
    with open(out / "log.jsonl", "a") as log:
        while trainer.step_count < args.steps:
            if stop["signal"]:
                reason = stop["signal"]
                break
            if args.time_limit:
                typical = sorted(step_times[-20:])[len(step_times[-20:]) // 2] if step_times else 0.0
                if time.monotonic() - start + typical >= args.time_limit:
                    reason = "time limit"
                    break
            t_step = time.monotonic()
            r = trainer.step(sampler)
            step_times.append(time.monotonic() - t_step)
            window["loss"] += r.loss
            window["n"] += 1
            window["steps"] += 1
            for b, value in zip(sigma_bin(r.sigma).tolist(), r.per_sample.tolist()):
                window["bins"][b][0] += value
                window["bins"][b][1] += 1
            if r.step % args.log_every == 0 or r.step == args.steps:
                now = time.monotonic()
                rate = window["steps"] / max(now - window["t"], 1e-9)
                bins = {lab: (tot / n if n else None) for lab, (tot, n) in zip(labels, window["bins"])}
                line = {"step": r.step, "loss": window["loss"] / window["n"], "sigma_bins": bins,
                        "steps_per_s": rate, "lr": trainer.optimizer.param_groups[0]["lr"],
                        "grad_norm": r.grad_norm, "elapsed_s": now - start}
                log.write(json.dumps(line) + "\n")
                log.flush()
                binstr = " ".join(f"{lab}:{v:.4f}" if v is not None else f"{lab}:-" for lab, v in bins.items())
                print(f"step {r.step:>7d}  loss {line['loss']:.4f}  [{binstr}]  {rate:.3f} steps/s  "
                      f"lr {line['lr']:.2e}  gn {r.grad_norm:.3f}", flush=True)
                window = {"loss": 0.0, "n": 0, "bins": [[0.0, 0] for _ in labels], "t": now, "steps": 0}
            if args.ckpt_every and r.step % args.ckpt_every == 0:
                trainer.save_checkpoint(out / "checkpoint")
                saved_at = r.step
    if trainer.step_count != saved_at or not (out / "checkpoint" / "train_state.json").is_file():
        trainer.save_checkpoint(out / "checkpoint")
    print(f"stopped at step {trainer.step_count} ({reason}); checkpoint {out / 'checkpoint'}; "
          f"{time.monotonic() - start:.1f}s", flush=True)
    if args.export:
        trainer.export(args.export)
        print(f"exported EMA weights (step {trainer.step_count}) to {args.export}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StreamsrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
