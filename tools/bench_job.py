"""Benchmark whole `streamsr upscale` jobs: peak RSS, wall time and the per-category time split vs size.

What it measures. For each LR size W (square W x W, `--sizes 256,1024,2048`) the script

1. builds (once) a tiny random model dir: ModelConfig.tiny(vector_dim=0) by default (32 px blocks),
   every parameter redrawn N(0, --std) (tools.harness.random_model, std 0.1 by default), overridable with
   --block-size / --patch-size / --layers / --hidden / --heads / --vector-dim; in a child process, so
   that this process never imports torch before the measured children (see 4);
2. writes a synthetic LR PNG (smooth sin/cos gradients plus a little noise, 8-bit RGB);
3. runs, as a fresh child process per size,
       python -m streamsr upscale LR.png -o OUT.png --model M --steps S --batch RxC --job JOBDIR -q
   with OMP_NUM_THREADS / MKL_NUM_THREADS = --threads (default 2);
4. measures the child's **peak RSS** exactly with `os.wait4(pid)`: the kernel's ru_maxrss of that one
   child (and any children it waited for), not the RUSAGE_CHILDREN maximum over all children so far,
   but never below this process's own high-water mark when it started the child (Linux carries it
   over exec; recorded as parent_hwm_mib, ~20 MiB while this process stays free of torch).
   The child is `python -c WRAPPER upscale ...`, where WRAPPER runs the `streamsr` module as __main__
   through runpy (as `python -m` does) and, once main() has returned, writes the child's own VmHWM to
   a JSON report (tools.harness.WRAPPER): the "main HWM", the peak before interpreter teardown. That second number matters because a
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

    .venv/bin/python -m tools.bench_job --sizes 256,1024,2048 --steps 1 --batch 8x8 --json out/bench_job.json
    .venv/bin/python -m tools.bench_job --sizes 128,512 --batch 4x4 --threads 1 --timeout 900
    .venv/bin/python -m tools.bench_job --sizes 1024 --block-size 64 --patch-size 8 --batch 2x2

Everything (model dir, LR images, job dirs, outputs) lives under --workdir (default out/bench_job).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from tools.harness import (
    GIB,
    MIB,
    SR,
    WRAPPER,
    add_run_arguments,
    child_env,
    imports_only,
    make_model_dir,
    parse_batch,
    parse_ints,
    read_manifest,
    run_child,
    shown,
    split_times,
    synthetic_lr_png,
    tree_bytes,
)


# ---- arguments -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--sizes", type=parse_ints, default=[256, 1024, 2048],
                   help="LR sides, comma separated: 256 means a 256x256 LR (1024x1024 output)")
    p.add_argument("--steps", type=int, default=1, help="sampler steps passed to upscale (default 1)")
    p.add_argument("--sampler", choices=("heun", "euler"), default=None, help="passed through if given")
    p.add_argument("--anchor", choices=("none", "global", "local"), default=None, help="passed through if given")
    p.add_argument("--batch", type=parse_batch, default=(8, 8), metavar="RxC", help="block batch (default 8x8)")
    p.add_argument("--device", default=None, help="passed through as --device if given (cpu, cuda)")
    # model
    p.add_argument("--block-size", type=int, help="HR px per block (tiny: 32)")
    p.add_argument("--patch-size", type=int, help="HR px per token (tiny: 8)")
    p.add_argument("--layers", type=int, help="transformer layers (tiny: 2)")
    p.add_argument("--hidden", type=int, help="width (tiny: 32)")
    p.add_argument("--heads", type=int, help="heads (tiny: 2)")
    p.add_argument("--vector-dim", type=int, default=0, help="semantic vector size (default 0: none)")
    # running
    add_run_arguments(p, "out/bench_job", threads=2, poll=0.2, timeout=None)
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the baseline child (python importing torch + streamsr, nothing else)")
    p.add_argument("--plain", action="store_true",
                   help="run literally `python -m streamsr` (no wrapper: only the wait4 peak is measured)")
    p.add_argument("--target", type=float, default=1.25, help="allowed max/min peak RSS ratio (default 1.25)")
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
def run_job_child(cmd: list[str], env: dict, args, report: Path, timeout: float | None = None,
                  job: Path | None = None, sweeps: list[str] | None = None, batches: int = 1) -> dict:
    """harness.run_child, plus the polled VmRSS (and its anonymous part) per job phase, the phase in which
    the polled VmHWM last rose, and a short RSS timeline. `peak_rss_mib` is the exact wait4 peak;
    `peak_rss_main_mib` the child's VmHWM when main() returned (WRAPPER's report; None without it)."""
    phase_peak: dict[str, int] = {}
    phase_rss_anon: dict[str, int] = {}
    samples: list[tuple[float, str, int]] = []
    manifest, hwm, hwm_phase = None, 0, None

    def on_sample(t: float, st: dict[str, int]) -> None:
        nonlocal manifest, hwm, hwm_phase
        if job is not None:
            manifest = read_manifest(job) or manifest
        phase = phase_of(manifest, sweeps or [], batches) if job is not None else "run"
        phase_peak[phase] = max(phase_peak.get(phase, 0), st["VmRSS"])
        phase_rss_anon[phase] = max(phase_rss_anon.get(phase, 0), st.get("RssAnon", 0))
        samples.append((round(t, 2), phase, st["VmRSS"]))
        if st.get("VmHWM", 0) > hwm:
            hwm, hwm_phase = st["VmHWM"], phase

    res = run_child(cmd, env, args.poll, timeout, report, on_sample, kill_after=120.0)
    rep = res.pop("report") or {}
    # keep the timeline short in the JSON: at most ~200 evenly spaced samples
    stride = max(1, len(samples) // 200)
    kept = samples[::stride] + (samples[-1:] if samples and (len(samples) - 1) % stride else [])
    return {"rc": res["rc"], "wall_s": res["wall_s"], "peak_rss_mib": res["wait4_mib"],
            "parent_hwm_mib": res["parent_hwm_mib"],  # the floor under peak_rss_mib (harness.run_child)
            "peak_rss_main_mib": rep["hwm_kib"] / 1024 if rep.get("hwm_kib") else None,
            "phase_peak_rss_mib": {k: v / 1024 for k, v in phase_peak.items()},
            "phase_peak_rss_anon_mib": {k: v / 1024 for k, v in phase_rss_anon.items()},
            "polled_hwm_mib": res["polled_hwm_mib"], "polled_hwm_phase": hwm_phase,
            "timed_out": res["timed_out"], "stderr_tail": res["stderr_tail"][-2000:],
            "rss_timeline": [(t, ph, round(kib / 1024, 1)) for t, ph, kib in kept]}


BASELINE_IMPORTS = ["torch", "numpy", "zarr", "PIL.Image", "png", "tifffile", "diffusers", "streamsr.jobs.run",
                    "streamsr.jobs.executor", "streamsr.jobs.flows", "streamsr.api", "streamsr.core.model"]


def baseline(args) -> dict:
    """A child that only imports what a job imports: the fixed floor under every peak."""
    return run_job_child([sys.executable, "-c", imports_only(BASELINE_IMPORTS)], child_env(args.threads), args,
                         args.workdir / "report_baseline.json")


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
    lr = synthetic_lr_png(side, side, work / f"lr_{side}.png", args.seed + side)
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
    rec["command"] = shown(cmd)
    sampler, anchor = args.sampler or "heun", args.anchor or "global"
    print(f"  LR {side} -> {geo['hr']}: {geo['blocks']} blocks/sweep, {geo['batches_per_sweep']} batches ...",
          flush=True)
    res = run_job_child(cmd, child_env(args.threads), args, work / f"report_{side}.json", args.timeout, job,
                        sweep_names(args.steps, sampler, anchor), geo["batches_per_sweep"])
    rec.update(res)
    manifest = read_manifest(job)
    if manifest is not None:
        rec.update(split_times(manifest, res["wall_s"]))
        rec["status"] = manifest.get("status")
        rec["cursor"], rec["total_tasks"] = manifest.get("cursor"), manifest.get("total_tasks")
    else:
        rec["status"] = "no manifest"
    rec["job_dir_gib"] = tree_bytes(job, allocated=True) / GIB if job.exists() else 0.0
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
    if cfg.vector_dim:
        print("note: --vector-dim > 0 needs a semantic_encoder.json in the model dir; none is written",
              file=sys.stderr)
    model_dir = make_model_dir(cfg, args.workdir / "model", args.seed, args.std)  # torch stays out of this process
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
