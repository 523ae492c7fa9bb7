"""The upscale, resume and status flows behind the command line (x4 jobs, x16 as two chained jobs).

A x16 upscale is a job dir holding `chain.json` and two x4 stage dirs; the second stage's LR is the
first stage's output array, read by bands from its store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..config import JobConfig
from ..errors import BadInput
from .run import (Interrupted, Source, create_job, check_same_job, file_source, job_status, remove_job_dir,
                  resolve_model_dir, run_job)
from ..stream.memory import format_bytes
from .progress import format_seconds
from .store import MANIFEST, STORE, JobError, JobStore, job_lock, read_manifest, write_json_atomic

CHAIN = "chain.json"
SCALES = (4, 16)


def log(message: str) -> None:
    print(f"streamsr: {message}", file=sys.stderr, flush=True)


def prepare_job_dir(root: Path) -> None:
    """A job dir is new, a complete job, or an incomplete creation (store but no manifest) to redo."""
    if root.exists() and not root.is_dir():
        raise BadInput(f"job dir {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    if (root / MANIFEST).is_file():
        return
    leftovers = {p.name for p in root.iterdir()} - {STORE, "lock", f"{MANIFEST}.tmp"}
    if leftovers:
        raise BadInput(f"job dir {root} is not empty and holds no streamsr job ({', '.join(sorted(leftovers)[:3])})")
    if (root / STORE).exists():  # killed while being created: nothing in it was committed
        shutil.rmtree(root / STORE)


def run_stage(root: Path, source: Source, output: Path | None, model_dir: Path, cfg: JobConfig,
              progress: bool, stage: str = "x4", auto: tuple[bool, bool] = (False, False)) -> None:
    """Create the stage's job if needed (or check that the existing one matches), then run it."""
    prepare_job_dir(root)
    with job_lock(root):
        if (root / MANIFEST).is_file():
            manifest = read_manifest(root)
            check_same_job(manifest, source, model_dir, cfg)
            if output is not None and manifest["output"]["path"] != str(output):
                JobStore.open(root).commit(output={"path": str(output)})
            log(f"resuming job {root} at task {manifest['cursor']}/{manifest['total_tasks']}")
        else:
            log(f"creating job {root}")
            create_job(root, source, output, model_dir, cfg, stage, *auto)
    run_job(root, model_dir, progress=progress, log=log)


def store_source(root: Path) -> Source:
    """The output array of a finished x4 stage as the LR source of the next stage."""
    m = read_manifest(root)
    store = JobStore.open(root)
    arr = store.array("output")
    h, w = store.geometry.hr_size
    info = m["input"]
    top = 65535.0 if info["bit_depth"] == 16 else 255.0
    identity = hashlib.sha256(json.dumps([m["input"]["sha256"], m["model"]["hash"], m["job"]]).encode()).hexdigest()

    def bands(rows: int):
        for y0 in range(0, h, rows):
            yield y0, arr[y0:min(y0 + rows, h), :w, :].astype(np.float32) / top

    return Source(f"{root} (x4 stage output)", identity, w, h, info["mode"], info["bit_depth"], bands)


def run_chain(root: Path, progress: bool) -> None:
    """Run (or resume) a x16 job: two x4 stages, the second fed by the first one's output array."""
    chain = json.loads((root / CHAIN).read_text())
    cfg = JobConfig.from_dict(chain["job"])
    auto = tuple(chain.get("auto", (False, False)))
    model_dir = Path(chain["model"])
    first, second = root / "stage1", root / "stage2"
    if not (first / MANIFEST).is_file() or read_manifest(first)["status"] != "done":
        run_stage(first, file_source(Path(chain["input"])), None, model_dir, cfg, progress, "x16 stage 1/2", auto)
    cfg2 = JobConfig.from_dict({**chain["job"], "seed": cfg.seed + 1})  # fresh noise for the second stage
    run_stage(second, store_source(first), Path(chain["output"]), model_dir, cfg2, progress, "x16 stage 2/2", auto)


