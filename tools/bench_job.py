"""Benchmark whole `streamsr upscale` jobs: peak RSS, wall time and the per-category time split vs size.

What it measures. For each LR size W (square W x W, `--sizes 256,1024,2048`) the script

1. builds (once) a tiny random model dir: ModelConfig.tiny(vector_dim=0) by default (32 px blocks),
   every parameter redrawn N(0, --std) like tests/conftest.random_model(std=0.1), overridable with
   --block-size / --patch-size / --layers / --hidden / --heads / --vector-dim;
2. writes a synthetic LR PNG (smooth sin/cos gradients plus a little noise, 8-bit RGB);
3. runs, as a fresh child process per size,
       python -m streamsr upscale LR.png -o OUT.png --model M --steps S --batch RxC --job JOBDIR -q
   with OMP_NUM_THREADS / MKL_NUM_THREADS = --threads (default 2);
4. measures the child's **peak RSS** exactly with `os.wait4(pid)`: the kernel's ru_maxrss of that one
   child (and any children it waited for), not the RUSAGE_CHILDREN maximum over all children so far.
   The child is `python -c WRAPPER upscale ...`, where WRAPPER runs the `streamsr` module as __main__
   through runpy (as `python -m` does) and, once main() has returned, writes the child's own VmHWM to
   a file: the "main HWM", the peak before interpreter teardown. That second number matters because a
   process that imports torch + diffusers gains ~140 MiB of RSS while it finalises (a bare import
   does it too), and that teardown spike can be the whole wait4 peak of a small job. --plain runs
   literally `python -m streamsr` (wait4 peak only). While the child runs, /proc/PID/status
   (VmRSS, VmHWM) is also polled every --poll seconds together with the job cursor in
   JOBDIR/job.json, giving the largest RSS seen per job phase (create = imports, LR ingest, semantic
   vector, until the first manifest; then init / predict / correct / stats / anchor / export, by
   cursor) and the phase in which the polled VmHWM last rose. Polled values are samples (a short spike
   between two polls is missed); the wait4 peak and the main HWM are exact;
5. measures the child's wall time, then reads JOBDIR/job.json: `seconds` {model, read, write, total}
   (total = the task loop only) and `model_blocks_done`, and reports model / read / write /
   other = total - model - read - write as seconds and % of total, setup = wall - total (interpreter
   start, imports, job creation, model load, exit), model blocks/s over model seconds and over wall;
6. measures the job dir's size on disk, then deletes the job dir and the output image.

Before each size the free disk space (shutil.disk_usage) is checked against an estimate of what the
job writes (4 float32 state arrays + LR + output array + output PNG, +25 %); a size that does not fit
is skipped with a note. With --timeout SEC a run that takes longer is stopped with SIGTERM (the job
stops cleanly at a task boundary) and its partial manifest is reported (status "interrupted").

Finally it prints the ratio of the largest peak RSS to the smallest and whether it is within --target
(default 1.25x): the job design promises a peak RSS that stays flat as the output grows.

Run from the repository root:

    .venv/bin/python tools/bench_job.py --sizes 256,1024,2048 --steps 1 --batch 8x8 --json out/bench_job.json
    .venv/bin/python tools/bench_job.py --sizes 128,512 --batch 4x4 --threads 1 --timeout 900
    .venv/bin/python tools/bench_job.py --sizes 1024 --block-size 64 --patch-size 8 --batch 2x2

Everything (model dir, LR images, job dirs, outputs) lives under --workdir (default out/bench_job).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

MIB = 2 ** 20
GIB = 2 ** 30
SR = 4  # streamsr is a x4 upsampler


# ---- arguments -------------------------------------------------------------------------------------
def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must look like 256,1024,2048, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return sizes


def parse_batch(text: str) -> tuple[int, int]:
    try:
        r, c = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch must look like 8x8 (rows x cols), got {text!r}") from None
    if r < 1 or c < 1:
        raise argparse.ArgumentTypeError(f"batch must be at least 1x1, got {text!r}")
    return r, c


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--sizes", type=parse_sizes, default=[256, 1024, 2048],
                   help="LR sides, comma separated: 256 means a 256x256 LR (1024x1024 output)")
    p.add_argument("--steps", type=int, default=1, help="sampler steps passed to upscale (default 1)")
    p.add_argument("--sampler", choices=("heun", "euler"), default=None, help="passed through if given")
    p.add_argument("--anchor", choices=("none", "global", "local"), default=None, help="passed through if given")
    p.add_argument("--batch", type=parse_batch, default=(8, 8), metavar="RxC", help="block batch (default 8x8)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS / MKL_NUM_THREADS of the child")
    p.add_argument("--device", default=None, help="passed through as --device if given (cpu, cuda)")
    # model
    p.add_argument("--block-size", type=int, help="HR px per block (tiny: 32)")
    p.add_argument("--patch-size", type=int, help="HR px per token (tiny: 8)")
    p.add_argument("--layers", type=int, help="transformer layers (tiny: 2)")
    p.add_argument("--hidden", type=int, help="width (tiny: 32)")
    p.add_argument("--heads", type=int, help="heads (tiny: 2)")
    p.add_argument("--vector-dim", type=int, default=0, help="semantic vector size (default 0: none)")
    p.add_argument("--std", type=float, default=0.1, help="std of the redrawn weights (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="weights and image seed")
    # running
    p.add_argument("--workdir", type=Path, default=REPO / "out" / "bench_job",
                   help="where the model, images and job dirs go (default out/bench_job)")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop a run after this many seconds (SIGTERM) and report it as partial")
    p.add_argument("--poll", type=float, default=0.2, help="seconds between /proc samples (default 0.2)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the baseline child (python importing torch + streamsr, nothing else)")
    p.add_argument("--plain", action="store_true",
                   help="run literally `python -m streamsr` (no wrapper: only the wait4 peak is measured)")
    p.add_argument("--keep", action="store_true", help="keep job dirs and outputs (default: delete)")
    p.add_argument("--target", type=float, default=1.25, help="allowed max/min peak RSS ratio (default 1.25)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


# ---- inputs ----------------------------------------------------------------------------------------
def model_config(args):
    from streamsr.config import ModelConfig

    overrides = {"vector_dim": args.vector_dim}
    for name in ("block_size", "patch_size", "layers", "hidden", "heads"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.hidden is not None:
        overrides.setdefault("mlp_hidden", 2 * args.hidden)
    return ModelConfig.tiny(**overrides)


def make_model_dir(cfg, path: Path, seed: int, std: float) -> Path:
    """Like tests/conftest.random_model: every parameter redrawn N(0, std), then save_pretrained."""
    import torch

    from streamsr.core.model import InfDiT

    if cfg.vector_dim:
        print("note: --vector-dim > 0 needs a semantic_encoder.json in the model dir; none is written",
              file=sys.stderr)
    if path.exists():
        shutil.rmtree(path)
    torch.manual_seed(seed)
    model = InfDiT.from_model_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    model.eval().save_pretrained(path)
    return path


def make_lr_png(side: int, path: Path, seed: int) -> Path:
    """A smooth RGB pattern (sin/cos gradients) plus mild noise, 8-bit."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed + side)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / max(side, 1)
    r = 0.5 + 0.3 * np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y)
    g = 0.5 + 0.3 * np.cos(2 * np.pi * (2 * x + y))
    b = 0.2 + 0.6 * x * y + 0.1 * np.sin(2 * np.pi * 5 * (x - y))
    img = np.stack([r, g, b], axis=-1) + rng.normal(0.0, 0.03, (side, side, 3)).astype(np.float32)
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB").save(path)
    return path


