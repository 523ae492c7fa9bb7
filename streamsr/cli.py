"""The command line: thin over the Python API. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import sys

from .config import MODES
from .errors import BadInput, StreamsrError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def cmd_convert_infdit(args: argparse.Namespace) -> int:
    from .convert import convert_infdit

    report = convert_infdit(args.src, args.output, rope_table=args.rope_table,
                            k_uses_q_norm=not args.fixed_k_norm)
    for line in report.lines():
        print(line)
    print(f"wrote model dir {args.output}")
    return EXIT_OK


def parse_batch(text: str) -> tuple[int, int]:
    from .stream.planner import BatchShape

    try:
        shape = BatchShape.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return shape.rows, shape.cols


def default_vram(device: str) -> int:
    """The --vram default: on CUDA the device's free memory (torch.cuda.mem_get_info) plus the CUDA context
    that reading it has just created in this process (the plan counts the context itself,
    stream.memory.CUDA_CONTEXT_BYTES); elsewhere 0, no budget."""
    import torch

    from .stream.memory import CUDA_CONTEXT_BYTES

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise BadInput(f"--device must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type != "cuda" or not torch.cuda.is_available():
        return 0
    try:
        free, _total = torch.cuda.mem_get_info(dev)
    except (RuntimeError, AssertionError) as exc:  # no such device index, a broken driver
        raise BadInput(f"--device {device}: {(str(exc).strip().splitlines() or ['unusable'])[0]}") from None
    return int(free) + CUDA_CONTEXT_BYTES


def resolve_device(device: str) -> str:
    """--device auto: cuda when torch sees a CUDA device, else cpu; other values as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def job_config(args: argparse.Namespace):
    """JobConfig from: the flags given, else the model dir's recommended settings, else the defaults."""
    from .config import ConfigError, JobConfig
    from .jobs.create import resolve_model_dir
    from .weights import model_defaults

    args.device = resolve_device(args.device)
    settings = model_defaults(resolve_model_dir(args.model), getattr(args, "mode", None))
    for name in ("steps", "sampler", "anchor", "sigma_min", "sigma_max", "noise_init", "quality"):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    batch = args.batch or (1, 1)
    try:
        return JobConfig(**settings, seed=args.seed, batch_rows=batch[0], batch_cols=batch[1], device=args.device,
                         dtype=args.dtype, backend=args.backend, prompt_pos=args.prompt_pos or "",
                         prompt_neg=args.prompt_neg or "", placement=args.frontier or "device",
                         vram=args.vram if args.vram is not None else default_vram(args.device), ram=args.ram or 0)
    except (ConfigError, TypeError) as exc:
        raise BadInput(str(exc)) from None


def check_backend_runs(args: argparse.Namespace) -> None:
    """Early, before a job dir exists: the attention backend must really run on the device (xformers)."""
    import torch

    from .core.attention import check_backend

    check_backend(args.backend, args.device, torch.bfloat16 if args.dtype == "bf16" else torch.float32)


def cmd_upscale(args: argparse.Namespace) -> int:
    from .jobs.batch import is_batch_request
    from .jobs.flows import check_device, upscale
    from .jobs.ranks import launched_group

    group = launched_group()  # torchrun: this process is one rank of several (jobs/ranks.py)
    if is_batch_request(args.input, args.output):
        if group is not None:
            raise BadInput("several inputs run in one process: launch them without torchrun")
        return cmd_upscale_batch(args)
    args.device = resolve_device(args.device)
    check_device(args.device)
    check_backend_runs(args)
    upscale(args.input[0], args.output, model_dir=args.model, job_dir=args.job,
            cfg=job_config(args), scale=args.scale, keep_job=args.keep_job, progress=not args.quiet,
            auto_batch=args.batch is None, auto_placement=args.frontier is None, group=group)
    return EXIT_OK


def cmd_upscale_batch(args: argparse.Namespace) -> int:
    """Several files, a folder or a glob into the folder -o: one job per image, a summary, exit 1 if any failed."""
    from .jobs.batch import upscale_batch
    from .jobs.flows import check_device, logger

    args.device = resolve_device(args.device)
    check_device(args.device)
    check_backend_runs(args)
    batch = upscale_batch(args.input, args.output, model_dir=args.model, batch_dir=args.job, cfg=job_config(args),
                          scale=args.scale, recursive=args.recursive, suffix="." + args.format,
                          overwrite=args.overwrite, keep_job=args.keep_job, progress=not args.quiet,
                          auto_batch=args.batch is None, auto_placement=args.frontier is None,
                          log=logger(not args.quiet))
    return finish_batch_command(batch, quiet=args.quiet)


