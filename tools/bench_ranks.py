"""Benchmark several ranks (issue 12) on this machine, and the store traffic of fused sweeps.

speed: the same upscale (the shipped model, a synthetic LR image, Euler, >= 4 sweeps) run by 1 rank of
  1 thread (`OMP_NUM_THREADS=1 streamsr upscale`) and by N ranks of 1 thread each (`torchrun
  --nproc-per-node N`); prints each command's wall time (start-up included: importing torch, the job's
  creation and export) and the speed-up, and checks that the outputs are the same bytes.
traffic: one process, in-process runs of the same job with the planner's fused depth F and with F = 1
  (one steps sweep per sampler step); counts the blocks the task loop reads from and writes to the state
  arrays (ShardReader.region, ShardWriter) per block evaluation.

Measured (2026-12-01, this 2-core AMD EPYC VM, no GPU; the training run paused with SIGSTOP, nothing
else running; the shipped model, 64 px blocks):

    speed --lr 384 --steps 4 (planner's batch)           1 rank 73.6 s, 2 ranks 49.2 s: 1.50x
    speed --lr 512 --steps 4 (batch 2x32)                1 rank 109.3 s, 2 ranks 74.4 s: 1.47x
    speed --lr 512 --steps 8 --batch 1x32 (F = 4/rank)   1 rank 214.4 s, 2 ranks 131.7 s: 1.63x
    speed --lr 512 --steps 8 --batch 1x32 (F = 1/rank)   1 rank 221.6 s, 2 ranks 135.3 s: 1.64x
    (outputs identical in every run)

Where the rest goes (the last run): a rank's model evaluation costs 28.2 ms against 25.9 ms when one
process has the machine (two compute threads share the two cores with each other's I/O threads: ~9%);
torchrun starts its agent (importing torch) before the ranks, 11.0 s of wall outside the job against
6.4 s for one process; rank 0 waits 4.0 s in all for rank 1 (pipeline fill, drain and jitter). The
issue's 1.7x is not reached on this machine (best 1.64x); the job's own seconds give 215.2 / 124.3 = 1.73x.

A session later (same machine, training paused, nothing else running; after the engine-path work of
issue 11): `speed --lr 512 --steps 8 --batch 1x32`: 1 rank 219.9 s, 2 ranks 135.8 s: 1.62x (job seconds
207.9 / 127.0 = 1.64x; rank 0 waited 8.8 s for rank 1, and its evaluations cost 27.5 ms against 24.7 ms
alone). Tried and not kept: each CPU rank pinned to its share of the cores (sched_setaffinity by local
rank): 139.2 s, no faster. That run's PNG bytes differed from the single process's with the same pixels:
the PNG writer cut its IDAT chunks where the deflate threads happened to be (1 thread on a pinned rank, 2
otherwise); fixed in io/png.py, so this script's byte comparison holds whatever the cores.

A third session (same machine; the training run paused with SIGSTOP, nothing else running), the same job
(LR 512, Euler 8 steps) at four batch shapes, one run each unless two are given:

    batch 8x8 (the planner's)   1 rank 211.7 s, 2 ranks 133.8 s: 1.58x (ranks fuse 1 step per sweep;
                                rank 0's evaluations 27.2 ms against 24.5 ms alone, waited 5.6 s)
    batch 1x32                  1 rank 219.9 s, 2 ranks 135.8 s: 1.62x (the session before)
    batch 1x16                  1 rank 224.9 / 223.6 s, 2 ranks 128.0 / 125.4 s: 1.76x / 1.78x (2 steps per sweep)
    batch 4x4                   1 rank 208.6 s, 2 ranks 116.4 s: 1.79x (2 steps per sweep; rank 0's evaluations
                                24.5 ms against 23.9 ms alone, waited 1.8 s)
    (outputs identical in every run)

With 16-block batches the two ranks barely slow each other (2-3% per evaluation, against 11% with 64-block
batches, whose activations are four times larger) and the pipeline's lag is a smaller batch; 4x4 is also
the fastest single-process batch here. The best 2-rank time against the best 1-rank time: 208.6 / 116.4 =
1.79x. The planner still picks 8x8 for this job (it does not model two CPU ranks sharing the caches and
memory bandwidth), so a CPU rank group gains most with --batch 4x4.

    traffic --lr 192 --steps 4 (euler)   fuse 4: 0 state reads and 1 write per block (x_T is computed);
                                         fuse 1: 3 reads and 4 writes per block: writes / 4, reads / inf
    traffic --lr 192 --steps 4 (heun)    same counts for 7 evaluations per block

Run (repository root; pause anything else that uses the cores):
    .venv/bin/python -m tools.bench_ranks speed --lr 384 --steps 4 --ranks 2
    .venv/bin/python -m tools.bench_ranks speed --lr 512 --steps 8 --batch 4x4    # issue 12's 1.7x check
    .venv/bin/python -m tools.bench_ranks traffic --lr 192 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_image(path: Path, size: int, seed: int = 0) -> None:
    """A smooth image with some texture (what the model sees of a photo, roughly)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(4 * (x + y))], axis=-1)  # (H, W, 3)
    img = (base * 0.35 + 0.5 + rng.normal(0, 0.05, base.shape)).clip(0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - start


def speed(args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-ranks-") as tmp:
        root = Path(tmp)
        synthetic_image(root / "in.png", args.lr)
        job = ["--steps", str(args.steps), "--sampler", args.sampler, "--seed", "1", "-q",
               *(["--batch", args.batch] if args.batch else [])]
        one = [sys.executable, "-m", "streamsr", "upscale", str(root / "in.png"), "-o", str(root / "one.png"),
               "--job", str(root / "job-one"), *job]
        many = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.ranks),
                "-m", "streamsr", "upscale", str(root / "in.png"), "-o", str(root / "many.png"),
                "--job", str(root / "job-many"), *job]
        t1 = timed(one, env)
        tn = timed(many, env)
        same = (root / "one.png").read_bytes() == (root / "many.png").read_bytes()
        m1 = json.loads((root / "job-one" / "job.json").read_text())
        mn = json.loads((root / "job-many" / "job.json").read_text())
        print(f"LR {args.lr}^2, {args.sampler} {args.steps} steps, shipped model, {m1['model_blocks_done']} block evaluations")
        print(f"1 rank  x 1 thread: {t1:7.1f} s wall   (fused {m1['fuse_steps']} step(s) per sweep, "
              f"{len(m1['sigmas']) - 1} steps)")
        print(f"{args.ranks} ranks x 1 thread: {tn:7.1f} s wall   ({mn['fuse_steps']} step(s) per sweep, "
              f"rank 0's model seconds {mn['seconds'].get('model', 0):.1f})")
        print(f"speed-up {t1 / tn:.2f}x; outputs {'identical' if same else 'DIFFER'}")
        for label, m in (("1 rank", m1), ("rank 0 of N", mn)):
            secs = m["seconds"]
            print(f"  {label}: job seconds {secs.get('total', 0):.1f} (model {secs.get('model', 0):.1f}, finalize "
                  f"{secs.get('finalize', 0):.1f}, wait {secs.get('wait', 0):.1f}); batch {m['job']['batch_rows']}x"
                  f"{m['job']['batch_cols']}")


