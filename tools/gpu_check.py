"""The prepared GPU check (issue 11): one command, one table, under 8 minutes on one H100/H200-class GPU.

Rows: bf16 vs fp32 parity of a streamed sweep with the official-size config (random weights) at
1024x1024, and streamed == full in fp32; block-evals/s and model FLOP utilisation (analytic FLOPs,
`sweep_flops`) of streamed sweeps at 2048x2048 and 4096x4096 outputs; measured peak VRAM
(torch.cuda.max_memory_allocated) against the memory planner's prediction under --vram 8GiB with the
frontier on the host (pinned, side-stream copies) and on disk, and the pinned bytes against the plan; the
CUDA context against the plan's constant; the engine overhead (GPU idle share) of a real `streamsr
upscale` job, from the manifest's model seconds against its total; implicit syncs counted with
torch.cuda.set_sync_debug_mode("warn"); host and disk frontiers against the device frontier (max abs
diff); the official reference kits in fp32 (IEEE, no TF32) on CUDA.

`--reduced` (the default without CUDA) runs every row it can on the CPU with a tiny config and sizes, in
seconds, and marks the CUDA-only rows "n/a (no CUDA)"; tests/test_gpu_check.py runs it so it cannot rot.

Running it on the GPU machine (Python 3.12, no package registry), from the repository root:
  here:    echo /.whl/ >> .git/info/exclude; bash ../shared/tools/gpu-wheels.sh .whl
           echo /.kits/ >> .git/info/exclude; cp -r ../shared/reference/infdit .kits  # ../shared does not travel
  device:  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
           export PYTHONPATH=/tmp/site:$PWD; python3 -m tools.gpu_check
  (with the device tool: carry [".whl", ".kits"]; add --json $OUT/gpu_check.json to keep the numbers)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.harness import GIB, REPO, random_inputs, read_manifest, synthetic_lr_png

NO_CUDA = "n/a (no CUDA)"
PEAKS = (("H100 PCIe", 756e12, 51e12), ("H200", 989e12, 67e12), ("H100", 989e12, 67e12),
         ("A100", 312e12, 19.5e12))  # device name part -> dense bf16, fp32 (no TF32) FLOP/s
KEYS = ("parity_bf16_fp32", "stream_vs_full_fp32", "throughput_small", "throughput_large", "vram_host",
        "vram_disk", "cuda_context", "job_overhead", "syncs", "host_vs_device", "kits_fp32")


@dataclass
class Row:
    """One line of the table."""

    key: str
    check: str
    value: str
    expected: str
    status: str  # ok, FAIL, info, below target, n/a (...)
    number: float | None = None  # the headline number (tests read it)


@dataclass(frozen=True)
class Setup:
    """What the checks run on: device, config and sizes (the official ones, or tiny with --reduced)."""

    device: str
    cuda: bool
    reduced: bool
    cfg: object  # streamsr.config.ModelConfig
    parity_side: int  # grid side (blocks) of the parity, host-vs-device and sync rows
    throughput_sides: tuple[int, int]
    vram_sides: tuple[int, int]  # host, disk
    vram_batch: tuple[int, int] | None  # None: the planner's choice under the budget
    vram_budget: int
    job_lr: int  # LR side of the job
    kits: Path | None
    workdir: Path
    peak_bf16: float | None


# ---- FLOPs -------------------------------------------------------------------------------------------
def block_flops(cfg) -> int:
    """Matmul and convolution FLOPs (2 per multiply-add) of one block in one denoiser evaluation."""
    t, c, m, tw = cfg.block_tokens, cfg.hidden, cfg.mlp_hidden, cfg.lr_window_tokens
    layer = 2 * t * c * 3 * c + 2 * t * c * c + 2 * 2 * t * c * m + 2 * 2 * t * 4 * t * c  # qkv, proj, mlp, UniBA
    cross = 2 * t * c * c * 2 + 2 * tw * c * 2 * c + 2 * 2 * t * tw * c + 2 * tw * c * 3 * cfg.lr_patch ** 2
    ends = 2 * t * c * 6 * cfg.patch_size ** 2 + 2 * t * c * cfg.out_per_token  # patch embed, final linear
    return cfg.layers * layer + cross + ends


def sweep_flops(cfg, blocks: int, batches: int) -> int:
    """FLOPs of one streamed sweep (one image): per block, per batch (adaLN of every layer and the final
    layer), per sweep (time and vector embedding)."""
    c = cfg.hidden
    per_batch = cfg.layers * 2 * c * 4 * c + 2 * c * 2 * c
    per_sweep = 2 * 2 * cfg.time_freqs * c + 2 * c * c + ((2 * cfg.vector_dim * c + 2 * c * c) if cfg.vector_dim else 0)
    return blocks * block_flops(cfg) + batches * per_batch + per_sweep


# ---- helpers -----------------------------------------------------------------------------------------
def build_model(cfg, device, seed: int = 0):
    """A random model (std 1/sqrt(hidden): activations stay O(1) through every layer), built on `device`."""
    import torch

    from streamsr.core.model import InfDiT

    with torch.device(device):
        model = InfDiT.from_model_config(cfg)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, cfg.hidden ** -0.5, generator=gen)
    return model.eval()


def inputs(setup: Setup, side: int, rows: int | None = None):
    x, lr, vector = random_inputs(setup.cfg, rows or side, side)
    return x.to(setup.device), lr.to(setup.device), None if vector is None else vector.to(setup.device)


def sweep(model, data, batch, placement="device", spill=None):
    from streamsr import api

    x, lr, vector = data
    return api.denoise(model, x, 1.0, lr=lr, vector=vector, mode="stream", batch=batch, placement=placement,
                       spill_dir=spill)


def sync(setup: Setup) -> None:
    if setup.cuda:
        import torch

        torch.cuda.synchronize()


def fmt(x: float) -> str:
    return f"{x:.2e}"


class FrontierSpy:
    """Keeps the frontiers that streamed sweeps make (engine.Frontier), to read their host buffers."""

    def __enter__(self):
        from streamsr.stream import engine

        self.made, self._engine, self._cls = [], engine, engine.Frontier
        made = self.made

        class Spied(engine.Frontier):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(self)

        engine.Frontier = Spied
        return self

    def __exit__(self, *exc):
        self._engine.Frontier = self._cls
        for f in self.made:
            f.close()


# ---- the checks --------------------------------------------------------------------------------------
def check_parity(setup: Setup, state: dict) -> list[Row]:
    """fp32 and bf16 streamed sweeps of the same weights; streamed == full in fp32."""
    import torch

    from streamsr import api

    model = build_model(setup.cfg, setup.device)
    data = inputs(setup, setup.parity_side)
    out32 = sweep(model, data, (2, 2))
    x, lr, vector = data
    full = api.denoise(model, x, 1.0, lr=lr, vector=vector, mode="full", backend="sdpa")
    err_full = (out32 - full).abs().max().item()
    del full
    if setup.cuda:  # the other checks run bf16 on CUDA, fp32 on a CPU
        model16 = state["model"] = model.to(torch.bfloat16)  # in place: the same weights, rounded
    else:
        import copy

        state["model"], model16 = model, copy.deepcopy(model).to(torch.bfloat16)
    out16 = sweep(model16, data, (2, 2))
    rel = ((out16 - out32).abs().max() / out32.abs().max()).item()
    side = setup.parity_side * setup.cfg.block_size
    return [Row("parity_bf16_fp32", f"bf16 vs fp32, streamed {side}x{side}", f"max rel {fmt(rel)} (max abs "
                f"{fmt((out16 - out32).abs().max().item())})", "rel <= 5e-2", "ok" if rel <= 5e-2 else "FAIL", rel),
            Row("stream_vs_full_fp32", f"streamed == full, fp32 {side}x{side}", f"max abs {fmt(err_full)}",
                "<= 1e-4", "ok" if err_full <= 1e-4 else "FAIL", err_full)]


def check_throughput(setup: Setup, state: dict) -> list[Row]:
    import torch

    from streamsr.stream import memory

    model, rows = state["model"], []
    free = torch.cuda.mem_get_info()[0] if setup.cuda else None
    itemsize = 2 if setup.cuda else 4
    for key, side in zip(("throughput_small", "throughput_large"), setup.throughput_sides):
        size = side * setup.cfg.block_size
        plan = memory.plan(setup.cfg, itemsize, (size, size), free, None, "cuda" if setup.cuda else "cpu")
        warm = inputs(setup, min(side, 2 * plan.batch[1]), rows=min(side, 2 * plan.batch[0]))
        sweep(model, warm, plan.batch)  # kernels, cuBLAS/cuDNN handles and autotuning out of the timing
        data = inputs(setup, side)
        sync(setup)
        start = time.perf_counter()
        sweep(model, data, plan.batch)
        sync(setup)
        seconds = time.perf_counter() - start
        batches = -(-side // plan.batch[0]) * -(-side // plan.batch[1])
        flops = sweep_flops(setup.cfg, side * side, batches) / seconds
        label = f"block-evals/s and MFU, {'bf16' if setup.cuda else 'fp32'} {size}x{size}"
        speed = f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e11 else f"{flops / 1e9:.2f} GFLOP/s"
        rate = f"{side * side / seconds:.1f} block-evals/s, {speed}, batch {plan.batch[0]}x{plan.batch[1]}"
        if not setup.cuda or not setup.peak_bf16:
            rows.append(Row(key, label, rate + f", MFU {NO_CUDA if not setup.cuda else 'n/a (unknown peak)'}",
                            ">= 40% MFU (bf16, 4096)", "info", side * side / seconds))
        else:
            mfu = flops / setup.peak_bf16
            rows.append(Row(key, label, rate + f", MFU {100 * mfu:.1f}%", ">= 40% MFU (bf16, 4096)",
                            "ok" if mfu >= 0.4 else "below target", mfu))
    return rows


def check_vram(setup: Setup, state: dict) -> list[Row]:
    """Measured peak against the plan for a host and a disk frontier under the --vram budget."""
    import torch

    from streamsr.stream import memory
    from tools.memtrace import TensorBytes

    model, rows = state["model"], []
    device_type, itemsize = ("cuda", 2) if setup.cuda else ("cpu", 4)
    for placement, side in zip(("host", "disk"), setup.vram_sides):
        size = side * setup.cfg.block_size
        pred = memory.plan(setup.cfg, itemsize, (size, size), setup.vram_budget if setup.cuda else None, None,
                           device_type, batch=setup.vram_batch, placement=placement)
        data = inputs(setup, side)
        image = data[0].numel() * 4  # the in-memory API's output image (a job streams it instead)
        spill = Path(tempfile.mkdtemp(prefix="spill-", dir=setup.workdir))
        with FrontierSpy() as spy:
            if setup.cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                sweep(model, data, pred.batch, placement, spill)
                measured, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
                # the allocator does not see the context; it does see the input images and the output
                bound = pred.device_bytes - pred.parts["cuda_context"] + sum(t.numel() * 4 for t in data
                                                                             if t is not None) + image
            else:
                with TensorBytes() as tb:
                    base = tb.held
                    sweep(model, data, pred.batch, placement, spill)
                measured, reserved = tb.peak - base, None
                bound = pred.device_bytes - pred.parts["weights"] + pred.parts["frontier_host"] + image
            pinned = sum(f.host_buffer_bytes for f in spy.made)
            pinning = spy.made[0].copier.pinning if spy.made else "?"
        ratio = measured / bound
        b = memory.format_bytes
        value = (f"{b(measured)} of {b(bound)} predicted, images included ({100 * ratio:.0f}%)"
                 + (f", reserved {b(reserved)}" if reserved is not None else "")
                 + f"; host buffer {b(pinned)} ({pinning}), plan "
                 f"{b(pred.parts['frontier_host' if placement == 'host' else 'spill_io'])}"
                 + f"; batch {pred.batch[0]}x{pred.batch[1]}")
        budget = f"--vram {setup.vram_budget / GIB:.0f}GiB" if setup.cuda else "CPU tensors"
        rows.append(Row(f"vram_{placement}", f"peak memory vs plan, frontier on {placement}, {size}x{size}, {budget}",
                        value, "measured <= predicted", "ok" if ratio <= 1 else "FAIL", ratio))
    return rows


def check_context(setup: Setup, state: dict) -> list[Row]:
    from streamsr.stream.memory import CUDA_CONTEXT_BYTES

    check = "CUDA context vs the plan's constant"
    if not setup.cuda:
        return [Row("cuda_context", check, NO_CUDA, f"<= {CUDA_CONTEXT_BYTES >> 20} MiB", NO_CUDA)]
    import torch

    free, total = torch.cuda.mem_get_info()
    context = total - free - torch.cuda.memory_reserved()  # this process's memory outside the allocator
    return [Row("cuda_context", check, f"{context / 2 ** 20:.0f} MiB (other processes included, if any)",
                f"<= {CUDA_CONTEXT_BYTES >> 20} MiB", "ok" if context <= CUDA_CONTEXT_BYTES else "FAIL",
                context / CUDA_CONTEXT_BYTES)]


def job_model_dir(setup: Setup, state: dict) -> Path:
    """A random model dir of the check's size without a semantic vector (no encoder weights needed)."""
    if "job_model" not in state:
        from dataclasses import replace

        path = setup.workdir / "model"
        build_model(replace(setup.cfg, vector_dim=0), setup.device, seed=1).to("cpu").save_pretrained(path)
        state["job_model"] = path
    return state["job_model"]


