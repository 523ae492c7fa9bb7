"""Benchmark one denoiser call D(x; sigma): full-image forward vs streamed block-batch sweeps.

For each HR image size the script builds an InfDiT with random weights (every parameter perturbed by
small normal noise, so zero-initialised ones such as the slot embeddings matter too), random x, a
random LR image (HR / 4), a random semantic vector (if the model takes one) and sigma = 2.0, then
measures:

- full:   one `streamsr.api.denoise(mode="full")` call (min wall time over --repeats);
- stream: one `denoise(mode="stream")` sweep per --batch shape (min wall time over --repeats);
- max |stream - full| when both ran (the contract of DESIGN.md section 1: <= 1e-5 in fp32);
- the frontier's measured peak (SweepStats.frontier_peak_bytes / _peak_blocks / _bound_blocks) and
  the DESIGN.md section 3 estimate
      slot_bytes     = 2 * layers * tokens_per_block * hidden * itemsize
      frontier_bytes ~ (blocks_per_row + batch_height) * slot_bytes
  with the ratio measured / estimate;
- on cuda: torch.cuda.max_memory_allocated during each call (peak stats reset before each), as the
  absolute peak and as the increase over what was allocated just before the call.

Both modes get concat_lr=None, so each computes the upsampled LR itself (whole image for full, per
batch with a halo for stream): the timings are of the denoiser call as the API runs it.

Run (from the repository root):

    .venv/bin/python tools/bench_stream.py --config tiny --size 256x256,512x384 --batch 1x1 --batch 2x2
    .venv/bin/python tools/bench_stream.py --layers 4 --hidden 128 --heads 4 --block-size 64 \\
        --patch-size 4 --size 512x512 --batch 1x4 --json out/bench.json
    .venv/bin/python tools/bench_stream.py --config official --device cuda --dtype bf16 \\
        --size 4096x4096 --batch 2x2 --no-full

Full mode is skipped (with a note) under --no-full or when its rough activation estimate exceeds
--max-full-gib.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from streamsr.api import denoise
from streamsr.config import SR_SCALE, ModelConfig
from streamsr.core.attention import BACKENDS, backend_available
from streamsr.core.model import InfDiT
from streamsr.stream.engine import SweepStats
from streamsr.stream.planner import BatchShape, Grid

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SIGMA = 2.0
MIB = 2 ** 20


# ---- arguments -------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H) in HR pixels."""
    try:
        w, h = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x384 (width x height), got {text!r}") from None
    return w, h


def split_list(values: list[str]) -> list[str]:
    """Repeatable options that also take comma lists: ['a,b', 'c'] -> ['a', 'b', 'c']."""
    return [part for value in values for part in value.split(",") if part]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("tiny", "official"), default="tiny", help="base model shape")
    for name in ("layers", "hidden", "heads", "block-size", "patch-size", "mlp-hidden"):
        p.add_argument(f"--{name}", type=int, help=f"override the base config's {name.replace('-', '_')}")
    p.add_argument("--size", action="append", default=[], help="HR image WxH; repeatable or a comma list")
    p.add_argument("--batch", action="append", default=[], help="block batch RxC; repeatable or comma list")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--backend", choices=BACKENDS, default="sdpa")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (min is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weight-noise", type=float, default=0.02, help="std of the noise added to every weight")
    p.add_argument("--no-full", action="store_true", help="skip the full-image call (and the diff)")
    p.add_argument("--max-full-gib", type=float, default=16.0,
                   help="skip full mode when its rough activation estimate exceeds this")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def model_config(args) -> ModelConfig:
    """The base preset with any explicit overrides; mlp_hidden follows 4 * hidden unless given."""
    base = ModelConfig.official() if args.config == "official" else ModelConfig.tiny()
    fields = {"layers": args.layers, "hidden": args.hidden, "heads": args.heads,
              "block_size": args.block_size, "patch_size": args.patch_size, "mlp_hidden": args.mlp_hidden}
    overrides = {k: v for k, v in fields.items() if v is not None}
    if args.hidden is not None and args.mlp_hidden is None:
        overrides["mlp_hidden"] = 4 * args.hidden
    return dataclasses.replace(base, **overrides)


# ---- setup -----------------------------------------------------------------------------------------
def build_model(cfg: ModelConfig, device: str, dtype: torch.dtype, noise: float) -> InfDiT:
    """InfDiT with its default init plus N(0, noise^2) on every parameter, so nothing is trivially zero."""
    model = InfDiT.from_model_config(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * noise)
    model = model.to(device)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()  # as streamsr.api.load_model