def traffic(args) -> None:
    import torch

    from streamsr.cli import main
    from streamsr.jobs import shards
    from streamsr.jobs.store import read_manifest
    from streamsr.stream import ranks

    torch.set_num_threads(1)
    counts = {"read": 0, "write": 0}
    region, take = shards.ShardReader.region, shards.ShardWriter._take

    def counted_region(self, name, y0, y1, x0, x1):
        if name.startswith("state") or name in ("pred", "deriv"):
            counts["read"] += (y1 - y0) * (x1 - x0)
        return region(self, name, y0, y1, x0, x1)

    def counted_take(self, task, item):
        if item.name.startswith("state") or item.name in ("pred", "deriv"):
            y0, y1, x0, x1 = item.box
            counts["write"] += (y1 - y0) * (x1 - x0)
        return take(self, task, item)

    shards.ShardReader.region, shards.ShardWriter._take = counted_region, counted_take
    with tempfile.TemporaryDirectory(prefix="bench-traffic-") as tmp:
        root = Path(tmp)
        synthetic_image(root / "in.png", args.lr)
        for label, fuse in (("planner's F", None), ("F = 1", 1)):
            counts.update(read=0, write=0)
            original = ranks.rank_fuse
            if fuse is not None:
                ranks.rank_fuse = lambda f, **_: 1  # what rank_split picks the steps per sweep with
            try:
                job = root / f"job-{fuse}"
                assert main(["upscale", str(root / "in.png"), "-o", str(root / f"out-{fuse}.png"), "--job", str(job),
                             "--steps", str(args.steps), "--sampler", args.sampler, "-q"]) == 0
            finally:
                ranks.rank_fuse = original
            m = read_manifest(job)
            pixels = m.geometry.hr_padded[0] * m.geometry.hr_padded[1]
            evals = m.model_blocks_done / (m.geometry.grid.rows * m.geometry.grid.cols)
            print(f"{label:12s} fuse {m.fuse_steps}: per block, {counts['read'] / pixels:.2f} state reads and "
                  f"{counts['write'] / pixels:.2f} state writes for {evals:.0f} evaluations "
                  f"({counts['read'] / pixels / evals:.3f} / {counts['write'] / pixels / evals:.3f} per evaluation)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("speed", "traffic"):
        q = sub.add_parser(name)
        q.add_argument("--lr", type=int, default=384, help="LR side in px")
        q.add_argument("--steps", type=int, default=4)
        q.add_argument("--sampler", default="euler")
        q.add_argument("--ranks", type=int, default=2)
        q.add_argument("--batch", help="RxC block batch for every run (default: the planner's)")
    args = p.parse_args()
    speed(args) if args.what == "speed" else traffic(args)


if __name__ == "__main__":
    main()
