"""The upscale, resume and status flows behind the command line (x4 jobs, x16 as two chained jobs).

A x16 upscale is a job dir holding `chain.json` (`Chain`) and two x4 stage dirs; the second stage's LR is
the first stage's output array, read by bands from its store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import SEED_MAX, JobConfig, ModelConfig
from ..errors import BadInput, StreamsrError
from ..stream.memory import format_bytes
from .create import LRInput, check_same_job, create_job, file_source, resolve_model_dir
from .integrity import checked_output
from .manifest import InputInfo, JobStatus, MemoryPlan, OutputRef
from .progress import BatchPosition, format_seconds
from .ranks import RankGroup
from .run import Interrupted, JobReport, remove_job_dir, resume_command, run_job
from .store import JobDir, JobError, JobStore, job_lock, read_manifest, write_json_atomic

SCALES = (4, 16)


def log(message: str) -> None:
    print(f"streamsr: {message}", file=sys.stderr, flush=True)


def quiet_log(message: str) -> None:
    """`log` for -q: nothing."""


def logger(progress: bool):
    """What the flows print with: `log`, or nothing when progress output is off (-q) or goes to a callback."""
    return log if progress is True or isinstance(progress, BatchPosition) else quiet_log


class JobKept(StreamsrError):
    """The run failed on the disk (full, unwritable); the job is kept and `streamsr resume` finishes it."""

    exit_code = 1


TEMP_JOB_PREFIX = ".streamsr-job-"  # a job dir made by `upscale` without --job, removed once the job is done


def check_device(device: str) -> None:
    """Before any job dir exists: a CUDA device must be usable (BadInput otherwise, nothing left behind)."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {device} was asked for but torch sees no CUDA device (use --device auto or cpu)")


def check_output_size(input_path: Path, output: Path, scale: int) -> None:
    """Before any work: an output format with a side limit (JPEG, WebP) must hold the upscaled input."""
    from ..io.export import export_format, max_side
    from ..io.probe import probe

    limit = max_side(export_format(output))
    if limit:
        info = probe(input_path, stream=True)  # the header only
        w, h = info.width * scale, info.height * scale
        if max(w, h) > limit:
            raise BadInput(f"output {output.name} would be {w}x{h}, but {output.suffix} holds at most {limit} px "
                           "a side; choose .png or .tif")


def held_elsewhere(job_dir: JobDir) -> bool:
    """Whether another process holds the job's lock now."""
    if not job_dir.lock.exists():
        return False
    try:
        with job_lock(job_dir):
            return False
    except JobError:
        return True


