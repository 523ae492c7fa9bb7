"""Check the memory planner against measurements: predicted vs measured peaks of `streamsr upscale` jobs.

For one model (a tiny random one made on the fly, or --model DIR), several output widths at a fixed
height (`--widths 1024,2048,4096,8192 --height 512`) and one or more budgets (`--ram 1GiB,740MiB`,
and `--vram` on CUDA), the script runs per case

1. the job, as a fresh child process:
       python -m streamsr upscale LR.png -o OUT.png --model M --steps 1 --ram BUDGET [--vram V]
              [--device D] [--dtype T] [--backend B] --job JOBDIR -q
   on a synthetic LR PNG of (width/4) x (height/4); no --batch and no --frontier, so the memory planner
   picks the batch and the frontier placement. The child is started as `python -c WRAPPER upscale ...`
   where WRAPPER runs the `streamsr` module as __main__ through runpy (what `python -m` does) and, once
   main() has returned (before interpreter teardown), writes its VmHWM / VmRSS (and on CUDA
   torch.cuda.max_memory_allocated / max_memory_reserved) to a file. Peak RSS is reported three ways:
     wait4    os.wait4 ru_maxrss of the child: its whole life, interpreter teardown included (exact);
     main     VmHWM when main() returned: the job itself, without teardown (exact);
     polled   the last VmHWM read from /proc/PID/status while polling every --poll seconds.
   From JOBDIR/job.json it reads the plan the job chose (`plan`: batch, placement, predicted
   device/host/disk bytes and their parts), `seconds` {model, read, write, total} and
   `model_blocks_done`: time per block = seconds.model / model_blocks_done, and the split
   model / read / write / other (other = total - model - read - write; setup = wall - total).
2. one streamed denoiser sweep of the same model, output size, batch and placement, in a second child
   (`tools/bench_memory.py --sweep-child SPEC`), under streamsr.memtrace.TensorBytes exactly as
   tests/test_memory.py::measured_sweep_bytes does (x, up(LR), weights and the time embedding exist
   before the mode is entered; the next batch's K/V is prefetched after each batch as the job's
   TaskRunner does). Measured: peak bytes held in CPU tensors during the sweep (above what existed
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

Run from the repository root (results under out/bench_memory/):

    .venv/bin/python tools/bench_memory.py --widths 1024,2048,4096,8192 --height 512 --ram 1GiB
    .venv/bin/python tools/bench_memory.py --widths 1024,8192 --ram 740MiB --json out/bench_memory/disk.json
    .venv/bin/python tools/bench_memory.py --model DIR --device cuda --vram 8GiB --ram 32GiB --widths 4096
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
SR = 4

# `python -m streamsr ARGS` through runpy, then the child's own peaks when main() has returned (before
# interpreter teardown). torch.cuda is only touched when BENCH_CUDA=1 and torch was imported by the job.
WRAPPER = """\
import json, os, runpy, sys
def _report():
    path = os.environ.get('BENCH_REPORT_FILE')
    if not path:
        return
    with open('/proc/self/status') as fh:
        vals = {l.split(':')[0]: int(l.split(':')[1].split()[0]) for l in fh
                if l.startswith(('VmHWM', 'VmRSS', 'RssAnon', 'RssFile'))}
    rep = {'hwm_kib': vals.get('VmHWM'), 'rss_kib': vals.get('VmRSS'), 'rss_anon_kib': vals.get('RssAnon'),
           'rss_file_kib': vals.get('RssFile')}
    torch = sys.modules.get('torch')
    if os.environ.get('BENCH_CUDA') == '1' and torch is not None and torch.cuda.is_initialized():
        rep['cuda_max_allocated'] = torch.cuda.max_memory_allocated()
        rep['cuda_max_reserved'] = torch.cuda.max_memory_reserved()
    with open(path, 'w') as fh:
        json.dump(rep, fh)
sys.argv[0] = 'streamsr'
try:
    runpy.run_module('streamsr', run_name='__main__', alter_sys=True)
finally:
    _report()