def run_job(setup: Setup, state: dict, lr_side: int, name: str) -> tuple[dict, float]:
    from streamsr.cli import main

    lr = synthetic_lr_png(lr_side, lr_side, setup.workdir / f"{name}.png", seed=0)
    job = setup.workdir / f"{name}-job"
    args = ["upscale", str(lr), "-o", str(setup.workdir / f"{name}-out.png"), "--model",
            str(job_model_dir(setup, state)), "--job", str(job), "--keep-job", "-q", "--steps", "1",
            "--sampler", "euler", "--device", setup.device, "--dtype", "bf16" if setup.cuda else "fp32"]
    start = time.perf_counter()
    if main(args) != 0:
        raise RuntimeError(f"streamsr {' '.join(args)} failed")
    return read_manifest(job), time.perf_counter() - start


def check_job(setup: Setup, state: dict) -> list[Row]:
    manifest, wall = run_job(setup, state, setup.job_lr, "job")
    secs = manifest["seconds"]
    model, total = float(secs.get("model", 0.0)), float(secs["total"])
    overhead = 1 - model / total
    blocks = int(manifest["model_blocks_done"])
    side = setup.job_lr * 4
    value = (f"{100 * overhead:.1f}% idle: model {model:.2f} s of {total:.2f} s run ({wall:.1f} s wall), "
             f"{1000 * (total - model) / blocks:.2f} ms engine per block")
    status = ("ok" if overhead < 0.05 else "above target") if setup.cuda else "info"
    return [Row("job_overhead", f"engine overhead of a job, {side}x{side}, 1 Euler step", value, "< 5% of the job",
                status, overhead)]