def prepare_job_dir(job_dir: JobDir) -> None:
    """A job dir is new, a complete job, or an incomplete creation (store but no manifest) to redo, which
    `run_stage` deletes once it holds the lock (another process may be creating it right now)."""
    root = job_dir.root
    if root.exists() and not root.is_dir():
        raise BadInput(f"job dir {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    if job_dir.is_job():
        return
    leftovers = job_dir.foreign()
    if leftovers:
        raise BadInput(f"job dir {root} is not empty and holds no streamsr job ({', '.join(leftovers[:3])})")


def run_stage(job_dir: JobDir, source: LRInput, *, output: Path | None, model_dir: Path, cfg: JobConfig,
              progress: bool, stage: str = "x4", auto: tuple[bool, bool] = (False, False),
              group: RankGroup | None = None) -> None:
    """Create the stage's job if needed (or check that the existing one matches), then run it. With a
    group of ranks (torchrun), rank 0 creates or checks it while the others wait, then every rank runs."""
    log = logger(progress and (group is None or group.rank == 0))

    def create_or_check() -> None:
        prepare_job_dir(job_dir)
        with job_lock(job_dir):
            if job_dir.is_job():
                manifest = read_manifest(job_dir)
                check_same_job(manifest, source, model_dir=model_dir, cfg=cfg)
                if output is not None and manifest.output.path != str(output):
                    JobStore.open(job_dir).commit(output=OutputRef(str(output)))
                log(f"resuming job {job_dir.root} at task {manifest.cursor}/{manifest.total_tasks}")
            else:
                if job_dir.store.exists():  # killed while being created (we hold the lock): nothing was committed
                    shutil.rmtree(job_dir.store)
                log(f"creating job {job_dir.root}" + (f" for {group.world} ranks" if group else ""))
                create_job(job_dir, source, output=output, model_dir=model_dir, cfg=cfg, stage=stage,
                           auto_batch=auto[0], auto_placement=auto[1], ranks=group.world if group else 1)

    if group is None:
        create_or_check()
    else:
        group.on_rank0("create or check the job", create_or_check)
    run_job(job_dir, model_dir=model_dir, progress=progress, log=log, group=group)


def store_source(job_dir: JobDir) -> LRInput:
    """The output array of a finished x4 stage as the LR source of the next stage."""
    store = JobStore.open(job_dir)
    m = store.manifest
    arr = checked_output(store.reading("output"), folder=job_dir.store / "output", job=str(job_dir.root))
    h, w = m.geometry.hr_size
    top = 65535.0 if m.input.bit_depth == 16 else 255.0
    # the settings as stored, not as typed: a manifest of an earlier version lacks later JobConfig keys,
    # and the second stage of its chain recorded this identity
    stored_job = json.loads(job_dir.manifest.read_text())["job"]
    identity = hashlib.sha256(json.dumps([m.input.sha256, m.model.hash, stored_job]).encode()).hexdigest()

    def bands(rows: int):
        for y0 in range(0, h, rows):
            yield y0, arr[y0:min(y0 + rows, h), :w, :].astype(np.float32) / top  # (rows, w, C)

    return LRInput(InputInfo(f"{job_dir.root} (x4 stage output)", identity, w, h, m.input.mode, m.input.bit_depth),
                   bands)


@dataclass(frozen=True)
class Chain:
    """chain.json of a x16 job: the input, output, model and settings of both stages."""

    input: str
    output: str
    model: str
    job: JobConfig
    auto: tuple[bool, bool] = (False, False)  # let the memory planner pick (batch, placement)

    def to_json(self) -> dict:
        return {"input": self.input, "output": self.output, "model": self.model, "job": self.job.to_dict(),
                "auto": list(self.auto)}

    @classmethod
    def from_json(cls, data: dict) -> "Chain":
        auto = data.get("auto", (False, False))
        return cls(data["input"], data["output"], data["model"], JobConfig.from_dict(data["job"]),
                   (bool(auto[0]), bool(auto[1])))

    @classmethod
    def read(cls, job_dir: JobDir) -> "Chain":
        return cls.from_json(json.loads(job_dir.chain.read_text()))


def run_chain(job_dir: JobDir, *, progress: bool) -> None:
    """Run (or resume) a x16 job: two x4 stages, the second fed by the first one's output array."""
    chain = Chain.read(job_dir)
    model_dir = Path(chain.model)
    first, second = job_dir.stage(1), job_dir.stage(2)
    if not first.is_job() or read_manifest(first).status is not JobStatus.DONE:
        run_stage(first, file_source(Path(chain.input)), output=None, model_dir=model_dir, cfg=chain.job,
                  progress=progress, stage="x16 stage 1/2", auto=chain.auto)
    cfg2 = replace(chain.job, seed=(chain.job.seed + 1) % (SEED_MAX + 1))  # fresh noise for the second stage
    run_stage(second, store_source(first), output=Path(chain.output), model_dir=model_dir, cfg=cfg2,
              progress=progress, stage="x16 stage 2/2", auto=chain.auto)


def prepare_chain(job_dir: JobDir, chain: Chain) -> None:
    """Write chain.json into a new x16 job dir, or check that the existing one is the same job."""
    job_dir.root.mkdir(parents=True, exist_ok=True)
    if job_dir.is_chain():
        old = Chain.read(job_dir)
        if (old.input, old.model, old.job) != (chain.input, chain.model, chain.job):
            raise JobError(f"job dir {job_dir.root} holds a x16 job with other input, model or settings")
        return
    if any(job_dir.root.iterdir()):
        raise BadInput(f"job dir {job_dir.root} is not empty and holds no streamsr job")
    write_json_atomic(job_dir.chain, chain.to_json())


def upscale(input_path, output, *, model_dir=None, job_dir=None, cfg: JobConfig | None = None, scale: int = 4,
            keep_job: bool = False, progress: bool = True, auto_batch: bool = False,
            auto_placement: bool = False, group: RankGroup | None = None) -> Path:
    """Upscale an image file into `output`; returns the output path.

    auto_batch / auto_placement: let the memory planner choose the block batch / the frontier placement
    (the fastest plan within cfg.vram and cfg.ram), instead of cfg's values. group: the ranks torchrun
    launched (jobs/ranks.py); every rank calls this, rank 0 makes and finishes the job.
    """
    from ..io.export import check_export_path
    from .leftovers import prepare_output  # imports this module

    cfg = cfg or JobConfig()
    if scale not in SCALES:
        raise BadInput(f"scale {scale} is not supported: use 4 (native) or 16 (two chained x4 jobs)")
    if group is not None and scale != 4:
        raise BadInput("--scale 16 runs in one process: launch it without torchrun")
    input_path = Path(input_path)
    if group is None or group.rank == 0:  # resolved; leftovers of killed upscales of it cleaned or named
        output = prepare_output(output, quiet=progress is not True)
    else:
        output = Path(output).resolve()
    if not input_path.exists():
        raise BadInput(f"input {input_path} does not exist")
    if input_path.resolve() == output:
        raise BadInput(f"output {output} is the input; choose another output name")
    check_export_path(output)
    check_output_size(input_path, output, scale)
    check_device(cfg.device)
    log = logger(progress)
    model_dir = resolve_model_dir(model_dir)
    temporary = job_dir is None
    if temporary:  # rank 0 names it for a group (on a filesystem every node sees, beside the output)
        mkdtemp = lambda: tempfile.mkdtemp(prefix=TEMP_JOB_PREFIX, dir=output.parent)  # noqa: E731
        job_dir = mkdtemp() if group is None else group.on_rank0("make a temporary job dir", mkdtemp)
    jd = JobDir(Path(job_dir).resolve())
    if group is not None and group.rank != 0:  # rank 0 alone cleans up and reports
        run_stage(jd, file_source(input_path), output=output, model_dir=model_dir, cfg=cfg, progress=progress,
                  auto=(auto_batch, auto_placement), group=group)
        return output
    auto = (auto_batch, auto_placement)
    try:
        if scale == 4:
            run_stage(jd, file_source(input_path), output=output, model_dir=model_dir, cfg=cfg, progress=progress,
                      auto=auto, group=group)
        else:
            prepare_chain(jd, Chain(str(input_path.resolve()), str(output), str(model_dir), cfg, auto))
            run_chain(jd, progress=progress)
    except (Interrupted, JobError, OSError, MemoryError, KeyboardInterrupt) as exc:
        kept = jd.is_job() or jd.is_chain()
        if kept and held_elsewhere(jd):
            raise
        if kept and isinstance(exc, OSError):  # a full disk: the resume command is part of the one line, even -q
            where = f": {exc.filename}" if exc.filename else ""
            raise JobKept(f"{exc.strerror or exc}{where}; the job is kept: once that is fixed, resume it with: "
                          f"{resume_command(jd, group)}") from None
        if kept and not isinstance(exc, Interrupted):
            log(f"the job is kept in {jd.root}; resume it with: {resume_command(jd, group)}")
        elif not kept and temporary:
            shutil.rmtree(jd.root, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted; resume with: streamsr resume {jd.root}" if kept else "interrupted") from None
        raise
    except BaseException:
        if temporary and not jd.is_job():
            shutil.rmtree(jd.root, ignore_errors=True)
        raise
    if temporary and not keep_job:
        remove_job_dir(jd) if scale == 4 else shutil.rmtree(jd.root)
    log(f"wrote {output}")
    return output


def resume(job_dir, *, model_dir=None, progress: bool = True, group: RankGroup | None = None) -> None:
    """Run a job (x4 or x16) to the end; a temporary job dir (made without --job) is removed once done.
    group: the ranks torchrun launched (jobs/ranks.py), for a job made on as many."""
    jd = JobDir(Path(job_dir).resolve())
    log = logger(progress and (group is None or group.rank == 0))
    if group is not None and jd.is_chain():
        raise BadInput(f"{jd.root} is a x16 job, which runs in one process: resume it without torchrun")
    try:
        if jd.is_chain():
            run_chain(jd, progress=progress)
        else:
            run_job(jd, model_dir=Path(model_dir) if model_dir else None, progress=progress, log=log, group=group)
    except KeyboardInterrupt:  # before the run loop took over Ctrl-C (loading, replaying)
        raise Interrupted(f"interrupted; resume with: streamsr resume {jd.root}") from None
    if group is not None and group.rank != 0:
        return
    if jd.root.name.startswith(TEMP_JOB_PREFIX):
        remove_job_dir(jd) if jd.is_job() else shutil.rmtree(jd.root)
        log(f"job {jd.root} is done; its temporary job dir is removed")
    else:
        log(f"job {jd.root} is done")


def status_lines(job_dir) -> list[str]:
    jd = JobDir.of(job_dir)
    if jd.is_chain():
        stages = [d for d in (jd.stage(1), jd.stage(2)) if d.is_job()]
        lines = [f"x16 job {jd.root}: {len(stages)}/2 stage(s) started"]
        for d in stages:
            lines += ["", *status_lines(d)]
        return lines
    report = JobReport.of(read_manifest(jd))
    m, job, geo, info = report.manifest, report.manifest.job, report.manifest.geometry, report.manifest.input
    eta, secs = report.eta_seconds, m.seconds
    split = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(secs.items()) if k != "total")
    out_h, out_w = geo.hr_size
    return [
        f"job:      {jd.root} ({m.stage})",
        f"status:   {m.status}, task {m.cursor}/{m.total_tasks}, model blocks "
        f"{m.model_blocks_done}/{report.model_blocks_total}, ETA {eta_text(eta, m.total_tasks - m.cursor)}",
        f"time:     {format_seconds(secs.get('total', 0.0))} ({split})" if secs else "time:     not started",
        f"input:    {info.path} ({info.width}x{info.height} {info.mode} {info.bit_depth}-bit)",
        f"output:   {m.output.path} ({out_w}x{out_h})",
        f"model:    {m.model.dir}",
        f"settings: steps {job.steps} {job.sampler}, seed {job.seed}, batch "
        f"{job.batch_rows}x{job.batch_cols}, anchor {job.anchor}, {job.device} {job.dtype} {job.backend}",
        *plan_lines(m.plan, job),
        *rank_lines(jd, m),
    ]


def rank_lines(jd: JobDir, m) -> list[str]:
    """A job run by several ranks: its split and each rank's committed cursor (ranks/rank-K.json)."""
    if m.ranks == 1:
        return []
    from .ranks import RankLedger

    cursors = ", ".join(str(RankLedger(jd, m.ranks).read(r)) for r in range(m.ranks))
    stages = m.ranks // m.bands
    return [f"ranks:    {m.ranks} ({stages} sweep(s) in flight x {m.bands} column band(s)); rank cursors {cursors}; "
            f"resume with torchrun --nproc-per-node {m.ranks} -m streamsr resume {jd.root}"]


def eta_text(eta: float | None, tasks_left: int) -> str:
    """The ETA for people; once the model is done, the finishing passes (stats, anchor, export) that remain."""
    if eta is not None and eta <= 0 and tasks_left > 0:
        return f"finishing ({tasks_left} task(s) left: statistics, anchoring, export)"
    return format_seconds(eta) if eta is not None else "?"


def store_bytes(geo, *, channels: int, bit_depth: int, alpha: bool, vector_dim: int = 0, ring: int = 2) -> int:
    """Disk bytes of a job's store (jobs/store.py) made now (fused steps): the float32 (1, 3, H, W) state
    arrays at the output's padded size that its steps sweeps write (a ring of `ring`: 2 in one process,
    sweeps in flight + 1 on several ranks), the float32 LR (and alpha), and the output array; about 26 bytes
    per output pixel in one process."""
    hh, hw = geo.hr_padded
    lh, lw = geo.lr_padded
    return (max(ring, 2) * 3 * hh * hw * 4 + (3 + alpha) * lh * lw * 4 + vector_dim * 4
            + hh * hw * channels * (2 if bit_depth == 16 else 1))


def plan_lines(plan: MemoryPlan | None, job: JobConfig) -> list[str]:
    """The memory plan as printed by `plan` and `status`."""
    if not plan:
        return []
    budgets = {"vram": job.vram, "ram": job.ram}
    budget = ", ".join(f"--{k} {format_bytes(v)}" for k, v in budgets.items() if v) or "no budget"
    parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in plan.parts.items() if v)
    fused = f", {plan.fuse} sampler step(s) per sweep" if plan.fuse else ""
    return [f"plan:     batch {plan.batch[0]}x{plan.batch[1]}, frontier on {plan.placement}{fused} ({budget})",
            f"memory:   predicted peak device {format_bytes(plan.device_bytes)}, host "
            f"{format_bytes(plan.host_bytes)}, disk {format_bytes(plan.disk_bytes)}",
            f"parts:    {parts}"]