def make_inputs(cfg: ModelConfig, width: int, height: int, device: str) -> dict:
    """Random x (1, 3, H, W), LR (1, 3, H/4, W/4) in [-1, 1] and vector (1, V) or None."""
    lr = torch.rand(1, 3, height // SR_SCALE, width // SR_SCALE, device=device) * 2 - 1
    x = torch.randn(1, 3, height, width, device=device) * SIGMA
    vector = torch.randn(1, cfg.vector_dim, device=device) if cfg.vector_dim else None
    return {"x": x, "lr": lr, "vector": vector}


# ---- estimates -------------------------------------------------------------------------------------
def slot_bytes(cfg: ModelConfig, itemsize: int) -> int:
    """DESIGN.md section 3: K and V of one block at every layer."""
    return 2 * cfg.layers * cfg.block_tokens * cfg.hidden * itemsize


def frontier_formula_bytes(cfg: ModelConfig, grid: Grid, shape: BatchShape, itemsize: int) -> int:
    """DESIGN.md section 3: (blocks_per_row + batch_height) * slot_bytes."""
    return (grid.cols + shape.rows) * slot_bytes(cfg, itemsize)


def full_activation_bytes(cfg: ModelConfig, grid: Grid, itemsize: int, backend: str) -> int:
    """A rough upper estimate of the full-image forward's live activations (one layer's worth).

    Gathered K/V slots plus the K + slot-embedding copy (~12 * hidden per token), Q/K/V and the residual
    (~4 * hidden), the MLP inner activation twice; the reference kernel also holds fp32 scores and softmax.
    """
    n, t = grid.rows * grid.cols, cfg.block_tokens
    per_token = (16 * cfg.hidden + 2 * cfg.mlp_hidden) * itemsize
    scores = 2 * n * cfg.heads * t * 4 * t * 4 if backend == "reference" else 0
    return n * t * per_token + scores


# ---- measuring -------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(call: Callable[[], torch.Tensor], args) -> tuple[torch.Tensor, dict]:
    """Run `call` --warmup times untimed, then --repeats times: the last output and {seconds (min), cuda MiB}."""
    device, repeats = args.device, args.repeats
    for _ in range(args.warmup):
        call()
    times, out, peaks = [], None, []
    for _ in range(repeats):
        out = None  # free the previous output before the next call
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        sync(device)
        start = time.perf_counter()
        out = call()
        sync(device)
        times.append(time.perf_counter() - start)
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated()
            peaks.append((peak, peak - before))
    result = {"seconds": min(times), "seconds_all": times}
    if peaks:
        result["cuda_peak_mib"] = max(p for p, _ in peaks) / MIB
        result["cuda_delta_mib"] = max(d for _, d in peaks) / MIB
    return out, result


def bench_full(model, inputs, args) -> tuple[torch.Tensor, dict]:
    out, result = measure(lambda: denoise(model, inputs["x"], SIGMA, lr=inputs["lr"], vector=inputs["vector"],
                                          mode="full", backend=args.backend), args)
    return out.cpu(), result  # off the GPU, so it does not sit in the stream runs' memory


def bench_stream(model, inputs, shape: BatchShape, grid: Grid, itemsize: int, args) -> tuple[torch.Tensor, dict]:
    stats_box: list[SweepStats] = []

    def call() -> torch.Tensor:
        stats_box[:] = [SweepStats()]
        return denoise(model, inputs["x"], SIGMA, lr=inputs["lr"], vector=inputs["vector"], mode="stream",
                       batch=shape, backend=args.backend, stats=stats_box[0])

    out, result = measure(call, args)
    stats = stats_box[0]
    formula = frontier_formula_bytes(model.cfg, grid, shape, itemsize)
    result.update(batches=stats.batches, frontier_peak_bytes=stats.frontier_peak_bytes,
                  frontier_peak_blocks=stats.frontier_peak_blocks,
                  frontier_bound_blocks=stats.frontier_bound_blocks, formula_bytes=formula,
                  measured_over_formula=stats.frontier_peak_bytes / formula)
    return out.cpu(), result


def bench_size(model, width: int, height: int, shapes: list[BatchShape], args) -> dict:
    cfg = model.cfg
    itemsize = DTYPES[args.dtype].itemsize
    grid = Grid.for_image(height, width, cfg.block_size)
    torch.manual_seed(args.seed + 1)
    inputs = make_inputs(cfg, width, height, args.device)
    record = {"size": f"{width}x{height}", "grid": f"{grid.rows}x{grid.cols}", "blocks": grid.rows * grid.cols,
              "runs": []}

    estimate = full_activation_bytes(cfg, grid, itemsize, args.backend)
    full_out = None
    if args.no_full:
        record["note"] = "full mode skipped (--no-full)"
    elif estimate > args.max_full_gib * 2 ** 30:
        record["note"] = (f"full mode skipped: ~{estimate / 2 ** 30:.3g} GiB of activations "
                          f"> --max-full-gib {args.max_full_gib}")
    else:
        with torch.inference_mode():
            full_out, result = bench_full(model, inputs, args)
        record["runs"].append({"mode": "full", "batch": "-", **result})

    for shape in shapes:
        with torch.inference_mode():
            out, result = bench_stream(model, inputs, shape, grid, itemsize, args)
        if full_out is not None:
            result["max_abs_diff"] = (out - full_out).abs().max().item()
        record["runs"].append({"mode": "stream", "batch": f"{shape.rows}x{shape.cols}", **result})
    return record


# ---- report ----------------------------------------------------------------------------------------
COLUMNS = ("size", "grid", "mode", "batch", "batches", "time s", "ms/block", "max|diff|", "front MiB",
           "peak blk", "bound blk", "formula MiB", "meas/form", "cuda peak MiB", "cuda delta MiB")


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(record: dict) -> list[tuple[str, ...]]:
    rows = []
    for run in record["runs"]:
        get = run.get
        peak_bytes, formula = get("frontier_peak_bytes"), get("formula_bytes")
        rows.append((record["size"], record["grid"], run["mode"], run["batch"], fmt(get("batches"), "d"),
                     fmt(run["seconds"], ".3f"), fmt(1e3 * run["seconds"] / record["blocks"], ".2f"),
                     fmt(get("max_abs_diff"), ".2e"),
                     fmt(None if peak_bytes is None else peak_bytes / MIB, ".3f"),
                     fmt(get("frontier_peak_blocks"), ".2f"), fmt(get("frontier_bound_blocks"), "d"),
                     fmt(None if formula is None else formula / MIB, ".3f"),
                     fmt(get("measured_over_formula"), ".3f"),
                     fmt(get("cuda_peak_mib"), ".1f"), fmt(get("cuda_delta_mib"), ".1f")))
    return rows


def print_table(records: list[dict], with_cuda: bool) -> None:
    columns = COLUMNS if with_cuda else COLUMNS[:-2]
    rows = [row[:len(columns)] for record in records for row in table_rows(record)]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    for record in records:
        if "note" in record:
            print(f"note: {record['size']}: {record['note']}")


def header(cfg: ModelConfig, args, n_params: int) -> dict:
    info = {"config": cfg.to_dict(), "params": n_params, "device": args.device, "dtype": args.dtype,
            "backend": args.backend, "repeats": args.repeats, "warmup": args.warmup, "sigma": SIGMA,
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "slot_bytes": slot_bytes(cfg, DTYPES[args.dtype].itemsize)}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def check_args(args, parser: argparse.ArgumentParser) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if not backend_available(args.backend, args.device, DTYPES[args.dtype]):
        parser.error(f"--backend {args.backend} does not run on {args.device} / {args.dtype}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    try:
        cfg = model_config(args)
        sizes = [parse_size(s) for s in split_list(args.size) or ["256x256"]]
        shapes = [BatchShape.parse(s) for s in split_list(args.batch) or ["1x1"]]
        for w, h in sizes:
            Grid.for_image(h, w, cfg.block_size)
    except (ValueError, argparse.ArgumentTypeError) as err:
        parser.error(str(err))

    torch.manual_seed(args.seed)
    model = build_model(cfg, args.device, DTYPES[args.dtype], args.weight_noise)
    info = header(cfg, args, sum(p.numel() for p in model.parameters()))
    print(f"# {info['params'] / 1e6:.2f}M params, layers={cfg.layers} hidden={cfg.hidden} heads={cfg.heads} "
          f"block={cfg.block_size} patch={cfg.patch_size} ({cfg.block_tokens} tokens/block), "
          f"{args.device} {args.dtype} {args.backend}, {info['threads']} threads, "
          f"min of {args.repeats} after {args.warmup} warmup, slot {info['slot_bytes'] / MIB:.3f} MiB", flush=True)

    records = [bench_size(model, w, h, shapes, args) for w, h in sizes]
    print_table(records, with_cuda=args.device == "cuda")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**info, "results": records}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
