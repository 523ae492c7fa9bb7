"""Benchmark the engine's own cost per block evaluation: everything a job does around the model.

    engine overhead = (sampler wall - model seconds) / block evaluations

measured on whole `streamsr upscale` jobs, each in a fresh child process (peak RSS by wait4):

- sampler wall: the job's task loop (`seconds.total` of job.json) minus its finalize part (stats, anchor,
  export: `seconds.finalize`, one-time work that does not grow with the steps); a job of an older
  version without that key counts all of it;
- model seconds: `seconds.model`, the network and its K/V frontier (denoise_batch);
- block evaluations: `model_blocks_done`.

It also prints the difference method of issue 11, (wall at LR N - wall at LR 128) / (blocks at N - blocks
at 128), which counts everything (start-up, creation, export) that grows with the image; block-evals/s
(of the sampler wall); the split of the seconds the job recorded (model, read, lr = the LR halo read +
upsample + windows, write, commit, wait = the main thread waiting for the I/O thread, other); the
files in the job's store; and the peak RSS.

Models:
  zero128  near-zero cost: 128 px blocks, patch 16, hidden 8, 1 layer, 1 head (random weights)
  zero64   near-zero cost: 64 px blocks, patch 8, hidden 8, 1 layer, 1 head
  shipped  the model shipped in streamsr/models/default (its own 64 px blocks)
Cases: SAMPLER:STEPS (euler:1 is one block evaluation per block).

Measured after the engine-path work (2026-12-01, this 2-core CPU, no GPU; training paused with SIGSTOP, no
other job or test running, load average 1.2-1.8 from before the pause; HEAD before the change and after run
alternately, 3 runs each (2 for shipped), median [range]; `--reference-lr 0`, auto batch: 2x32 for zero128):

    model    case     LR    before            after, anchor in the     after (anchor timed as finalize,
                                              sampler wall (as before)  as this docstring always said)
    zero128  euler:1  1024  221 [214-227]/s   291 [260-351]/s           394 [388-446]/s, overhead 1.29 ms
                            overhead 2.07 ms                            [0.82-1.35] (model 1.19-1.42 ms)
    zero64   euler:1  1024  586 [564-609]/s   769 [721-787]/s           1248 [1235-1404]/s, 0.15 ms
    shipped  euler:1   512  52/s, 1.1-1.3 ms  61-65/s, 0.73 ms          58-59/s, 0.31-0.33 ms (model 15-17 ms)

What changed: freed memory is kept for reuse during a run (up to 512 MiB, less under --ram: jobs/pipeline.py;
before, every commit gave it back and every batch faulted its tensors in again, 4 KiB pages: a third of the
job's CPU time was system time); the device K/V frontier is two slot tensors, so a batch's kept blocks go in
and its reads come out with one indexed copy per layer (stream/slots.py DeviceSlots; 543 -> 247 torch calls per
2x32 batch on the compute thread for zero128, 1702 -> 509 for shipped); the LR windows are strided views of
one canvas (527 -> 96 calls per batch on the I/O thread); preconditioning in place; the final linear in
pixel-major order (the unpatchify copies runs of p pixels); a write that is one whole shard goes out without
the shard buffer. The anchor tasks were in the sampler wall although the definition above puts them in
finalize; they are now timed as finalize (~0.9 ms per 128-px output block at euler:1, once per job). Still
short of 500/s for zero128 euler:1: the steps sweep is CPU-bound on both cores (the I/O thread draws x_T's
noise, 64 per-block randn calls, ~0.5 ms per block, and upsamples the LR, ~0.3; zarr writes ~0.5), the main
thread waits 0.6-1.1 ms per eval for it. Peak RSS at batch 8x8: 1238 MiB at LR 1024, 1289 at LR 2048 (before:
1186, 1219): flat with size, ~50 MiB above HEAD (the kept memory). The `write` column also holds the export.

Re-applied a session later (2026-12-01, evening; training paused with SIGSTOP, nothing else running;
`--models zero128 --cases euler:1 --lr 1024 --reference-lr 0`), with the heap kept between batches bounded
by the memory plan (its host part `heap_reuse`: what one batch allocates and frees on the host, at most
128 MiB, within --ram; stream/memory.with_heap_reuse), and the planner ranking batch shapes by the reads
they gather as well (of two shapes with as many batches, the squarer one):

    batch           evals/s    overhead ms/eval   peak RSS MiB   plan's host MiB
    8x8, 128 MiB    411, 442   1.04, 1.02         1185, 1189     1345
    8x8, 512 MiB    424, 420   1.07, 1.01         1194, 1183     1594  (keeping more buys nothing)
    2x32 (the old   319, 301   1.28, 1.20         1108, 1139     1345
    auto choice)
    (with 512 MiB kept and the heap not in the plan, last session: 1273 MiB against a plan of 1217)

The planner now picks 8x8 for this job: auto batch, LR 1024 -> 2048: 422 -> 437 evals/s, overhead 1.10 ->
1.05 ms/eval, peak RSS 1095 -> 1161 MiB (the wider frontier; plan 1345 MiB both), 43 -> 143 files. Still short of 500/s: the main thread spends ~1.3 ms per eval in
the model and waits ~0.7 ms for the I/O thread, which draws x_T's noise (~0.7 ms per 128-px block: torch's
CPU randn itself, 15 ns a sample; the generator is part of the noise contract, so it stays) and writes.

Measured (2026-12-01, this 2-core CPU, no GPU; training paused with SIGSTOP, nothing else running;
`--models zero128,zero64 --cases euler:1,euler:4,heun:2 --lr 1024`, auto batch 8x8 / 8x16):

    model    case     evals/s  overhead ms/eval  (before issue 11: euler:1)   files at LR 1024
    zero128  euler:1    330      1.52              28 evals/s, 33.4 ms          43   (was 4,103)
    zero128  euler:4    394      0.80  (per-sweep layout; fused, 4 steps a sweep: 475, 0.91 *)
    zero128  heun:2     339      1.15  (per-sweep layout; fused, 2 steps a sweep: 470, 0.91 *)
    zero64   euler:1   1152      0.26              63 evals/s, 12.9 ms          143  (was 16,391)
    zero64   euler:4   1261      0.13
    zero64   heun:2    1174      0.20
    shipped  euler:1     77      0.26  (model 12.8 ms/eval: the engine is 2% of the job)
    shipped  heun:2      61      0.17

(*: measured later, while two other processes shared the cores: load average 3.3.)
With crc32c checksums on every chunk and checked reads (issue 14), measured quietly at the end of the
session: zero128 euler:1 292 evals/s, overhead 1.67 ms/eval; zero64 euler:1 879 evals/s, 0.54 ms/eval
(the disk writes vary run to run on this VM: 0.35-1.1 ms per 128-px block for whole-shard writes). In the fused layout
`read` also holds the drawing of x_T's noise, which the first steps sweep does instead of reading x_T.

The difference method, (wall at LR 1024 - wall at LR 128) / 1008 - model ms, gives 2.69 ms for zero128
euler:1 (32.5 before): it also counts the job's creation and export, which grow with the image. The
near-zero model itself costs ~1.4 ms per 128-px block evaluation here, so euler:1 runs at 330 evals/s, not
the 500 that a free model would allow. At LR 2048 (8192^2 output, 128-px blocks) a job's store holds 143
files (euler:1) / 335 (heun:2, per-sweep layout), and the peak RSS is flat with size at a fixed batch
(1228 MiB at LR 1024, 1243 at LR 2048, batch 8x8; 919 MiB at 1x1).

Backend choice (whole-shard writes of 32 128-px fp32 blocks and single-block reads, uncompressed;
/tmp/zb.py-style micro-benchmark, quiet machine): zarr-python 3.1.6 writes 1.13-1.22 ms per block and reads
0.33-0.41 ms per block in whole-shard reads (1.3-2.0 ms for a one-block read of a sharded array); with the
`zarrs` 0.2.3 codec pipeline 0.42 ms and 0.26 ms (0.66 ms one-block). tensorstore 0.1.86 was not adopted:
its async API would need a second I/O model, and its measured per-chunk write (0.59 ms with file_io_sync
off, ECOSYSTEM.md) is no better than zarrs'. streamsr uses zarrs when it is installed (a dependency), and
zarr-python's own pipeline otherwise; the files are the same zarr v3.

Run (repository root; pause anything else that uses the cores, and say so next to the figures):

    .venv/bin/python -m tools.bench_engine --models zero128,zero64 --cases euler:1,euler:4,heun:2 --lr 1024
    .venv/bin/python -m tools.bench_engine --models shipped --cases euler:1 --lr 512 --reference-lr 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from streamsr.config import ModelConfig
from tools.harness import (REPO, WRAPPER, add_run_arguments, child_env, make_model_dir, read_manifest,
                           run_child, synthetic_lr_png)

SHIPPED = REPO / "streamsr" / "models" / "default"
ZERO_MODELS = {
    "zero128": dict(block_size=128, patch_size=16, hidden=8, heads=1, layers=1, mlp_hidden=8, lr_patch=4,
                    vector_dim=0, rope_table=64, time_freqs=8),
    "zero64": dict(block_size=64, patch_size=8, hidden=8, heads=1, layers=1, mlp_hidden=8, lr_patch=4,
                   vector_dim=0, rope_table=64, time_freqs=8),
}
SPLIT = ("model", "read", "lr", "write", "commit", "wait")


@dataclass(frozen=True)
class Case:
    sampler: str
    steps: int

    @classmethod
    def parse(cls, text: str) -> "Case":
        sampler, _, steps = text.partition(":")
        if sampler not in ("euler", "heun") or not steps.isdigit() or int(steps) < 1:
            raise argparse.ArgumentTypeError(f"a case looks like euler:1 or heun:2, got {text!r}")
        return cls(sampler, int(steps))

    def __str__(self) -> str:
        return f"{self.sampler}:{self.steps}"


@dataclass
class Result:
    model: str
    case: str
    lr: int
    wall_s: float
    total_s: float
    finalize_s: float
    blocks: int
    seconds: dict
    files: int
    rss_mib: float
    plan_host_mib: float  # the memory plan's predicted host bytes (job.json), against rss_mib

    @property
    def sampler_s(self) -> float:
        return self.total_s - self.finalize_s

    @property
    def overhead_ms(self) -> float:
        return 1000 * (self.sampler_s - self.seconds.get("model", 0.0)) / max(self.blocks, 1)

    @property
    def evals_per_s(self) -> float:
        return self.blocks / self.sampler_s if self.sampler_s > 0 else float("nan")

    def split(self) -> dict[str, float]:
        """ms per block evaluation of each recorded category, and `other` (sampler wall not in any)."""
        per = {k: 1000 * self.seconds.get(k, 0.0) / max(self.blocks, 1) for k in SPLIT}
        main_thread = ("model", "wait") if "wait" in self.seconds else ("model", "read", "lr", "write", "commit")
        per["other"] = 1000 * self.sampler_s / max(self.blocks, 1) - sum(per[k] for k in main_thread)
        return per


def model_dir(name: str, workdir: Path, seed: int, std: float) -> Path:
    if name == "shipped":
        return SHIPPED
    if name not in ZERO_MODELS:
        raise SystemExit(f"unknown model {name!r}; choose from shipped, {', '.join(ZERO_MODELS)}")
    path = workdir / f"model-{name}"
    if not (path / "config.json").is_file():
        make_model_dir(ModelConfig(**ZERO_MODELS[name]), path, seed=seed, std=std)
    return path


def run_one(name: str, case: Case, lr: int, args) -> Result:
    workdir = args.workdir
    model = model_dir(name, workdir, args.seed, args.std)
    image = workdir / f"lr-{lr}.png"
    if not image.exists():
        synthetic_lr_png(lr, lr, image, args.seed)
    job = workdir / f"job-{name}-{case.sampler}{case.steps}-{lr}"
    out = workdir / f"out-{name}-{lr}.zarr"
    for path in (job, out):
        if path.exists():
            shutil.rmtree(path)
    cmd = [sys.executable, "-c", WRAPPER, "upscale", str(image), "-o", str(out), "--model", str(model),
           "--job", str(job), "--steps", str(case.steps), "--sampler", case.sampler, "--sigma-max", "1.0",
           "--sigma-min", "0.5", "--anchor", "none", "-q", *(["--batch", args.batch] if args.batch else [])]
    rep = run_child(cmd, child_env(args.threads), poll=args.poll, timeout=args.timeout,
                    report=workdir / "report.json")
    if rep["rc"] != 0:
        raise SystemExit(f"job failed (rc {rep['rc']}): {rep['stderr_tail']}")
    manifest = read_manifest(job) or {}
    secs = {k: float(v) for k, v in (manifest.get("seconds") or {}).items()}
    files = sum(1 for p in (job / "state.zarr").rglob("*") if p.is_file())
    result = Result(name, str(case), lr, rep["wall_s"], secs.get("total", 0.0), secs.get("finalize", 0.0),
                    int(manifest.get("model_blocks_done", 0)), secs, files, rep["wait4_mib"],
                    ((manifest.get("plan") or {}).get("host_bytes") or 0) / 2**20)
    if not args.keep:
        shutil.rmtree(job, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    return result


def table(results: list[Result], diffs: dict) -> str:
    head = (f"{'model':<8} {'case':<8} {'LR':>5} {'blocks':>6} {'evals/s':>8} {'ovh ms':>7} {'diff ms':>7}  "
            + " ".join(f"{k:>6}" for k in (*SPLIT, "other")) + f" {'final s':>7} {'files':>6} {'RSS MiB':>7} {'plan':>5}")
    lines = [head, "-" * len(head)]
    for r in results:
        split = r.split()
        diff = diffs.get((r.model, r.case, r.lr))
        lines.append(f"{r.model:<8} {r.case:<8} {r.lr:>5} {r.blocks:>6} {r.evals_per_s:>8.1f} {r.overhead_ms:>7.2f} "
                     f"{diff if diff is not None else float('nan'):>7.2f}  "
                     + " ".join(f"{split[k]:>6.2f}" for k in (*SPLIT, "other"))
                     + f" {r.finalize_s:>7.2f} {r.files:>6} {r.rss_mib:>7.0f} {r.plan_host_mib:>5.0f}")
    lines.append("split columns: ms per block evaluation; ovh = (sampler wall - model s) / evals; diff = (wall at "
                 "LR - wall at the reference LR) / (evals - reference evals) - model ms per eval; RSS = peak (wait4), plan = the "
                 "memory plan's predicted host MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="zero128,zero64", help="comma list of zero128, zero64, shipped")
    p.add_argument("--cases", default="euler:1,euler:4,heun:2", help="comma list of SAMPLER:STEPS")
    p.add_argument("--lr", type=int, default=1024, help="LR side in pixels (square; default 1024)")
    p.add_argument("--reference-lr", type=int, default=128,
                   help="LR side of the difference method's small job (0: skip it; default 128)")
    p.add_argument("--batch", default=None, help="--batch of the jobs (default: the job's own choice)")
    add_run_arguments(p, "out/bench_engine", threads=2)
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    cases = [Case.parse(c) for c in args.cases.split(",")]
    results, diffs = [], {}
    for name in args.models.split(","):
        for case in cases:
            big = run_one(name, case, args.lr, args)
            results.append(big)
            if args.reference_lr:
                small = run_one(name, case, args.reference_lr, args)
                results.append(small)
                model_ms = 1000 * (big.seconds.get("model", 0.0) - small.seconds.get("model", 0.0))
                diffs[(name, str(case), args.lr)] = ((1000 * (big.wall_s - small.wall_s) - model_ms)
                                                     / max(big.blocks - small.blocks, 1))
            print(table(results, diffs), file=sys.stderr, flush=True)
    print(table(results, diffs))
    if args.json:
        args.json.write_text(json.dumps([{**r.__dict__, "overhead_ms": r.overhead_ms, "evals_per_s": r.evals_per_s,
                                          "split_ms": r.split()} for r in results], indent=1))


if __name__ == "__main__":
    main()