def scaling_line(mcfg: ModelConfig, cfg: JobConfig, *, out_hw: tuple[int, int], workers: int, split=None) -> str:
    """`plan --workers N`: the split of the ranks (stream/ranks.rank_split: the memory plan above is one
    rank's) and the scaling model's prediction for it (stream/scaling.py)."""
    from ..stream.scaling import predict_scaling

    if workers < 1:
        raise BadInput(f"--workers must be >= 1, got {workers}")
    evals = 2 * cfg.steps - 1 if cfg.sampler == "heun" else cfg.steps
    p = predict_scaling(mcfg, out_hw=out_hw, sweeps=evals, workers=workers, batch=(cfg.batch_rows, cfg.batch_cols),
                        itemsize=2 if cfg.dtype == "bf16" else 4, vram=cfg.vram or None,
                        split=(split.stages, split.bands) if split else None)
    ranks = (f"ranks:    {split.stages} sweep(s) in flight x {split.bands} column band(s)"
             f"{f' ({workers - split.stages * split.bands} idle)' if workers > split.stages * split.bands else ''}, "
             f"{split.fuse} sampler step(s) per sweep; the plan above is one rank's\n") if split else ""
    return (f"{ranks}scaling:  {workers} CUDA devices (predicted, docs/scaling.md): {p.sweeps_in_flight} sweep(s) in "
            f"flight x {p.bands} band(s), {format_seconds(p.wall_seconds)} vs {format_seconds(p.one_device_seconds)} on one "
            f"({p.speedup:.1f}x), per rank {format_bytes(p.rank_device_bytes)} of device memory")