def finish_batch_command(batch, *, quiet: bool) -> int:
    """Print the batch summary (failures even with -q); exit 1 when an image failed."""
    from .jobs.batch import summary_lines

    lines = summary_lines(batch)
    failed = batch.counts()["failed"]
    for line in (lines[1:] if quiet else lines):
        print(f"streamsr: {line}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def parse_size_arg(text: str) -> int:
    from .stream.memory import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_wxh(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 4096x2048 (width x height), got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def cmd_plan(args: argparse.Namespace) -> int:
    import torch

    from .jobs.create import plan_memory, resolve_model_dir
    from .jobs.flows import plan_lines, scaling_line, store_bytes
    from .jobs.manifest import Geometry
    from .stream.memory import format_bytes
    from .weights import read_model_config

    mcfg = read_model_config(resolve_model_dir(args.model))
    if args.input:
        from .io.probe import probe

        info = probe(args.input, stream=True)  # the header only, no pixels decoded
        lr_w, lr_h = info.width, info.height
        print(f"input:    {args.input} ({lr_w}x{lr_h} {info.mode} {info.bit_depth}-bit {info.format})")
    elif args.size:
        lr_w, lr_h = -(-args.size[0] // 4), -(-args.size[1] // 4)
    else:
        raise BadInput("give the output size (--size WxH) or an input file (--input FILE)")
    cfg = job_config(args)
    geo = Geometry(lr_h, lr_w, mcfg.block_size)
    cfg, plan, split = plan_memory(mcfg, cfg, geometry=geo, auto_batch=args.batch is None,
                                   auto_placement=args.frontier is None, ranks=max(args.workers, 1))
    h, w = geo.hr_size
    print(f"output:   {w}x{h} ({geo.grid.cols}x{geo.grid.rows} blocks of {mcfg.block_size} px), "
          f"{args.dtype} on {torch.device(args.device).type}")
    for line in plan_lines(plan, cfg):
        print(line)
    channels, depth, alpha = (info.channels, info.bit_depth, "A" in info.mode) if args.input else (3, 8, False)
    disk = store_bytes(geo, channels=channels, bit_depth=depth, alpha=alpha, vector_dim=mcfg.vector_dim,
                       ring=split.stages + 1)
    print(f"store:    job dir {format_bytes(disk)} on disk ({disk / (h * w):.0f} bytes per output pixel; "
          "plus the frontier's disk spill above)")
    if args.workers != 1:
        print(scaling_line(mcfg, cfg, out_hw=(h, w), workers=args.workers, split=split))  # flows.scaling_line
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    from .jobs.batch import is_batch_dir, resume_batch
    from .jobs.flows import logger, resume
    from .jobs.ranks import launched_group

    group = launched_group()
    if is_batch_dir(args.job) and group is not None:
        raise BadInput("a batch of images runs in one process: resume it without torchrun")
    if is_batch_dir(args.job):
        return finish_batch_command(resume_batch(args.job, progress=not args.quiet, log=logger(not args.quiet)),
                                    quiet=args.quiet)

    resume(args.job, model_dir=args.model, progress=not args.quiet, group=group)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .jobs.flows import status_lines

    if args.json:
        import json

        from .jobs.run import job_status
        from .jobs.store import JobDir

        jd = JobDir.of(args.job)
        data = ({"chain": str(jd.root), "stages": [job_status(d) for d in (jd.stage(1), jd.stage(2)) if d.is_job()]}
                if jd.is_chain() else job_status(jd))
        print(json.dumps(data, indent=1))
        return EXIT_OK
    for line in status_lines(args.job):
        print(line)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .jobs.export import export_job

    path = export_job(args.job, args.output, args.format, compression=args.compression, quality=args.quality,
                      tile_format=args.tile_format, ngff=args.ngff)
    print(f"wrote {path}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from .jobs.verify import verify_job

    report = verify_job(args.job)
    for line in report.lines():
        print(line)
    return EXIT_OK if report.ok else EXIT_USAGE


def cmd_view(args: argparse.Namespace) -> int:
    from .viewer.server import main as view_main

    return view_main(args)


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """Options shared by upscale and plan: where and how it runs, and the memory budget."""
    p.add_argument("--batch", type=parse_batch, default=None, metavar="RxC",
                   help="blocks per batch, rows x cols (default: the largest that fits the budget); "
                        "the output does not depend on it")
    p.add_argument("--vram", type=parse_size_arg, default=None, metavar="SIZE",
                   help="device memory budget, e.g. 8GiB (CUDA; default: the device's free memory)")
    p.add_argument("--ram", type=parse_size_arg, default=None, metavar="SIZE", help="host memory budget, e.g. 16GiB")
    p.add_argument("--frontier", choices=("device", "host", "disk"), default=None,
                   help="where the K/V frontier lives (default: chosen by the memory planner)")
    p.add_argument("--device", default="auto", help="auto (the default: cuda when usable, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--backend", choices=("sdpa", "reference", "xformers"), default="sdpa",
                   help="attention kernel (default sdpa)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamsr",
        description="Inf-DiT-style block-streaming diffusion upsampler (x4) inside a fixed memory budget.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad input or usage, 130 interrupted.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"streamsr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    conv = sub.add_parser("convert-infdit", help="convert an official Inf-DiT checkpoint into a model dir",
                          description="Convert an official Inf-DiT checkpoint (DeepSpeed/SAT .pt with a "
                                      "'module' dict, read weights-only, or a safetensors file with the "
                                      "official key names) into a streamsr model dir. Unknown or missing "
                                      "keys are an error; known unused keys are reported.")
    conv.add_argument("src", help="mp_rank_00_model_states.pt or a .safetensors file")
    conv.add_argument("-o", "--output", required=True, help="model dir to write")
    conv.add_argument("--rope-table", type=int, default=None,
                      help="RoPE table size when the checkpoint stores no RoPE buffers (default 1024)")
    conv.add_argument("--fixed-k-norm", action="store_true",
                      help="use k_layer_norm for K (not the official model: it normalises K with q_layer_norm)")
    conv.set_defaults(func=cmd_convert_infdit)

    up = sub.add_parser("upscale", help="upscale an image x4 (or x16 by chaining two jobs)",
                        description="Upscale INPUT (PNG, JPEG, WebP or TIFF; 8/16-bit; grey, RGB, RGBA, CMYK JPEG) "
                                    "into OUTPUT (.png written by rows, .tif/.tiff tiled pyramidal BigTIFF, .jpg, "
                                    ".webp, .zarr OME-Zarr, .dzi DeepZoom), with the input's ICC profile, EXIF and DPI. The job state lives in a job dir: kill the process at any time "
                                    "and run `streamsr resume JOB`. Several files, a folder or a glob go into the "
                                    "folder -o DIR, one job per image under a batch dir (`streamsr resume BATCHDIR` "
                                    "continues it); a summary ends the run, exit 1 if an image failed.")
    up.add_argument("input", nargs="+", help="LR image(s), folder(s) or glob(s) such as 'photos/*.jpg'")
    up.add_argument("-o", "--output", required=True,
                    help="output image (.png, .tif, .tiff, .jpg, .webp, .zarr, .dzi), or a folder for several inputs")
    up.add_argument("-r", "--recursive", action="store_true", help="folders: include their subfolders")
    up.add_argument("--overwrite", action="store_true", help="folders: redo images whose output exists")
    up.add_argument("--format", choices=("png", "tif", "jpg", "webp", "zarr", "dzi"), default="png",
                    help="folders: the outputs' format (default png); names follow the inputs'")
    up.add_argument("--model", help="model dir (default: the model shipped with streamsr)")
    up.add_argument("--job", help="job dir (default: a temporary one beside the output, removed on success); for "
                                  "several inputs the batch dir (default OUTDIR/.streamsr-batch)")
    up.add_argument("--keep-job", action="store_true", help="keep the temporary job dir after success")
    up.add_argument("--scale", type=int, default=4, help="4 (native) or 16 (two chained x4 jobs)")
    up.add_argument("--mode", choices=MODES, default=None,
                    help="the model's recommended operating point: fidelity (best PSNR/SSIM, the default of "
                         "the shipped model) or detail (adds plausible fine detail, lower PSNR); --steps, "
                         "--sampler, --sigma-max, --sigma-min and --anchor override its values")
    up.add_argument("--steps", type=int, default=None,
                    help="EDM sampler steps (default: the model's recommended value, else 20)")
    up.add_argument("--sampler", choices=("heun", "euler"), default=None, help="default: the model's, else heun")
    up.add_argument("--sigma-max", type=float, default=None,
                    help="start of the Karras schedule: x_T = up(LR) + sigma_max * eps (default: the model's, else 40)")
    up.add_argument("--sigma-min", type=float, default=None, help="end of the schedule (default: the model's, else 0.002)")
    up.add_argument("--noise-init", action=argparse.BooleanOptionalAction, default=None,
                    help="x_T = up(LR) + sigma_max * eps (--noise-init) or x_T = up(LR) (--no-noise-init, a residual "
                         "model's deterministic fidelity point) (default: the model's, else on)")
    up.add_argument("--quality", type=int, default=None, help="JPEG/WebP outputs: quality 1..100 (default 90)")
    up.add_argument("--seed", type=int, default=0, help="noise seed; noise is drawn per block from (seed, block)")
    add_plan_args(up)
    up.add_argument("--anchor", choices=("none", "global", "local"), default=None,
                    help="statistics anchoring of the output to the upsampled LR (default: the model's, else global)")

    up.add_argument("--prompt-pos", help="text direction: shift the semantic vector towards this prompt")
    up.add_argument("--prompt-neg", help="text direction: shift the semantic vector away from this prompt")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    up.set_defaults(func=cmd_upscale)

    res = sub.add_parser("resume", help="resume a stopped or killed job or batch",
                         description="Resume JOB where it stopped; the output is bit-identical to an "
                                     "uninterrupted run. A batch dir continues with its pending and failed images.")
    res.add_argument("job", help="job dir or batch dir")
    res.add_argument("--model", help="the job's model dir, if it moved (must be the same model)")
    res.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    res.set_defaults(func=cmd_resume)

    pl = sub.add_parser("plan", help="the memory plan of an upscale: batch, frontier placement, predicted peaks",
                        description="Predict the peak device, host and disk bytes of an upscale and pick the "
                                    "fastest plan (block batch, frontier placement) within --vram/--ram.")
    pl.add_argument("--model", help="model dir (default: the shipped model)")
    pl.add_argument("--size", type=parse_wxh, help="output size WxH in pixels")
    pl.add_argument("--input", help="an input image: its size is read from the header, no pixels decoded")
    pl.add_argument("--workers", type=int, default=1, metavar="N",
                    help="also predict the job on N devices and print the rank split (docs/scaling.md)")
    add_plan_args(pl)
    pl.set_defaults(func=cmd_plan, seed=0, prompt_pos=None, prompt_neg=None)

    ex = sub.add_parser("export", help="write a finished job's output as PNG, pyramidal TIFF, OME-Zarr or DZI",
                        description="Export a finished job's output by streaming (bounded RAM at any size): PNG by "
                                    "rows, tiled pyramidal BigTIFF, OME-Zarr multiscale, or a DeepZoom (DZI) pyramid.")
    ex.add_argument("job", help="job dir (a x16 job dir exports its second stage)")
    ex.add_argument("-o", "--output", required=True, help="output path (.png, .tif/.tiff, .jpg, .webp, .zarr, .dzi)")
    ex.add_argument("--format", choices=("png", "tiff", "jpeg", "webp", "zarr", "dzi"), default=None,
                    help="default: from the output suffix")
    ex.add_argument("--compression", choices=("auto", "zstd", "zlib", "jpeg", "none"), default=None,
                    help="TIFF compression (default auto: zstd when available)")
    ex.add_argument("--quality", type=int, default=None,
                    help="JPEG/WebP quality of .jpg/.webp outputs and TIFF/DZI jpeg tiles (default: the job's, 90)")
    ex.add_argument("--tile-format", choices=("jpg", "png"), default=None, help="DZI tiles (default jpg, png with alpha)")
    ex.add_argument("--ngff", choices=("0.5", "0.4"), default="0.5", help="OME-Zarr version (default 0.5)")
    ex.set_defaults(func=cmd_export)

    vw = sub.add_parser("view", help="browse a job (LR vs output, live progress), a DZI or an OME-Zarr in a web page",
                        description="Serve a deep-zoom viewer on 127.0.0.1: the LR input (upsampled x4) and the "
                                    "output side by side or with a slider, zoom and pan synchronised, with the job's "
                                    "settings and progress. Works while the job runs (read-only). Ctrl-C stops it.")
    vw.add_argument("path", help="job dir (also while it runs), x16 job dir, .dzi file, or OME-Zarr/zarr store")
    vw.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: any free port)")
    vw.add_argument("--open", action="store_true", help="open the page in the default web browser")
    vw.add_argument("--cache-mb", type=int, default=256, help="memory for rendered tiles (default 256 MiB)")
    vw.add_argument("-v", "--verbose", action="store_true", help="log every request")
    vw.set_defaults(func=cmd_view)

    vf = sub.add_parser("verify", help="check that every stored block of a job is present and intact",
                        description="Read every chunk of a job dir (also a finished one, before export), check its "
                                    "checksum, and check that the blocks the job has committed are all there. Exit 0 "
                                    "if the job is intact, 2 if not (each problem names the array and block).")
    vf.add_argument("job", help="job dir (x4 or x16)")
    vf.set_defaults(func=cmd_verify)

    st = sub.add_parser("status", help="progress, ETA, settings and memory plan of a job")
    st.add_argument("job", help="job dir")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except StreamsrError as exc:
        print(f"streamsr: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("streamsr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("streamsr: error: out of memory", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a full disk, a vanished file: the job itself stays resumable
        print(f"streamsr: error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
