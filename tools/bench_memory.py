"""Check the memory planner against measurements: predicted vs measured peaks of `streamsr upscale` jobs.

For one model (a tiny random one made on the fly, or --model DIR), several output widths at a fixed
height (`--widths 1024,2048,4096,8192 --height 512`) and one or more budgets (`--ram 1GiB,740MiB`,
and `--vram` on CUDA), the script runs per case

1. the job, as a fresh child process:
       python -m streamsr upscale LR.png -o OUT.png --model M --steps 1 --ram BUDGET [--vram V]
              [--device D] [--dtype T] [--backend B] --job JOBDIR -q
   on a synthetic LR PNG of (width/4) x (height/4); no --batch and no --frontier, so the memory planner
   picks the batch and the frontier placement. The child is started as `python -c WRAPPER upscale ...`
   where tools.harness.WRAPPER runs the `streamsr` module as __main__ through runpy (what `python -m` does)
   and, once main() has returned (before interpreter teardown), writes its VmHWM / VmRSS (and on CUDA
   torch.cuda.max_memory_allocated / max_memory_reserved) to a file. Peak RSS is reported three ways:
     wait4    os.wait4 ru_maxrss of the child: its whole life, interpreter teardown included (exact; this
              process keeps torch out until the children ran, so its own peak is no floor under it);
     main     VmHWM when main() returned: the job itself, without teardown (exact);
     polled   the last VmHWM read from /proc/PID/status while polling every --poll seconds.
   From JOBDIR/job.json it reads the plan the job chose (`plan`: batch, placement, predicted
   device/host/disk bytes and their parts), `seconds` {model, read, write, total} and
   `model_blocks_done`: time per block = seconds.model / model_blocks_done, and the split
   model / read / write / other (other = total - model - read - write; setup = wall - total).
2. one streamed denoiser sweep of the same model, output size, batch and placement, in a second child
   (`python -m tools.bench_memory --sweep-child SPEC`), under tools.memtrace.TensorBytes exactly as
   tests/test_memory.py::measured_sweep_bytes does (x, up(LR), weights and the time embedding exist
   before the mode is entered; engine.denoise_batch stages the next batch's K/V after each batch, as
   in a job). Measured: peak bytes held in CPU tensors during the sweep (above what existed
   before it), the frontier's own peak (Frontier.peak_bytes: device/host RAM or spill files) and its
   staged-copy peak. Compared with the plan's activations + frontier + staging + frontier_host (the
   tensor terms) and, separately, frontier vs frontier(+frontier_host/disk) and staging.
   A disk frontier's staged K/V are views of np.fromfile buffers that TensorBytes cannot see (no torch
   op makes them); "+untracked" adds Frontier.peak_staged_bytes back for that placement.
   On CUDA (--device cuda) the sweep runs on the GPU and torch.cuda.max_memory_allocated during the
   sweep is compared with activations + frontier + staging; the job's whole-run max_memory_allocated
   (from the wrapper) is compared with the predicted device_bytes (weights included); the CPU
   TensorBytes peak is then compared with the host-side terms only (frontier_host + spill_io).
   (The CUDA path has not been run on a GPU yet.)

It also runs two baselines (unless --no-baseline): a child that only imports what a job imports, and
the smallest real job, `python -m streamsr upscale` of a one-block LR (16x16 for 64 px blocks) with
--batch 1x1 --frontier device: the measured floor that memory.RUNTIME_HOST_BYTES stands for.

Reported: a table per case, then per budget the peak RSS flatness across widths (max/min, target
--flat-target, default 1.10), the tensor-bytes prediction error (predicted/measured - 1, target
+-(--pred-target), default 15 %), predicted host bytes vs measured RSS, and the runtime constant the
measurements imply (main HWM minus the plan's non-runtime host terms).

Only torch's CPU path is touched unless --device cuda is given (torch.cuda is never called otherwise).

The tables and the summary are tools/bench_memory_report.py's. Run from the repository root (results
under out/bench_memory/):

    .venv/bin/python -m tools.bench_memory --widths 1024,2048,4096,8192 --height 512 --ram 1GiB
    .venv/bin/python -m tools.bench_memory --widths 1024,8192 --ram 740MiB --json out/bench_memory/disk.json
    .venv/bin/python -m tools.bench_memory --model DIR --device cuda --vram 8GiB --ram 32GiB --widths 4096
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from tools.bench_memory_report import print_tables, rt_const, summarize
from tools.harness import (
    MIB,
    SR,
    WRAPPER,
    add_run_arguments,
    child_env,
    imports_only,
    make_model_dir,
    parse_ints,
    read_manifest,
    run_child,
    shown,
    split_times,
    synthetic_lr_png,
    tree_bytes,
)

# what a job imports, and nothing else: the floor under every job's RSS
IMPORTS_ONLY = imports_only(["torch", "numpy", "zarr", "PIL.Image", "streamsr.cli", "streamsr.jobs.run",
                             "streamsr.jobs.executor", "streamsr.jobs.flows", "streamsr.api", "streamsr.core.model",
                             "streamsr.io.read"])
EXTRA_ENV: dict[str, str] = {}  # --child-env


# ---- arguments -------------------------------------------------------------------------------------
def parse_budgets(text: str) -> list[str]:
    from streamsr.stream.memory import parse_size  # torch-free

    labels = [v.strip() for v in text.split(",") if v.strip()]
    for label in labels:
        try:
            parse_size(label)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return labels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], conflict_handler="resolve",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", type=Path, help="model dir (default: a tiny random model made under --workdir)")
    p.add_argument("--widths", type=parse_ints, default=[1024, 2048, 4096, 8192],
                   help="output widths in px, comma separated (LR width = width/4)")
    p.add_argument("--height", type=int, default=512, help="output height in px (default 512)")
    p.add_argument("--ram", type=parse_budgets, default=["1GiB"],
                   help="host budgets, comma separated (default 1GiB); each is passed as --ram")
    p.add_argument("--vram", type=parse_budgets, default=None,
                   help="device budgets for --device cuda, comma separated; each is passed as --vram")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--backend", choices=("sdpa", "reference", "xformers"), default="sdpa")
    p.add_argument("--steps", type=int, default=1, help="sampler steps of the job (default 1: one sweep)")
    # --threads (1: the machine is shared), --seed, --std, --workdir, --timeout, --poll, --keep, --json
    add_run_arguments(p, "out/bench_memory", threads=1, poll=0.1, timeout=540.0)
    p.add_argument("--json", type=Path, help="results file (default WORKDIR/bench_memory.json)")  # resolves
    p.add_argument("--child-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment of every child, repeatable (e.g. MALLOC_MMAP_THRESHOLD_=131072 to "
                        "see how much of the RSS is glibc heap retention)")
    p.add_argument("--no-sweep", action="store_true", help="skip the TensorBytes sweep child")
    p.add_argument("--no-baseline", action="store_true", help="skip the two baseline children")
    p.add_argument("--flat-target", type=float, default=1.10, help="max/min peak RSS across widths (1.10)")
    p.add_argument("--pred-target", type=float, default=0.15, help="allowed |predicted/measured - 1| (0.15)")
    p.add_argument("--sweep-child", type=Path, help=argparse.SUPPRESS)  # internal: run one measured sweep
    return p


# ---- inputs ----------------------------------------------------------------------------------------
def tiny_config():
    from streamsr.config import ModelConfig

    return ModelConfig(block_size=64, patch_size=4, hidden=64, heads=4, layers=2, mlp_hidden=256, lr_patch=2,
                       vector_dim=0)


def model_config(model_dir: Path):
    """The ModelConfig of a model dir, read like streamsr.weights.read_model_config but without importing
    torch (this process's high-water mark is the floor of every child's wait4 peak: harness.run_child)."""
    from streamsr.config import ModelConfig

    data = json.loads((model_dir / "config.json").read_text())
    return ModelConfig.from_dict({k: v for k, v in data.items() if not k.startswith("_")})


# ---- one child -------------------------------------------------------------------------------------
def measure(cmd: list[str], args, report: Path | None = None, job: Path | None = None,
            spill: Path | None = None) -> dict:
    """harness.run_child, plus the polled VmRSS per job phase (JOBDIR/job.json's status) and the polled
    peak size of the spill dir."""
    phase_rss: dict[str, int] = {}
    spill_peak = 0

    def on_sample(_t: float, st: dict[str, int]) -> None:
        nonlocal spill_peak
        if job is not None:
            m = read_manifest(job)  # harness.read_manifest: job.json as a plain dict, None before it exists
            phase = "create" if m is None or m.get("status") == "created" else m.get("status", "?")
            phase_rss[phase] = max(phase_rss.get(phase, 0), st["VmRSS"])
        if spill is not None and spill.is_dir():
            spill_peak = max(spill_peak, tree_bytes(spill))

    res = run_child(cmd, child_env(args.threads, args.device.startswith("cuda"), EXTRA_ENV), args.poll,
                    args.timeout, report, on_sample=on_sample, kill_after=60)
    res["phase_rss_mib"] = {k: v / 1024 for k, v in phase_rss.items()}
    res["spill_polled_peak_mib"] = spill_peak / MIB if spill is not None else None
    return res


# ---- the sweep child ---------------------------------------------------------------------------------
def sweep_child(spec_path: Path) -> int:
    """One streamed sweep under TensorBytes (and CUDA peak stats), as tests/test_memory.py measures it."""
    spec = json.loads(spec_path.read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    from streamsr import api
    from streamsr.core.attention import get_kernel
    from streamsr.core.conditioning import lr_windows
    from streamsr.core.denoiser import embedding
    from streamsr.core.grid import image_to_blocks
    from streamsr.stream.engine import denoise_batch
    from streamsr.stream.frontier import Frontier
    from streamsr.stream.planner import BatchShape, Grid, batch_box, frontier_bound, frontier_plan
    from tools.memtrace import TensorBytes

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    model = api.load_model(spec["model_dir"], device=device, dtype=dtype)
    cfg = model.cfg
    h, w = spec["out_hw"]
    g = torch.Generator().manual_seed(spec["seed"])
    lr = torch.rand(1, 3, h // SR, w // SR, generator=g) * 2 - 1  # stays on the host, as the job's store LR
    up = api.upsample_full(lr).to(device)
    x = torch.randn(1, 3, h, w, generator=g).to(device)
    vector = torch.randn(1, cfg.vector_dim, generator=g).to(device) if cfg.vector_dim else None
    grid, shape = Grid(h // cfg.block_size, w // cfg.block_size), BatchShape(*spec["batch"])
    plan = frontier_plan(grid, shape)
    sigma = torch.tensor([1.0], device=device)
    spill = Path(spec["spill_dir"]) if spec["placement"] == "disk" else None
    kernel = get_kernel(spec["backend"])
    with torch.no_grad():
        emb = embedding(model, sigma, vector)
    if cuda:
        torch.cuda.synchronize(device)
        cuda_base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with TensorBytes() as tb, torch.no_grad():
        base = tb.held
        frontier = Frontier(frontier_bound(grid, shape), cfg.layers, spec["placement"], device, spill)
        for batch_plan in plan.batch_plans():  # denoise_batch stages the next batch's K/V, as in a job
            y0, y1, x0, x1 = batch_box(batch_plan.batch, cfg.block_size)
            denoise_batch(model, image_to_blocks(x[..., y0:y1, x0:x1], cfg.block_size),
                          image_to_blocks(up[..., y0:y1, x0:x1], cfg.block_size), sigma=sigma, emb=emb,
                          windows=lr_windows(lr, batch_plan.batch.blocks(), cfg).to(device),
                          plan=batch_plan, frontier=frontier, kernel=kernel)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    out = {"tensor_peak": tb.peak - base, "frontier_peak": frontier.peak_bytes,
           "frontier_peak_blocks": frontier.peak_blocks, "frontier_bound_blocks": frontier_bound(grid, shape),
           "staged_peak": frontier.peak_staged_bytes, "batches": len(plan.batches), "blocks": grid.rows * grid.cols,
           "seconds_traced": seconds, "left_in_frontier": len(frontier)}
    if cuda:
        out["cuda_peak"] = torch.cuda.max_memory_allocated(device) - cuda_base
        out["cuda_peak_total"] = torch.cuda.max_memory_allocated(device)
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


# ---- one case ----------------------------------------------------------------------------------------
def upscale_cmd(args, lr: Path, out: Path, model_dir: Path, job: Path, ram: str | None, vram: str | None,
                extra: list[str] = ()) -> list[str]:
    cmd = [sys.executable, "-c", WRAPPER, "upscale", str(lr), "-o", str(out), "--model", str(model_dir),
           "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype, "--backend", args.backend,
           "--job", str(job), "-q", *extra]
    if ram:
        cmd += ["--ram", ram]
    if vram:
        cmd += ["--vram", vram]
    return cmd


def run_case(args, model_dir: Path, width: int, ram: str | None, vram: str | None) -> dict:
    work = args.workdir
    lr_w, lr_h = -(-width // SR), -(-args.height // SR)
    tag = f"{width}x{args.height}_{ram or 'none'}_{vram or 'none'}"
    rec = {"width": width, "height": args.height, "ram": ram, "vram": vram, "lr": [lr_w, lr_h]}
    lr = synthetic_lr_png(lr_w, lr_h, work / f"lr_{lr_w}x{lr_h}.png", args.seed + lr_w * 7 + lr_h)
    out, job = work / f"out_{tag}.png", work / f"job_{tag}"
    shutil.rmtree(job, ignore_errors=True)
    out.unlink(missing_ok=True)
    cmd = upscale_cmd(args, lr, out, model_dir, job, ram, vram)
    rec["command"] = shown(cmd)
    print(f"  {width}x{args.height} --ram {ram}{f' --vram {vram}' if vram else ''}: job ...", end="", flush=True)
    res = measure(cmd, args, work / f"report_{tag}.json", job, job / "frontier")
    rep = res.pop("report") or {}
    rec["job"] = res
    rec["main_hwm_mib"] = rep["hwm_kib"] / 1024 if rep.get("hwm_kib") else None
    rec["cuda_max_allocated"] = rep.get("cuda_max_allocated")
    rec["cuda_max_reserved"] = rep.get("cuda_max_reserved")
    manifest = read_manifest(job)
    print(f" rc {res['rc']}, {res['wall_s']:.1f} s", end="", flush=True)
    if manifest is None or res["rc"] != 0:
        rec["status"] = (manifest or {}).get("status", "no manifest")
        rec["error"] = res["stderr_tail"].strip().splitlines()[-1] if res["stderr_tail"].strip() else ""
        print(f": {rec['error']}", flush=True)
        cleanup(args, job, out, lr)
        return rec
    rec["status"] = manifest.get("status")
    rec["plan"] = manifest["plan"]
    rec["job_config"] = {k: manifest["job"].get(k) for k in ("batch_rows", "batch_cols", "placement", "ram", "vram")}
    geo = manifest["geometry"]
    bs = geo["block_size"]
    rows, cols = -(-geo["lr_height"] * SR // bs), -(-geo["lr_width"] * SR // bs)
    rec["grid"] = [rows, cols]
    rec["hr_padded"] = [rows * bs, cols * bs]
    rec.update(split_times(manifest, res["wall_s"]))
    # the same plan predicted again here (the manifest's parts are what the job recorded)
    parts = rec["plan"]["parts"]
    if args.device.startswith("cuda"):  # TensorBytes sees CPU tensors only: there, the host-side K/V copies
        rec["pred_tensor"] = parts["frontier_host"] + parts["spill_io"]
    else:
        rec["pred_tensor"] = parts["activations"] + parts["frontier"] + parts["staging"] + parts["frontier_host"]
    rec["pred_non_runtime_host"] = rec["plan"]["host_bytes"] - parts["runtime"]
    if rec["main_hwm_mib"] is not None:
        rec["implied_runtime_mib"] = rec["main_hwm_mib"] - rec["pred_non_runtime_host"] / MIB
    cleanup(args, job, out, None)
    if not args.no_sweep:
        print(" | sweep ...", end="", flush=True)
        spec = {"model_dir": str(model_dir), "device": args.device, "dtype": args.dtype, "backend": args.backend,
                "out_hw": rec["hr_padded"], "batch": rec["plan"]["batch"], "placement": rec["plan"]["placement"],
                "spill_dir": str(work / f"spill_{tag}"), "seed": args.seed, "threads": args.threads,
                "result": str(work / f"sweep_{tag}.json")}
        spec_path = work / f"sweep_spec_{tag}.json"
        spec_path.write_text(json.dumps(spec))
        Path(spec["result"]).unlink(missing_ok=True)
        sres = measure([sys.executable, "-m", "tools.bench_memory", "--sweep-child", str(spec_path)], args)
        sres.pop("report", None)
        rec["sweep_child"] = sres
        if sres["rc"] == 0 and Path(spec["result"]).exists():
            rec["sweep"] = json.loads(Path(spec["result"]).read_text())
            sw = rec["sweep"]
            rec["tensor_err"] = rec["pred_tensor"] / sw["tensor_peak"] - 1 if sw["tensor_peak"] else None
            # a disk frontier's staged K/V are views of np.fromfile buffers (torch.from_numpy): no op makes
            # them, so TensorBytes never sees them; Frontier.peak_staged_bytes counts them
            untracked = sw["staged_peak"] if rec["plan"]["placement"] == "disk" else 0
            rec["tensor_measured_adj"] = sw["tensor_peak"] + untracked
            rec["tensor_err_adj"] = (rec["pred_tensor"] / rec["tensor_measured_adj"] - 1
                                     if rec["tensor_measured_adj"] else None)
            pred_front = parts["frontier"] + parts["frontier_host"] + rec["plan"]["disk_bytes"]
            rec["frontier_err"] = pred_front / sw["frontier_peak"] - 1 if sw["frontier_peak"] else None
            if "cuda_peak" in sw:
                dev = parts["activations"] + parts["frontier"] + parts["staging"]
                rec["cuda_sweep_err"] = dev / sw["cuda_peak"] - 1 if sw["cuda_peak"] else None
            print(f" {sres['wall_s']:.1f} s", flush=True)
        else:
            print(f" FAILED rc {sres['rc']}:\n{sres['stderr_tail']}", flush=True)
        Path(spec["result"]).unlink(missing_ok=True)
        spec_path.unlink(missing_ok=True)
        shutil.rmtree(spec["spill_dir"], ignore_errors=True)
    else:
        print(flush=True)
    if rec.get("cuda_max_allocated"):
        rec["cuda_job_err"] = rec["plan"]["device_bytes"] / rec["cuda_max_allocated"] - 1
    if not args.keep:
        lr.unlink(missing_ok=True)
    return rec


def cleanup(args, job: Path, out: Path, lr: Path | None) -> None:
    if args.keep:
        return
    shutil.rmtree(job, ignore_errors=True)
    out.unlink(missing_ok=True)
    if lr is not None:
        lr.unlink(missing_ok=True)


def baselines(args, model_dir: Path, mcfg) -> dict:
    """Imports only; and the smallest real upscale (one block, batch 1x1, frontier on the device)."""
    work = args.workdir
    imp = measure([sys.executable, "-c", IMPORTS_ONLY], args, work / "report_imports.json")
    rep = imp.pop("report") or {}
    imp["main_hwm_mib"] = rep["hwm_kib"] / 1024 if rep.get("hwm_kib") else None
    lb = mcfg.lr_block_size
    lr = synthetic_lr_png(lb, lb, work / "lr_min.png", args.seed + lb * 7 + lb)
    job, out = work / "job_min", work / "out_min.png"
    shutil.rmtree(job, ignore_errors=True)
    cmd = upscale_cmd(args, lr, out, model_dir, job, None, None, ["--batch", "1x1", "--frontier", "device"])
    mini = measure(cmd, args, work / "report_min.json", job)
    rep = mini.pop("report") or {}
    mini["command"] = shown(cmd)
    mini["main_hwm_mib"] = rep["hwm_kib"] / 1024 if rep.get("hwm_kib") else None
    mini["rss_anon_mib"] = rep["rss_anon_kib"] / 1024 if rep.get("rss_anon_kib") else None
    mini["rss_file_mib"] = rep["rss_file_kib"] / 1024 if rep.get("rss_file_kib") else None
    m = read_manifest(job)
    if m is not None:
        mini["plan"] = m["plan"]
        mini["pred_non_runtime_host_mib"] = (m["plan"]["host_bytes"] - m["plan"]["parts"]["runtime"]) / MIB
        mini.update(split_times(m, mini["wall_s"]))
    cleanup(args, job, out, lr)
    return {"imports_only": imp, "min_upscale": mini}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sweep_child:
        return sweep_child(args.sweep_child)
    for item in args.child_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--child-env wants KEY=VALUE, got {item!r}")
        EXTRA_ENV[key] = value
    if args.vram and not args.device.startswith("cuda"):
        print("note: --vram only matters with --device cuda; passed through anyway", file=sys.stderr)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    # the tiny model is made in a child: torch stays out of this process until every child has run
    model_dir = (args.model.resolve() if args.model else
                 make_model_dir(tiny_config(), args.workdir / "model", args.seed, args.std))
    mcfg = model_config(model_dir)
    print(f"model: {model_dir} ({'given' if args.model else 'tiny random'}: block {mcfg.block_size}, patch "
          f"{mcfg.patch_size}, hidden {mcfg.hidden}, heads {mcfg.heads}, layers {mcfg.layers}, mlp {mcfg.mlp_hidden}, "
          f"vector {mcfg.vector_dim}); {args.device} {args.dtype} {args.backend}; steps {args.steps}; "
          f"threads {args.threads}; height {args.height}"
          + (f"; child env {EXTRA_ENV}" if EXTRA_ENV else ""), flush=True)
    base = None
    if not args.no_baseline:
        print("  baselines ...", end="", flush=True)
        base = baselines(args, model_dir, mcfg)
        print(f" imports-only {base['imports_only'].get('main_hwm_mib') or float('nan'):.1f} MiB, smallest upscale "
              f"{base['min_upscale'].get('main_hwm_mib') or float('nan'):.1f} MiB", flush=True)
    records = []
    for ram in args.ram:
        for vram in (args.vram or [None]):
            for width in args.widths:
                records.append(run_case(args, model_dir, width, ram, vram))
    print()
    for r in records:
        if "command" in r:
            print(f"  $ {r['command']}")
    print_tables(records, args.device.startswith("cuda"))
    summary = summarize(records, base, args)
    path = (args.json or args.workdir / "bench_memory.json").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    import torch

    meta = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "cpus": os.cpu_count(), "threads": args.threads, "model_dir": str(model_dir), "model": mcfg.to_dict(),
            "device": args.device, "dtype": args.dtype, "backend": args.backend, "steps": args.steps,
            "height": args.height, "widths": args.widths, "ram": args.ram, "vram": args.vram,
            "runtime_host_bytes_const": rt_const(), "child_env": EXTRA_ENV}
    path.write_text(json.dumps({"meta": meta, "baseline": base, "runs": records, "summary": summary},
                               indent=1, default=str))
    print(f"\nwrote {path}")
    return 0 if all(r["job"]["rc"] == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