"""

IMPORTS_ONLY = """\
import json, os, sys
import torch, numpy, zarr, PIL.Image
import streamsr.cli, streamsr.jobs.run, streamsr.jobs.executor, streamsr.jobs.flows, streamsr.api, streamsr.core.model, streamsr.io.imageio
vals = {l.split(':')[0]: int(l.split(':')[1].split()[0]) for l in open('/proc/self/status')
        if l.startswith(('VmHWM', 'VmRSS'))}
json.dump({'hwm_kib': vals['VmHWM'], 'rss_kib': vals['VmRSS']}, open(os.environ['BENCH_REPORT_FILE'], 'w'))
"""


# ---- arguments -------------------------------------------------------------------------------------
def parse_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1024,2048, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return values


def parse_budgets(text: str) -> list[str]:
    from streamsr.stream.memory import parse_size

    labels = [v.strip() for v in text.split(",") if v.strip()]
    for label in labels:
        try:
            parse_size(label)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return labels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
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
    p.add_argument("--threads", type=int, default=1,
                   help="OMP/MKL threads of the children (default 1; the machine is shared)")
    p.add_argument("--std", type=float, default=0.1, help="std of the tiny model's redrawn weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=REPO / "out" / "bench_memory")
    p.add_argument("--json", type=Path, help="results file (default WORKDIR/bench_memory.json)")
    p.add_argument("--poll", type=float, default=0.1, help="seconds between /proc samples (default 0.1)")
    p.add_argument("--timeout", type=float, default=540.0,
                   help="SIGTERM a child after this many seconds (default 540; SIGKILL 60 s later)")
    p.add_argument("--child-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment of every child, repeatable (e.g. MALLOC_MMAP_THRESHOLD_=131072 to "
                        "see how much of the RSS is glibc heap retention)")
    p.add_argument("--no-sweep", action="store_true", help="skip the TensorBytes sweep child")
    p.add_argument("--no-baseline", action="store_true", help="skip the two baseline children")
    p.add_argument("--keep", action="store_true", help="keep job dirs, outputs and LR images")
    p.add_argument("--flat-target", type=float, default=1.10, help="max/min peak RSS across widths (1.10)")
    p.add_argument("--pred-target", type=float, default=0.15, help="allowed |predicted/measured - 1| (0.15)")
    p.add_argument("--sweep-child", type=Path, help=argparse.SUPPRESS)  # internal: run one measured sweep
    return p


# ---- inputs ----------------------------------------------------------------------------------------
def tiny_config():
    from streamsr.config import ModelConfig

    return ModelConfig(block_size=64, patch_size=4, hidden=64, heads=4, layers=2, mlp_hidden=256, lr_patch=2,
                       vector_dim=0)


def make_model_dir(path: Path, seed: int, std: float) -> Path:
    """Like tests/conftest.random_model: every parameter redrawn N(0, std), then save_pretrained."""
    import torch

    from streamsr.core.model import InfDiT

    if path.exists():
        shutil.rmtree(path)
    torch.manual_seed(seed)
    model = InfDiT.from_model_config(tiny_config())
    with torch.no_grad():
        for prm in model.parameters():
            prm.normal_(0.0, std)
    model.eval().save_pretrained(path)
    return path


def make_lr_png(width: int, height: int, path: Path, seed: int) -> Path:
    """A smooth RGB pattern plus mild noise, 8-bit, width x height."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed + width * 7 + height)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x / max(width, 1), y / max(height, 1)
    r = 0.5 + 0.3 * np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y)
    g = 0.5 + 0.3 * np.cos(2 * np.pi * (2 * x + y))
    b = 0.2 + 0.6 * x * y + 0.1 * np.sin(2 * np.pi * 5 * (x - y))
    img = np.stack([r, g, b], axis=-1) + rng.normal(0.0, 0.03, (height, width, 3)).astype(np.float32)
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB").save(path)
    return path


EXTRA_ENV: dict[str, str] = {}  # --child-env


def child_env(threads: int, cuda: bool) -> dict:
    env = {**os.environ, **EXTRA_ENV}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), BENCH_CUDA="1" if cuda else "0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