def check_syncs(setup: Setup, state: dict) -> list[Row]:
    check = "implicit syncs (sync_debug_mode warn)"
    if not setup.cuda:
        return [Row("syncs", check, NO_CUDA, "0 per batch", NO_CUDA)]
    import torch

    def count(fn) -> int:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in seen)

    model, data = state["model"], inputs(setup, setup.parity_side)
    batches = (setup.parity_side // 2) ** 2
    spill = Path(tempfile.mkdtemp(prefix="spill-", dir=setup.workdir))
    found = {p: count(lambda p=p: sweep(model, data, (2, 2), p, spill)) for p in ("device", "host", "disk")}
    job = count(lambda: run_job(setup, state, max(setup.job_lr // 4, setup.cfg.lr_block_size), "sync"))
    value = ", ".join(f"sweep {p} {n} ({n / batches:.1f}/batch)" for p, n in found.items()) + f"; small job {job}"
    return [Row("syncs", check, value, "0 per batch", "info", found["device"] / batches)]


def check_host_vs_device(setup: Setup, state: dict) -> list[Row]:
    model, data = state["model"], inputs(setup, setup.parity_side)
    ref = sweep(model, data, (2, 2))
    spill = Path(tempfile.mkdtemp(prefix="spill-", dir=setup.workdir))
    diffs = {p: (sweep(model, data, (2, 2), p, spill) - ref).abs().max().item() for p in ("host", "disk")}
    worst = max(diffs.values())
    side = setup.parity_side * setup.cfg.block_size
    return [Row("host_vs_device", f"host/disk frontier vs device, {side}x{side}",
                ", ".join(f"{p} max abs {d:.1e}" for p, d in diffs.items()), "== 0", "ok" if worst <= 1e-6 else "FAIL",
                worst)]


def check_kits(setup: Setup, state: dict) -> list[Row]:
    """The official kits (FACTS.md section 7) in fp32: denoiser (full and streamed, reference and sdpa
    attention) and the 20-step Heun sampler, against the official outputs."""
    check = f"official kits, fp32 on {setup.device}"
    if setup.kits is None:
        return [Row("kits_fp32", check, "n/a (no kits: --kits DIR, or copy them to .kits)", "<= 1e-4", "n/a (no kits)")]
    import torch
    from safetensors.torch import load_file

    from streamsr import api
    from streamsr.convert import convert_infdit
    from streamsr.core.precision import fp32_is_ieee
    from streamsr.weights import load_model

    modes = (("full", (1, 1)), ("stream", (1, 1)), ("stream", (2, 3)))
    runs = [(backend, mode, batch) for backend in ("reference", "sdpa") for mode, batch in modes]
    if setup.reduced:  # the reference attention is slow on a CPU; tests/test_kits.py runs the rest there
        runs = [("reference", "full", (1, 1)), ("sdpa", "stream", (2, 3))]
    worst = {"reference": 0.0, "sdpa": 0.0} | ({} if setup.reduced else {"sampler": 0.0})
    for name in ("kit_2x2",) if setup.reduced else ("kit_2x2", "kit_2x3"):
        kit = setup.kits / name
        out_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=setup.workdir)) / "model"
        convert_infdit(kit / "weights.safetensors", out_dir)
        model = load_model(out_dir, device=setup.device, dtype=torch.float32)  # IEEE fp32 on CUDA
        inp = {k: v.to(setup.device) for k, v in load_file(kit / "inputs.safetensors").items()}
        out = {k: v.to(setup.device) for k, v in load_file(kit / "outputs.safetensors").items()}
        cases = [(inp["x_noisy"], inp["sigma"], out["denoised_full"])] + [
            (out[f"x_noisy_{t}"], float(t[1:]), out[f"denoised_full_{t}"]) for t in ("s40", "s0.05")]
        for backend, mode, batch in runs:
            for x, sigma, expected in cases:
                d = api.denoise(model, x, sigma, lr=inp["lr"], vector=inp["vector"], concat_lr=inp["concat_lr"],
                                mode=mode, batch=batch, backend=backend)
                worst[backend] = max(worst[backend], (d - expected).abs().max().item())
        if "sampler" in worst and name == "kit_2x2":
            for mode, batch in (("full", (1, 1)), ("stream", (2, 2))):
                x0 = api.sample(model, inp["lr"], vector=inp["vector"], steps=20, sampler="heun",
                                init_noise=inp["init_noise"], mode=mode, batch=batch)
                worst["sampler"] = max(worst["sampler"], (x0 - out["sample_full"]).abs().max().item())
    top = max(worst.values())
    ieee = f", IEEE fp32: {'yes' if fp32_is_ieee() else 'NO'}" if setup.cuda else ""
    return [Row("kits_fp32", check, ", ".join(f"{k} {fmt(v)}" for k, v in worst.items()) + ieee, "<= 1e-4",
                "ok" if top <= 1e-4 and (not setup.cuda or fp32_is_ieee()) else "FAIL", top)]


CHECKS = (check_parity, check_throughput, check_vram, check_context, check_job, check_syncs, check_host_vs_device,
          check_kits)
OWNS = {check_parity: KEYS[0:2], check_throughput: KEYS[2:4], check_vram: KEYS[4:6], check_context: KEYS[6:7],
        check_job: KEYS[7:8], check_syncs: KEYS[8:9], check_host_vs_device: KEYS[9:10], check_kits: KEYS[10:11]}


# ---- running and printing ----------------------------------------------------------------------------
def find_kits(given: Path | None) -> Path | None:
    for path in ([given] if given else [Path(os.environ.get("STREAMSR_KITS", "")), REPO / ".kits",
                                        REPO.parent / "shared" / "reference" / "infdit"]):
        if str(path) and (path / "kit_2x2" / "weights.safetensors").is_file():
            return path
    return None


def make_setup(reduced: bool, device: str | None, workdir: Path, kits: Path | None, vram: int,
               peak_tflops: float | None) -> Setup:
    import torch
    from diffusers.utils import logging as diffusers_logging

    from streamsr.config import ModelConfig

    diffusers_logging.set_verbosity_error()  # no dtype chatter when the check casts its model to bf16
    cuda = torch.cuda.is_available() and (device or "cuda").startswith("cuda")
    device = device or ("cuda" if cuda else "cpu")
    reduced = reduced or not cuda
    peak = peak_tflops * 1e12 if peak_tflops else None
    if cuda and peak is None:
        name = torch.cuda.get_device_name()
        peak = next((bf16 for part, bf16, _ in PEAKS if part in name), None)
    if reduced:
        return Setup(device, cuda, True, ModelConfig.tiny(), 4, (4, 8), (8, 4), (2, 2), vram, 32, find_kits(kits),
                     workdir, peak)
    return Setup(device, cuda, False, ModelConfig.official(), 8, (16, 32), (16, 8), None, vram, 512, find_kits(kits),
                 workdir, peak)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_checks(setup: Setup, only: set[str] | None = None, log=note) -> list[Row]:
    """Every row of the table, in order; a check that raises gives FAIL rows with its error, the rest go on.
    The parity check always runs: it makes the model the others use."""
    import torch

    if setup.cuda:
        from streamsr.core.precision import use_ieee_fp32

        use_ieee_fp32()  # fp32 means IEEE fp32 (the parity baseline)
    state: dict = {}
    rows: list[Row] = []
    for check in CHECKS:
        keys = OWNS[check]
        if only and not (only & set(keys)) and check is not check_parity:
            continue
        start = time.perf_counter()
        try:
            got = check(setup, state)
        except Exception as exc:  # one broken check must not hide the others
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log(traceback.format_exc())
            got = [Row(k, k, f"{type(exc).__name__}: {first}", "", "FAIL") for k in keys]
        log(f"  {check.__name__}: {time.perf_counter() - start:.1f} s")
        if setup.cuda:
            torch.cuda.empty_cache()
        rows += [r for r in got if not only or r.key in only]
    return rows


def table(rows: list[Row], title: str) -> str:
    cols = [("check", [r.check for r in rows]), ("result", [r.value for r in rows]),
            ("expected", [r.expected for r in rows]), ("status", [r.status for r in rows])]
    widths = [max(len(name), *(len(v) for v in values)) for name, values in cols]
    line = " | ".join(name.ljust(w) for (name, _), w in zip(cols, widths))
    out = [title, line, "-+-".join("-" * w for w in widths)]
    out += [" | ".join(v.ljust(w) for v, w in zip((r.check, r.value, r.expected, r.status), widths)) for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--reduced", action="store_true", help="tiny config and sizes (the default without CUDA)")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--kits", type=Path, default=None, help="dir with kit_2x2/ and kit_2x3/ (default: .kits, "
                   "$STREAMSR_KITS, ../shared/reference/infdit)")
    p.add_argument("--vram", default="8GiB", help="the device budget of the peak-memory rows (default 8GiB)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for the MFU "
                   "(default: from the device name; H100/H200 989)")
    p.add_argument("--only", default=None, help=f"comma-separated rows to run: {','.join(KEYS)}")
    p.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: a temporary one, removed)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    from streamsr.stream.memory import parse_size

    only = set(args.only.split(",")) if args.only else None
    if only and only - set(KEYS):
        p.error(f"unknown rows: {', '.join(sorted(only - set(KEYS)))}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        setup = make_setup(args.reduced, args.device, workdir, args.kits, parse_size(args.vram), args.peak_tflops)
        start = time.perf_counter()
        rows = run_checks(setup, only)
        elapsed = time.perf_counter() - start
    import torch

    what = "official config, random weights" if not setup.reduced else "REDUCED: tiny config and sizes"
    name = torch.cuda.get_device_name() if setup.cuda else "CPU"
    print(table(rows, f"streamsr GPU check on {name} ({setup.device}, torch {torch.__version__}), {what}, "
                      f"{elapsed:.0f} s"))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "reduced": setup.reduced, "seconds": elapsed,
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