# ---- geometry and disk -----------------------------------------------------------------------------
def geometry(side: int, block_size: int, batch: tuple[int, int]) -> dict:
    lr_block = block_size // SR
    blocks_side = -(-side // lr_block)
    hr_padded = blocks_side * block_size
    batches = -(-blocks_side // batch[0]) * -(-blocks_side // batch[1])
    return {"blocks_side": blocks_side, "blocks": blocks_side ** 2, "hr": side * SR, "hr_padded": hr_padded,
            "lr_padded": blocks_side * lr_block, "batches_per_sweep": batches}


def disk_estimate(geo: dict) -> int:
    """Bytes a job may write: 4 f32 state arrays, LR, output array and the output PNG, +25 %."""
    hp, lp = geo["hr_padded"], geo["lr_padded"]
    state = 4 * 3 * hp * hp * 4
    lr = 3 * lp * lp * 4
    output = hp * hp * 3
    png = geo["hr"] ** 2 * 3
    return int(1.25 * (state + lr + output + png))


def tree_bytes(path: Path) -> int:
    """Allocated bytes of everything under path (st_blocks, so sparse/small files count as stored)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


# ---- phases of a job (for the polled RSS timeline) -------------------------------------------------
def sweep_names(steps: int, sampler: str, anchor: str) -> list[str]:
    """The job's sweeps in order, mirroring streamsr.stream.planner.job_tasks (one export task at the end)."""
    names = ["init"]
    for i in range(steps):
        names.append("predict")
        if sampler == "heun" and i < steps - 1:
            names.append("correct")
    if anchor == "global":
        names.append("stats")
    names.append("anchor")
    return names


def read_manifest(job: Path) -> dict | None:
    try:
        return json.loads((job / "job.json").read_text())
    except (OSError, ValueError):
        return None  # not written yet, or being replaced


def phase_of(manifest: dict | None, sweeps: list[str], batches: int) -> str:
    """The phase the child is in: 'create' before the first manifest, then the kind of task `cursor`."""
    if manifest is None or manifest.get("status") == "created":
        return "create"
    if manifest.get("status") == "done":
        return "exit"  # main() finishing, then interpreter teardown
    cursor = int(manifest.get("cursor", 0))
    i = cursor // max(batches, 1)
    return sweeps[i] if i < len(sweeps) else "export"


# ---- one child -------------------------------------------------------------------------------------
def proc_status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def run_child(cmd: list[str], env: dict, poll: float, timeout: float | None, job: Path | None = None,
              sweeps: list[str] | None = None, batches: int = 1) -> dict:
    """Run cmd; peak RSS from os.wait4 (exact), plus polled VmRSS per job phase."""
    import tempfile

    err = tempfile.TemporaryFile()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    phase_peak: dict[str, int] = {}
    phase_rss_anon: dict[str, int] = {}
    samples = []
    manifest, hwm, hwm_phase = None, 0, None
    stopped = None
    status = rusage = None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        now = time.monotonic()
        st = proc_status_kib(proc.pid)
        if job is not None:
            manifest = read_manifest(job) or manifest
        phase = phase_of(manifest, sweeps or [], batches) if job is not None else "run"
        if "VmRSS" in st:
            phase_peak[phase] = max(phase_peak.get(phase, 0), st["VmRSS"])
            phase_rss_anon[phase] = max(phase_rss_anon.get(phase, 0), st.get("RssAnon", 0))
            samples.append((round(now - start, 2), phase, st["VmRSS"]))
            if st.get("VmHWM", 0) > hwm:
                hwm, hwm_phase = st["VmHWM"], phase
        if timeout is not None and stopped is None and now - start > timeout:
            stopped = now
            proc.send_signal(signal.SIGTERM)  # streamsr stops at the next task boundary
        if stopped is not None and now - stopped > 120:
            proc.kill()
        time.sleep(poll)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    err.seek(0)
    stderr = err.read().decode(errors="replace")
    err.close()
    # keep the timeline short in the JSON: at most ~200 evenly spaced samples
    stride = max(1, len(samples) // 200)
    kept = samples[::stride] + (samples[-1:] if samples and (len(samples) - 1) % stride else [])
    return {"rc": proc.returncode, "wall_s": wall, "peak_rss_mib": rusage.ru_maxrss / 1024,
            "phase_peak_rss_mib": {k: v / 1024 for k, v in phase_peak.items()},
            "phase_peak_rss_anon_mib": {k: v / 1024 for k, v in phase_rss_anon.items()},
            "polled_hwm_mib": hwm / 1024, "polled_hwm_phase": hwm_phase,
            "timed_out": stopped is not None, "stderr_tail": stderr[-2000:],
            "rss_timeline": [(t, ph, round(kib / 1024, 1)) for t, ph, kib in kept]}


# `python -m streamsr ARGS` through runpy (what -m itself uses), recording VmHWM when main() has returned
# and before interpreter teardown: a torch + diffusers process gains ~140 MiB of RSS while it finalises
# (seen with a bare `import torch, diffusers` too), which would otherwise hide what the job itself uses.
WRAPPER = """\
import os, runpy, sys
def _hwm():
    path = os.environ.get('BENCH_HWM_FILE')
    if path:
        with open('/proc/self/status') as fh:
            vals = {l.split(':')[0]: l.split(':')[1].split()[0] for l in fh if l.startswith(('VmHWM', 'VmRSS'))}
        with open(path, 'w') as fh:
            fh.write(vals['VmHWM'] + ' ' + vals['VmRSS'])
sys.argv[0] = 'streamsr'
try:
    runpy.run_module('streamsr', run_name='__main__', alter_sys=True)
finally:
    _hwm()
"""


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


def baseline(args) -> dict:
    """A child that only imports what a job imports: the fixed floor under every peak."""
    hwm_file = args.workdir / "hwm_baseline.txt"
    code = ("import torch, numpy, zarr, PIL.Image, png, tifffile, diffusers\n"
            "import streamsr.jobs.run, streamsr.jobs.executor, streamsr.jobs.flows, streamsr.api, streamsr.core.model\n"
            "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
            f"open({str(hwm_file)!r}, 'w').write(hwm)\n")
    res = run_child([sys.executable, "-c", code], child_env(args.threads), args.poll, None)
    res["peak_rss_main_mib"] = int(hwm_file.read_text()) / 1024 if hwm_file.exists() else None
    hwm_file.unlink(missing_ok=True)
    return res


def split_times(manifest: dict, wall: float) -> dict:
    secs = manifest.get("seconds") or {}
    model, read, write = (float(secs.get(k, 0.0)) for k in ("model", "read", "write"))
    total = float(secs.get("total", 0.0))
    other = total - model - read - write
    pct = (lambda v: 100.0 * v / total if total > 0 else float("nan"))
    blocks = int(manifest.get("model_blocks_done", 0))
    return {"model_s": model, "read_s": read, "write_s": write, "other_s": other, "total_s": total,
            "model_pct": pct(model), "read_pct": pct(read), "write_pct": pct(write), "other_pct": pct(other),
            "setup_s": wall - total, "model_blocks_done": blocks,
            "blocks_per_s_model": blocks / model if model > 0 else float("nan"),
            "blocks_per_s_wall": blocks / wall if wall > 0 else float("nan"),
            "extra_seconds": {k: v for k, v in secs.items() if k not in ("model", "read", "write", "total")}}


def bench_size(side: int, args, cfg, model_dir: Path) -> dict:
    work = args.workdir
    geo = geometry(side, cfg.block_size, args.batch)
    rec = {"lr": side, "hr": geo["hr"], "blocks_per_sweep": geo["blocks"], "batch": "%dx%d" % args.batch,
           "batches_per_sweep": geo["batches_per_sweep"]}
    need = disk_estimate(geo)
    free = shutil.disk_usage(work).free
    rec["disk_need_est_gib"], rec["disk_free_gib"] = need / GIB, free / GIB
    if need > free:
        rec["skipped"] = f"needs ~{need / GIB:.1f} GiB on disk, {free / GIB:.1f} GiB free"
        print(f"  skip LR {side}: {rec['skipped']}", flush=True)
        return rec
    lr = make_lr_png(side, work / f"lr_{side}.png", args.seed)
    out = work / f"out_{side}.png"
    job = work / f"job_{side}"
    if job.exists():
        shutil.rmtree(job)
    out.unlink(missing_ok=True)
    launcher = [sys.executable, "-m", "streamsr"] if args.plain else [sys.executable, "-c", WRAPPER]
    cmd = [*launcher, "upscale", str(lr), "-o", str(out), "--model", str(model_dir),
           "--steps", str(args.steps), "--batch", "%dx%d" % args.batch, "--job", str(job), "-q"]
    for flag, value in (("--sampler", args.sampler), ("--anchor", args.anchor), ("--device", args.device)):
        if value is not None:
            cmd += [flag, value]
    rec["command"] = " ".join(["python -m streamsr" if a == WRAPPER else a for a in cmd])
    hwm_file = work / f"hwm_{side}.txt"
    hwm_file.unlink(missing_ok=True)
    env = child_env(args.threads)
    env["BENCH_HWM_FILE"] = str(hwm_file)
    sampler, anchor = args.sampler or "heun", args.anchor or "global"
    print(f"  LR {side} -> {geo['hr']}: {geo['blocks']} blocks/sweep, {geo['batches_per_sweep']} batches ...",
          flush=True)
    res = run_child(cmd, env, args.poll, args.timeout, job,
                    sweep_names(args.steps, sampler, anchor), geo["batches_per_sweep"])
    rec.update(res)
    rec["peak_rss_main_mib"] = None  # VmHWM when main() returned (before interpreter teardown)
    if hwm_file.exists():
        rec["peak_rss_main_mib"] = int(hwm_file.read_text().split()[0]) / 1024
        hwm_file.unlink()
    manifest = read_manifest(job)
    if manifest is not None:
        rec.update(split_times(manifest, res["wall_s"]))
        rec["status"] = manifest.get("status")
        rec["cursor"], rec["total_tasks"] = manifest.get("cursor"), manifest.get("total_tasks")
    else:
        rec["status"] = "no manifest"
    rec["job_dir_gib"] = tree_bytes(job) / GIB if job.exists() else 0.0
    rec["output_mib"] = out.stat().st_size / MIB if out.exists() else 0.0
    if res["rc"] != 0:
        print(f"  LR {side}: exit {res['rc']} ({rec['status']}); stderr tail:\n{res['stderr_tail']}", flush=True)
    if not args.keep:
        shutil.rmtree(job, ignore_errors=True)
        out.unlink(missing_ok=True)
    lr.unlink(missing_ok=True)
    return rec


# ---- report ----------------------------------------------------------------------------------------
def fmt_split(r: dict, key: str) -> str:
    return f"{r[key + '_s']:8.1f} {r[key + '_pct']:5.1f}%"


def fmt_mib(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def print_table(records: list[dict], base: dict | None) -> None:
    head = (f"{'LR':>5} {'HR':>5} {'blocks':>7} {'batch':>5} {'status':>11} {'wall s':>8} {'setup s':>7} "
            f"{'loop s':>8} {'model s':>15} {'read s':>15} {'write s':>15} {'other s':>15} "
            f"{'blk/s mdl':>9} {'blk/s wall':>10} {'peak RSS':>8} {'main HWM':>8} {'job GiB':>7}")
    print(head)
    print("-" * len(head))
    for r in records:
        if "skipped" in r:
            print(f"{r['lr']:>5} {r['hr']:>5} {r['blocks_per_sweep']:>7} {r['batch']:>5} skipped: {r['skipped']}")
            continue
        status = r.get("status") or "?"
        if "model_s" not in r:
            print(f"{r['lr']:>5} {r['hr']:>5} {r['blocks_per_sweep']:>7} {r['batch']:>5} {status:>11} "
                  f"{r['wall_s']:8.1f}  (no manifest; rc {r['rc']}) peak RSS {r['peak_rss_mib']:.0f} MiB")
            continue
        if status != "done":
            status = f"{status[:6]} {r.get('cursor')}/{r.get('total_tasks')}"
        print(f"{r['lr']:>5} {r['hr']:>5} {r['blocks_per_sweep']:>7} {r['batch']:>5} {status:>11} "
              f"{r['wall_s']:8.1f} {r['setup_s']:7.1f} {r['total_s']:8.1f} {fmt_split(r, 'model')} "
              f"{fmt_split(r, 'read')} {fmt_split(r, 'write')} {fmt_split(r, 'other')} "
              f"{r['blocks_per_s_model']:9.0f} {r['blocks_per_s_wall']:10.1f} {r['peak_rss_mib']:8.1f} "
              f"{fmt_mib(r.get('peak_rss_main_mib')):>8} {r['job_dir_gib']:7.2f}")
    if base is not None:
        print(f"baseline child (imports torch, diffusers, zarr, streamsr; nothing else): peak RSS "
              f"{base['peak_rss_mib']:.1f} MiB, HWM at the end of its script {fmt_mib(base.get('peak_rss_main_mib'))} MiB")
    print("peak RSS = os.wait4 ru_maxrss of the child (whole life, incl. interpreter teardown); main HWM = "
          "VmHWM when streamsr's main() returned (before teardown); MiB")
    phases = ["create", "init", "predict", "correct", "stats", "anchor", "export", "exit"]
    measured = [r for r in records if r.get("phase_peak_rss_mib")]
    if measured:
        used = [p for p in phases if any(p in r["phase_peak_rss_mib"] for r in measured)]
        print("\npolled VmRSS per phase, MiB (max of samples every poll; anon part in brackets):")
        print(f"{'LR':>5} " + " ".join(f"{p:>15}" for p in used))
        for r in measured:
            cells = []
            for p in used:
                v, a = r["phase_peak_rss_mib"].get(p), r["phase_peak_rss_anon_mib"].get(p)
                cells.append(f"{v:7.1f} [{a:6.1f}]" if v is not None else f"{'-':>15}")
            print(f"{r['lr']:>5} " + " ".join(cells)
                  + f"   polled VmHWM last rose in: {r.get('polled_hwm_phase')}")


def verdict(records: list[dict], target: float, key: str = "peak_rss_mib") -> dict:
    peaks = [(r["lr"], r[key]) for r in records if r.get(key) is not None and r.get("rc") == 0]
    if len(peaks) < 2:
        return {"ratio": None, "within_target": None, "note": "fewer than two completed runs"}
    lo, hi = min(peaks, key=lambda p: p[1]), max(peaks, key=lambda p: p[1])
    ratio = hi[1] / lo[1]
    return {"ratio": ratio, "within_target": ratio <= target, "target": target,
            "max": {"lr": hi[0], "peak_rss_mib": hi[1]}, "min": {"lr": lo[0], "peak_rss_mib": lo[1]}}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    cfg = model_config(args)
    model_dir = make_model_dir(cfg, args.workdir / "model", args.seed, args.std)
    print(f"model: {model_dir} (block {cfg.block_size}, patch {cfg.patch_size}, layers {cfg.layers}, hidden "
          f"{cfg.hidden}, heads {cfg.heads}, vector {cfg.vector_dim}); steps {args.steps}, batch "
          f"{args.batch[0]}x{args.batch[1]}, threads {args.threads}; peak RSS via os.wait4 ru_maxrss", flush=True)
    base = None
    if not args.no_baseline:
        base = baseline(args)
        if base["rc"] != 0:
            print(f"baseline child failed (rc {base['rc']}):\n{base['stderr_tail']}", file=sys.stderr)
            base = None
    records = [bench_size(side, args, cfg, model_dir) for side in args.sizes]
    print()
    print_table(records, base)
    verdicts = {}
    print()
    for key, label in (("peak_rss_mib", "peak RSS (wait4)"), ("peak_rss_main_mib", "main HWM")):
        v = verdicts[key] = verdict(records, args.target, key)
        if v["ratio"] is None:
            print(f"{label} ratio: n/a ({v['note']})")
        else:
            print(f"{label} ratio max/min = {v['max']['peak_rss_mib']:.1f} MiB (LR {v['max']['lr']}) / "
                  f"{v['min']['peak_rss_mib']:.1f} MiB (LR {v['min']['lr']}) = {v['ratio']:.3f}x: "
                  f"{'within' if v['within_target'] else 'NOT within'} {args.target}x")
    v = verdicts
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        import torch

        meta = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
                "cpus": os.cpu_count(), "threads": args.threads, "model": cfg.to_dict(), "std": args.std,
                "steps": args.steps, "batch": "%dx%d" % args.batch, "rss_method": "os.wait4 ru_maxrss of the child"}
        args.json.write_text(json.dumps({"meta": meta, "baseline": base, "runs": records, "verdict": v},
                                        indent=1, default=str))
        print(f"wrote {args.json}")
    return 0 if all(r.get("rc", 0) == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