def read_manifest(job: Path) -> dict | None:
    try:
        return json.loads((job / "job.json").read_text())
    except (OSError, ValueError):
        return None


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


# ---- one child -------------------------------------------------------------------------------------
def proc_status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def run_child(cmd: list[str], env: dict, poll: float, timeout: float | None, report: Path | None = None,
              job: Path | None = None, spill: Path | None = None) -> dict:
    """Run cmd to the end: wait4 peak RSS, last polled VmHWM, polled VmRSS per job phase, the report file."""
    import tempfile

    if report is not None:
        report.unlink(missing_ok=True)
        env = {**env, "BENCH_REPORT_FILE": str(report)}
    err = tempfile.TemporaryFile()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    hwm_kib, phase_rss, spill_peak = 0, {}, 0
    stopped = killed = None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        now = time.monotonic()
        st = proc_status_kib(proc.pid)
        hwm_kib = max(hwm_kib, st.get("VmHWM", 0))
        if job is not None and "VmRSS" in st:
            m = read_manifest(job)
            phase = "create" if m is None or m.get("status") == "created" else m.get("status", "?")
            phase_rss[phase] = max(phase_rss.get(phase, 0), st["VmRSS"])
        if spill is not None and spill.is_dir():
            spill_peak = max(spill_peak, tree_bytes(spill))
        if timeout is not None and stopped is None and now - start > timeout:
            stopped = now
            proc.send_signal(signal.SIGTERM)
        if stopped is not None and killed is None and now - stopped > 60:
            killed = now
            proc.kill()
        time.sleep(poll)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: keep Popen from waiting again
    err.seek(0)
    stderr = err.read().decode(errors="replace")
    err.close()
    rep = None
    if report is not None and report.exists():
        try:
            rep = json.loads(report.read_text())
        except ValueError:
            rep = None
        report.unlink(missing_ok=True)
    return {"rc": proc.returncode, "wall_s": wall, "wait4_mib": rusage.ru_maxrss / 1024,
            "polled_hwm_mib": hwm_kib / 1024, "phase_rss_mib": {k: v / 1024 for k, v in phase_rss.items()},
            "spill_polled_peak_mib": spill_peak / MIB if spill is not None else None,
            "timed_out": stopped is not None, "report": rep, "stderr_tail": stderr[-3000:]}