def upscale(input_path, output, model_dir=None, job_dir=None, cfg: JobConfig | None = None, scale: int = 4,
            keep_job: bool = False, progress: bool = True, auto_batch: bool = False,
            auto_placement: bool = False) -> Path:
    """Upscale an image file into `output`; returns the output path.

    auto_batch / auto_placement: let the memory planner choose the block batch / the frontier placement
    (the fastest plan within cfg.vram and cfg.ram), instead of cfg's values.
    """
    from ..io.export import check_export_path

    cfg = cfg or JobConfig()
    if scale not in SCALES:
        raise BadInput(f"scale {scale} is not supported: use 4 (native) or 16 (two chained x4 jobs)")
    input_path, output = Path(input_path), Path(output).resolve()
    if not input_path.exists():
        raise BadInput(f"input {input_path} does not exist")
    check_export_path(output)
    model_dir = resolve_model_dir(model_dir)
    temporary = job_dir is None
    root = Path(tempfile.mkdtemp(prefix=".streamsr-job-", dir=output.parent)) if temporary else Path(job_dir).resolve()
    try:
        if scale == 4:
            run_stage(root, file_source(input_path), output, model_dir, cfg, progress, "x4", (auto_batch, auto_placement))
        else:
            prepare_chain(root, input_path, output, model_dir, cfg, (auto_batch, auto_placement))
            run_chain(root, progress)
    except (Interrupted, JobError, OSError, MemoryError, KeyboardInterrupt) as exc:
        kept = (root / MANIFEST).is_file() or (root / CHAIN).is_file()
        if kept and not isinstance(exc, Interrupted):
            log(f"the job is kept in {root}; resume it with: streamsr resume {root}")
        elif not kept and temporary:
            shutil.rmtree(root, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted; resume with: streamsr resume {root}" if kept else "interrupted") from None
        raise
    except BaseException:
        if temporary and not (root / MANIFEST).is_file():
            shutil.rmtree(root, ignore_errors=True)
        raise
    if temporary and not keep_job:
        remove_job_dir(root) if scale == 4 else shutil.rmtree(root)
    log(f"wrote {output}")
    return output


def prepare_chain(root: Path, input_path: Path, output: Path, model_dir: Path, cfg: JobConfig,
                  auto: tuple[bool, bool]) -> None:
    chain = {"input": str(input_path.resolve()), "output": str(output), "model": str(model_dir), "job": cfg.to_dict(),
             "auto": list(auto)}
    root.mkdir(parents=True, exist_ok=True)
    if (root / CHAIN).is_file():
        old = json.loads((root / CHAIN).read_text())
        if {k: old[k] for k in ("input", "model", "job")} != {k: chain[k] for k in ("input", "model", "job")}:
            raise JobError(f"job dir {root} holds a x16 job with other input, model or settings")
        return
    if any(root.iterdir()):
        raise BadInput(f"job dir {root} is not empty and holds no streamsr job")
    write_json_atomic(root / CHAIN, chain)


def resume(job_dir, model_dir=None, progress: bool = True) -> None:
    root = Path(job_dir).resolve()
    try:
        if (root / CHAIN).is_file():
            run_chain(root, progress)
        else:
            run_job(root, Path(model_dir) if model_dir else None, progress=progress, log=log)
    except KeyboardInterrupt:  # before the run loop took over Ctrl-C (loading, replaying)
        raise Interrupted(f"interrupted; resume with: streamsr resume {root}") from None
    log(f"job {root} is done")


def status_lines(job_dir) -> list[str]:
    root = Path(job_dir)
    if (root / CHAIN).is_file():
        stages = [d for d in (root / "stage1", root / "stage2") if (d / MANIFEST).is_file()]
        lines = [f"x16 job {root}: {len(stages)}/2 stage(s) started"]
        for d in stages:
            lines += ["", *status_lines(d)]
        return lines
    s = job_status(root)
    job, geo = s["job"], s["geometry"]
    eta = s["eta_seconds"]
    secs = s["seconds"]
    split = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(secs.items()) if k != "total")
    return [
        f"job:      {root} ({s['stage']})",
        f"status:   {s['status']}, task {s['cursor']}/{s['total_tasks']}, model blocks "
        f"{s['model_blocks_done']}/{s['model_blocks_total']}, ETA {format_seconds(eta) if eta is not None else '?'}",
        f"time:     {format_seconds(secs.get('total', 0.0))} ({split})" if secs else "time:     not started",
        f"input:    {s['input']['path']} ({s['input']['width']}x{s['input']['height']} {s['input']['mode']} "
        f"{s['input']['bit_depth']}-bit)",
        f"output:   {s['output']} ({geo['lr_width'] * s['scale']}x{geo['lr_height'] * s['scale']})",
        f"model:    {s['model']}",
        f"settings: steps {job['steps']} {job['sampler']}, seed {job['seed']}, batch "
        f"{job['batch_rows']}x{job['batch_cols']}, anchor {job['anchor']}, {job['device']} {job['dtype']} "
        f"{job['backend']}",
        *plan_lines(s.get("plan"), job),
    ]


def plan_lines(plan: dict | None, job: dict) -> list[str]:
    """The memory plan as printed by `plan` and `status`."""
    if not plan:
        return []
    budget = ", ".join(f"--{k} {format_bytes(job[k])}" for k in ("vram", "ram") if job.get(k)) or "no budget"
    parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in plan["parts"].items() if v)
    return [f"plan:     batch {plan['batch'][0]}x{plan['batch'][1]}, frontier on {plan['placement']} ({budget})",
            f"memory:   predicted peak device {format_bytes(plan['device_bytes'])}, host "
            f"{format_bytes(plan['host_bytes'])}, disk {format_bytes(plan['disk_bytes'])}",
            f"parts:    {parts}"]