# ---- the sweep child ---------------------------------------------------------------------------------
def sweep_child(spec_path: Path) -> int:
    """One streamed sweep under TensorBytes (and CUDA peak stats), as tests/test_memory.py measures it."""
    spec = json.loads(spec_path.read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    from streamsr import api
    from streamsr.core.attention import get_kernel
    from streamsr.stream.engine import batch_box, denoise_batch
    from streamsr.stream.frontier import Frontier
    from tools.memtrace import TensorBytes
    from streamsr.core.model import image_to_blocks
    from streamsr.stream.planner import BatchShape, Grid, frontier_bound, frontier_plan

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
        emb = model.embedding(sigma, vector)
    if cuda:
        torch.cuda.synchronize(device)
        cuda_base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with TensorBytes() as tb, torch.no_grad():
        base = tb.held
        frontier = Frontier(frontier_bound(grid, shape), cfg.layers, spec["placement"], device, spill)
        for b in plan.batches:
            y0, y1, x0, x1 = batch_box(b, cfg.block_size)
            denoise_batch(model, b, plan, frontier, image_to_blocks(x[..., y0:y1, x0:x1], cfg.block_size),
                          image_to_blocks(up[..., y0:y1, x0:x1], cfg.block_size), lr, sigma, emb, kernel)
            if b.index + 1 < len(plan.batches):  # TaskRunner stages the next batch's K/V after each batch
                frontier.prefetch(plan.reads(plan.batches[b.index + 1]))
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


def shown(cmd: list[str]) -> str:
    """The command as the user would type it: python -m streamsr ARGS (the wrapper is runpy of that)."""
    return "python -m streamsr " + " ".join(cmd[3:])


def split_times(manifest: dict, wall: float) -> dict:
    secs = manifest.get("seconds") or {}
    model, read, write = (float(secs.get(k, 0.0)) for k in ("model", "read", "write"))
    total = float(secs.get("total", 0.0))
    blocks = int(manifest.get("model_blocks_done", 0))
    return {"model_s": model, "read_s": read, "write_s": write, "other_s": total - model - read - write,
            "total_s": total, "setup_s": wall - total, "model_blocks_done": blocks,
            "ms_per_block": 1000 * model / blocks if blocks else float("nan")}


def run_case(args, model_dir: Path, width: int, ram: str | None, vram: str | None) -> dict:
    from streamsr.stream import memory

    work = args.workdir
    lr_w, lr_h = -(-width // SR), -(-args.height // SR)
    tag = f"{width}x{args.height}_{ram or 'none'}_{vram or 'none'}"
    rec = {"width": width, "height": args.height, "ram": ram, "vram": vram, "lr": [lr_w, lr_h]}
    lr = make_lr_png(lr_w, lr_h, work / f"lr_{lr_w}x{lr_h}.png", args.seed)
    out, job = work / f"out_{tag}.png", work / f"job_{tag}"
    shutil.rmtree(job, ignore_errors=True)
    out.unlink(missing_ok=True)
    cmd = upscale_cmd(args, lr, out, model_dir, job, ram, vram)
    rec["command"] = shown(cmd)
    print(f"  {width}x{args.height} --ram {ram}{f' --vram {vram}' if vram else ''}: job ...", end="", flush=True)
    res = run_child(cmd, child_env(args.threads, args.device.startswith("cuda")), args.poll, args.timeout,
                    work / f"report_{tag}.json", job, job / "frontier")
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
        sres = run_child([sys.executable, str(Path(__file__).resolve()), "--sweep-child", str(spec_path)],
                         child_env(args.threads, args.device.startswith("cuda")), args.poll, args.timeout)
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


def baselines(args, model_dir: Path) -> dict:
    """Imports only; and the smallest real upscale (one block, batch 1x1, frontier on the device)."""
    from streamsr.config import ModelConfig  # noqa: F401  (cheap; torch-free)
    from streamsr.weights import read_model_config

    env = child_env(args.threads, args.device.startswith("cuda"))
    work = args.workdir
    imp = run_child([sys.executable, "-c", IMPORTS_ONLY], env, args.poll, args.timeout, work / "report_imports.json")
    rep = imp.pop("report") or {}
    imp["main_hwm_mib"] = rep["hwm_kib"] / 1024 if rep.get("hwm_kib") else None
    lb = read_model_config(model_dir).lr_block_size
    lr = make_lr_png(lb, lb, work / "lr_min.png", args.seed)
    job, out = work / "job_min", work / "out_min.png"
    shutil.rmtree(job, ignore_errors=True)
    cmd = upscale_cmd(args, lr, out, model_dir, job, None, None, ["--batch", "1x1", "--frontier", "device"])
    mini = run_child(cmd, env, args.poll, args.timeout, work / "report_min.json", job)
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


# ---- report ----------------------------------------------------------------------------------------
def mib(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v / MIB:.{digits}f}"


def pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:+.1f}%"


def print_tables(records: list[dict], cuda: bool) -> None:
    ok = [r for r in records if "plan" in r]
    for r in records:
        if "plan" not in r:
            print(f"{r['width']}x{r['height']} --ram {r['ram']}: {r.get('status')} (rc {r['job']['rc']}): "
                  f"{r.get('error', '')}")
    if not ok:
        return
    print("\n(a) plan and host memory (MiB). pred host = plan host_bytes (runtime const + store_io + device terms "
          "[+ spill_io]); non-rt = pred host - runtime;\n    RSS: wait4 = whole child life, main = VmHWM when "
          "main() returned, polled = last polled VmHWM; implied rt = main - non-rt")
    head = (f"{'width':>6} {'ram':>7} {'batch':>5} {'front':>6} {'pred host':>9} {'non-rt':>7} {'wait4':>7} "
            f"{'main':>7} {'polled':>7} {'main/pred':>9} {'implied rt':>10} {'disk pred':>9} {'spill meas':>10}")
    print(head)
    print("-" * len(head))
    for r in ok:
        p = r["plan"]
        ratio = r["main_hwm_mib"] * MIB / p["host_bytes"] if r.get("main_hwm_mib") else None
        spill = r["job"].get("spill_polled_peak_mib")
        print(f"{r['width']:>6} {r['ram']:>7} {p['batch'][0]:>2}x{p['batch'][1]:<2} {p['placement']:>6} "
              f"{mib(p['host_bytes']):>9} {mib(r['pred_non_runtime_host']):>7} {r['job']['wait4_mib']:7.1f} "
              f"{r['main_hwm_mib'] or float('nan'):7.1f} {r['job']['polled_hwm_mib']:7.1f} "
              f"{'-' if ratio is None else f'{ratio:.3f}':>9} {r.get('implied_runtime_mib', float('nan')):10.1f} "
              f"{mib(p['disk_bytes'], 2):>9} {'-' if not spill else f'{spill:.2f}':>10}")
    print("\n(b) predicted device terms vs tensor bytes of one streamed sweep (MiB); pred tensor = activations + "
          "frontier + staging + frontier_host;\n    err = pred/measured - 1 (positive = over-predicted); "
          "+untracked = measured + the disk frontier's staged K/V (np.fromfile views TensorBytes cannot see);\n"
          "    front meas = Frontier.peak_bytes (wherever it lives), staged = Frontier.peak_staged_bytes")
    head = (f"{'width':>6} {'ram':>7} {'batch':>5} {'front':>6} {'weights':>7} {'activ':>7} {'frontier':>8} "
            f"{'staging':>7} {'f_host':>6} {'pred tensor':>11} {'measured':>8} {'err':>7} {'+untracked':>10} "
            f"{'err':>7} {'front pred':>10} "
            f"{'front meas':>10} {'err':>7} {'staged':>7} {'front blk':>9}")
    print(head)
    print("-" * len(head))
    for r in ok:
        p, parts, sw = r["plan"], r["plan"]["parts"], r.get("sweep") or {}
        fpred = parts["frontier"] + parts["frontier_host"] + p["disk_bytes"]
        fblk = f"{sw['frontier_peak_blocks']:.0f}/{sw['frontier_bound_blocks']}" if sw else "-"
        print(f"{r['width']:>6} {r['ram']:>7} {p['batch'][0]:>2}x{p['batch'][1]:<2} {p['placement']:>6} "
              f"{mib(parts['weights'], 2):>7} {mib(parts['activations']):>7} {mib(parts['frontier'], 2):>8} "
              f"{mib(parts['staging'], 2):>7} {mib(parts['frontier_host'], 1):>6} {mib(r['pred_tensor'], 2):>11} "
              f"{mib(sw.get('tensor_peak'), 2):>8} {pct(r.get('tensor_err')):>7} "
              f"{mib(r.get('tensor_measured_adj'), 2):>10} {pct(r.get('tensor_err_adj')):>7} {mib(fpred, 2):>10} "
              f"{mib(sw.get('frontier_peak'), 2):>10} {pct(r.get('frontier_err')):>7} "
              f"{mib(sw.get('staged_peak'), 2):>7} {fblk:>9}")
    if cuda:
        print("\n(b') CUDA: torch.cuda.max_memory_allocated (MiB); job = whole upscale vs plan device_bytes; "
              "sweep = one sweep above its start vs activations + frontier + staging")
        head = f"{'width':>6} {'vram':>7} {'pred dev':>8} {'job max':>8} {'err':>7} {'sweep pred':>10} {'sweep':>8} {'err':>7}"
        print(head)
        print("-" * len(head))
        for r in ok:
            parts, sw = r["plan"]["parts"], r.get("sweep") or {}
            dev = parts["activations"] + parts["frontier"] + parts["staging"]
            print(f"{r['width']:>6} {r['vram'] or '-':>7} {mib(r['plan']['device_bytes']):>8} "
                  f"{mib(r.get('cuda_max_allocated')):>8} {pct(r.get('cuda_job_err')):>7} {mib(dev):>10} "
                  f"{mib(sw.get('cuda_peak')):>8} {pct(r.get('cuda_sweep_err')):>7}")
    print("\n(c) time: ms/block = seconds.model / model_blocks_done; split of the task loop (seconds.total); "
          "setup = wall - total (start, imports, job creation, model load, exit)")
    head = (f"{'width':>6} {'ram':>7} {'blocks':>6} {'batch':>5} {'front':>6} {'wall s':>7} {'setup s':>7} "
            f"{'loop s':>7} {'ms/block':>8} {'model':>13} {'read':>13} {'write':>13} {'other':>13} {'sweep s':>7}")
    print(head)
    print("-" * len(head))
    for r in ok:
        p, tot = r["plan"], r["total_s"] or float("nan")
        cell = lambda k: f"{r[k]:6.2f} {100 * r[k] / tot:5.1f}%"  # noqa: E731
        sw = r.get("sweep") or {}
        print(f"{r['width']:>6} {r['ram']:>7} {r['model_blocks_done']:>6} {p['batch'][0]:>2}x{p['batch'][1]:<2} "
              f"{p['placement']:>6} {r['job']['wall_s']:7.1f} {r['setup_s']:7.1f} {r['total_s']:7.2f} "
              f"{r['ms_per_block']:8.2f} {cell('model_s')} {cell('read_s')} {cell('write_s')} {cell('other_s')} "
              f"{sw.get('seconds_traced', float('nan')):7.1f}")


def summarize(records: list[dict], base: dict | None, args) -> dict:
    ok = [r for r in records if "plan" in r]
    summary: dict = {"flatness": {}, "tensor_error": None, "host_vs_rss": None}
    print("\n(d) peak RSS flatness across widths at the same budget (target max/min <= "
          f"{args.flat_target:.2f}):")
    for ram in args.ram:
        for vram in (args.vram or [None]):
            group = [r for r in ok if r["ram"] == ram and r["vram"] == vram and r.get("main_hwm_mib")]
            if len(group) < 2:
                continue
            entry = {}
            for key, label in (("main_hwm_mib", "main HWM"), ("wait4", "wait4")):
                vals = [(r["width"], r["main_hwm_mib"] if key == "main_hwm_mib" else r["job"]["wait4_mib"])
                        for r in group]
                hi, lo = max(vals, key=lambda v: v[1]), min(vals, key=lambda v: v[1])
                ratio = hi[1] / lo[1]
                entry[key] = {"ratio": ratio, "max": hi, "min": lo, "within": ratio <= args.flat_target}
                print(f"    --ram {ram}{f' --vram {vram}' if vram else ''} {label:>8}: {hi[1]:.1f} MiB (w {hi[0]}) / "
                      f"{lo[1]:.1f} MiB (w {lo[0]}) = {ratio:.3f}x  "
                      f"{'within' if ratio <= args.flat_target else 'NOT within'} {args.flat_target:.2f}")
            summary["flatness"][f"{ram}|{vram}"] = entry
    summary["tensor_error"] = {}
    for key, label in (("tensor_err", "TensorBytes"), ("tensor_err_adj", "TensorBytes + untracked disk staging")):
        errs = [(r["width"], r["ram"], r[key]) for r in ok if r.get(key) is not None]
        if not errs:
            continue
        worst = max(errs, key=lambda e: abs(e[2]))
        within = sum(abs(e[2]) <= args.pred_target for e in errs)
        print(f"{'' if summary['tensor_error'] else chr(10)}(e) tensor-bytes prediction error (pred/measured - 1) vs "
              f"{label}, target |err| <= {100 * args.pred_target:.0f}%: {within}/{len(errs)} within; range "
              f"{pct(min(e[2] for e in errs))} .. {pct(max(e[2] for e in errs))}; worst {pct(worst[2])} (width "
              f"{worst[0]}, --ram {worst[1]}); under-predictions (measured > predicted): {sum(e[2] < 0 for e in errs)}")
        summary["tensor_error"][key] = {"min": min(e[2] for e in errs), "max": max(e[2] for e in errs),
                                        "within": within, "n": len(errs), "under": sum(e[2] < 0 for e in errs),
                                        "target": args.pred_target}
    host = [r for r in ok if r.get("main_hwm_mib")]
    if host:
        ratios = [r["main_hwm_mib"] * MIB / r["plan"]["host_bytes"] for r in host]
        wratios = [r["job"]["wait4_mib"] * MIB / r["plan"]["host_bytes"] for r in host]
        over = [r for r in host if r["job"]["wait4_mib"] * MIB > r["plan"]["host_bytes"]]
        implied = [r["implied_runtime_mib"] for r in host]
        print(f"(f) predicted host bytes vs measured RSS: main HWM / pred = {min(ratios):.3f} .. {max(ratios):.3f}; "
              f"wait4 / pred = {min(wratios):.3f} .. {max(wratios):.3f}; runs whose wait4 peak exceeded the "
              f"predicted host bytes: {len(over)}/{len(host)}")
        print(f"    implied runtime (main HWM - predicted non-runtime host terms): {min(implied):.1f} .. "
              f"{max(implied):.1f} MiB vs RUNTIME_HOST_BYTES = {rt_const() / MIB:.0f} MiB")
        summary["host_vs_rss"] = {"main_over_pred": [min(ratios), max(ratios)],
                                  "wait4_over_pred": [min(wratios), max(wratios)], "wait4_over_budget_runs": len(over),
                                  "implied_runtime_mib": [min(implied), max(implied)]}
    if base:
        imp, mini = base["imports_only"], base["min_upscale"]
        print(f"(g) baselines: imports only: VmHWM {imp.get('main_hwm_mib') or float('nan'):.1f} MiB (wait4 "
              f"{imp['wait4_mib']:.1f}); smallest upscale (one-block LR, --batch 1x1 --frontier device): main HWM {mini.get('main_hwm_mib') or float('nan'):.1f} MiB "
              f"(anon {mini.get('rss_anon_mib') or float('nan'):.1f}, file {mini.get('rss_file_mib') or float('nan'):.1f}), "
              f"wait4 {mini['wait4_mib']:.1f} MiB, wall {mini['wall_s']:.1f} s; its predicted non-runtime terms "
              f"{mini.get('pred_non_runtime_host_mib', float('nan')):.2f} MiB")
        if mini.get("main_hwm_mib"):
            rt = mini["main_hwm_mib"] - mini.get("pred_non_runtime_host_mib", 0.0)
            print(f"    -> measured runtime floor ~ {rt:.0f} MiB (main HWM) / {mini['wait4_mib'] - mini.get('pred_non_runtime_host_mib', 0.0):.0f} "
                  f"MiB (with teardown) vs RUNTIME_HOST_BYTES = {rt_const() / MIB:.0f} MiB")
            summary["runtime_floor_mib"] = {"main": rt, "wait4": mini["wait4_mib"] - mini.get("pred_non_runtime_host_mib", 0.0)}
    return summary


def rt_const() -> int:
    from streamsr.stream.memory import RUNTIME_HOST_BYTES

    return RUNTIME_HOST_BYTES


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
    model_dir = args.model.resolve() if args.model else make_model_dir(args.workdir / "model", args.seed, args.std)
    from streamsr.weights import read_model_config

    mcfg = read_model_config(model_dir)
    print(f"model: {model_dir} ({'given' if args.model else 'tiny random'}: block {mcfg.block_size}, patch "
          f"{mcfg.patch_size}, hidden {mcfg.hidden}, heads {mcfg.heads}, layers {mcfg.layers}, mlp {mcfg.mlp_hidden}, "
          f"vector {mcfg.vector_dim}); {args.device} {args.dtype} {args.backend}; steps {args.steps}; "
          f"threads {args.threads}; height {args.height}"
          + (f"; child env {EXTRA_ENV}" if EXTRA_ENV else ""), flush=True)
    base = None
    if not args.no_baseline:
        print("  baselines ...", end="", flush=True)
        base = baselines(args, model_dir)
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
