"""Upscale jobs: create, run, resume, status. A job can be killed at any moment and resumed.

create: ingest the LR (padded to whole blocks by reflection) into the store, compute the semantic
vector, then write the manifest (cursor 0) last. run: take the lock, delete stray partial files, check
that the model is the one the job was made with, rebuild the live K/V frontier if the cursor is inside a
denoiser sweep, and run the remaining tasks, committing the cursor after each task's writes.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..config import SR_SCALE, JobConfig, ModelConfig
from ..errors import BadInput, StreamsrError
from .faults import kill_point
from ..stream.planner import Task, job_tasks
from .progress import Progress
from ..core.sampler import karras_sigmas
from .store import FORMAT, MANIFEST, STORE, CroppedView, Geometry, JobError, JobStore, job_lock, read_manifest
from ..weights import model_hash, read_model_config

BAND_BLOCKS = 8  # LR blocks per ingest band


class Interrupted(StreamsrError):
    """Ctrl-C or SIGTERM: the job stopped cleanly at a task boundary."""

    exit_code = 130


@dataclass(frozen=True)
class Source:
    """An LR input: its identity, pixel format and a generator of row bands in [0, 1]."""

    name: str  # file path, or a description for a chained stage
    sha256: str
    width: int
    height: int
    mode: str  # "L", "LA", "RGB", "RGBA"
    bit_depth: int  # 8 or 16
    bands: Callable[[int], Iterator[tuple[int, np.ndarray]]]  # band_rows -> (y0, (rows, W, C) float32)


def file_source(path: Path) -> Source:
    """An input file or zarr array, read by row bands (huge PNG/TIFF/zarr inputs stream)."""
    from ..io.imageio import input_sha256, iter_row_bands, probe

    info = probe(path, stream=True)
    return Source(str(Path(path).resolve()), input_sha256(path), info.width, info.height, info.mode,
                  info.bit_depth, lambda rows: iter_row_bands(path, rows))


def reflect_index(i: int, n: int) -> int:
    """numpy's 'reflect' padding index (no edge repeat), any distance; n == 1 repeats the edge."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i %= period
    return i if i < n else period - i


def _reflect_cols(band: np.ndarray, width: int) -> np.ndarray:
    """Pad a band (rows, w, C) on the right to `width` columns by reflection."""
    w = band.shape[1]
    idx = np.array([reflect_index(i, w) for i in range(width)])
    return band[:, idx]


def ingest(store: JobStore, source: Source) -> None:
    """Write the LR (and alpha) into the store by bands, padded right and bottom by reflection."""
    geo = store.geometry
    lh, lw = geo.lr_padded
    lr, alpha = store.array("lr"), (store.array("alpha") if "A" in source.mode else None)
    rows_seen = 0
    for y0, band in source.bands(geo.lr_block * BAND_BLOCKS):
        band = _reflect_cols(np.asarray(band, dtype=np.float32), lw)  # (rows, lw, C)
        color = band[..., :1].repeat(3, axis=-1) if source.mode in ("L", "LA") else band[..., :3]
        lr[0, :, y0:y0 + band.shape[0], :] = (color * 2 - 1).transpose(2, 0, 1)
        if alpha is not None:
            alpha[0, 0, y0:y0 + band.shape[0], :] = band[..., -1]
        rows_seen = y0 + band.shape[0]
    if rows_seen != source.height:
        raise BadInput(f"{source.name}: expected {source.height} rows, read {rows_seen}")
    for y in range(source.height, lh):  # bottom padding, row by row from the stored rows
        src = reflect_index(y, source.height)
        lr[0, :, y, :] = lr[0, :, src, :]
        if alpha is not None:
            alpha[0, 0, y, :] = alpha[0, 0, src, :]


def default_model_dir() -> Path:
    """The model shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "models" / "default"


def resolve_model_dir(model_dir: str | Path | None) -> Path:
    if model_dir is None:
        path = default_model_dir()
        if not (path / "config.json").is_file():
            raise BadInput("no default model is shipped with this build; pass --model DIR")
        return path
    return Path(model_dir).resolve()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def total_model_blocks(manifest: dict) -> int:
    return job_tasks(Geometry(**manifest["geometry"]).grid, *_shape_args(manifest)).model_blocks()


def _shape_args(manifest: dict):
    from ..stream.planner import BatchShape

    job = manifest["job"]
    return BatchShape(job["batch_rows"], job["batch_cols"]), job["steps"], job["sampler"], job["anchor"]


def plan_memory(mcfg: ModelConfig, cfg: JobConfig, geo: Geometry, auto_batch: bool, auto_placement: bool):
    """Resolve batch and frontier placement with the memory planner; returns (JobConfig, Prediction)."""
    from ..stream import memory

    try:
        pred = memory.plan(mcfg, 2 if cfg.dtype == "bf16" else 4, geo.hr_padded, cfg.vram or None, cfg.ram or None,
                           torch.device(cfg.device).type,
                           batch=None if auto_batch else (cfg.batch_rows, cfg.batch_cols),
                           placement=None if auto_placement else cfg.placement,
                           reference_attention=cfg.backend == "reference")
    except memory.BudgetError as exc:
        raise BadInput(str(exc)) from None
    return replace(cfg, batch_rows=pred.batch[0], batch_cols=pred.batch[1], placement=pred.placement), pred


def plan_dict(pred) -> dict:
    return {"batch": list(pred.batch), "placement": pred.placement, "device_bytes": pred.device_bytes,
            "host_bytes": pred.host_bytes, "disk_bytes": pred.disk_bytes, "parts": dict(pred.parts)}


def create_job(root: Path, source: Source, output: Path | None, model_dir: Path, cfg: JobConfig,
               stage: str = "x4", auto_batch: bool = False, auto_placement: bool = False) -> JobStore:
    """Make a new job dir: store, LR, semantic vector, then the manifest (written last)."""
    from ..core import anchoring
    from ..semantic.encoders import semantic_vector

    mcfg: ModelConfig = read_model_config(model_dir)
    if source.width < 1 or source.height < 1:
        raise BadInput(f"{source.name}: empty image")
    geo = Geometry(source.height, source.width, mcfg.block_size)
    cfg, pred = plan_memory(mcfg, cfg, geo, auto_batch, auto_placement)
    channels_out = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[source.mode]
    manifest = {
        "format": FORMAT,
        "stage": stage,
        "status": "created",
        "created": now_iso(),
        "model": {"dir": str(model_dir), "hash": model_hash(model_dir), "config": mcfg.to_dict()},
        "input": {"path": source.name, "sha256": source.sha256, "width": source.width, "height": source.height,
                  "mode": source.mode, "bit_depth": source.bit_depth},
        "output": {"path": str(output) if output else None},
        "job": cfg.to_dict(),
        "plan": plan_dict(pred),
        "geometry": geo.to_dict(),
        "sigmas": [float(s) for s in karras_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)],
        "cursor": 0,
        "anchor_moments": {"out": anchoring.Moments.empty(3).to_json(),
                           "ref": anchoring.Moments.empty(3).to_json()},
        "seconds": {},
        "model_blocks_done": 0,
    }
    manifest["total_tasks"] = len(job_tasks(geo.grid, *_shape_args(manifest)))
    store = JobStore.create(root, manifest, channels_out, "uint16" if source.bit_depth == 16 else "uint8",
                            "A" in source.mode, mcfg.vector_dim)
    ingest(store, source)
    vector = semantic_vector(model_dir, mcfg.vector_dim, CroppedView(store.array("lr"), geo.lr_height, geo.lr_width), cfg.prompt_pos or None,
                             cfg.prompt_neg or None)
    if vector is not None:
        store.array("vector")[...] = vector.detach().float().cpu().numpy()
    store.commit()  # the manifest is the last thing written: a job dir without it is incomplete
    return store


def check_same_job(manifest: dict, source: Source, model_dir: Path, cfg: JobConfig) -> None:
    """An existing job dir must have been made from the same input, model and pixel settings."""
    if manifest["model"]["hash"] != model_hash(model_dir):
        raise JobError(f"the job was made with another model ({manifest['model']['dir']}); use a new --job "
                       "dir or the same --model")
    if manifest["input"]["sha256"] != source.sha256:
        raise JobError(f"the job was made from another input ({manifest['input']['path']}); use a new --job dir")
    old = JobConfig.from_dict(manifest["job"]).pixel_settings()
    new = cfg.pixel_settings()
    diff = sorted(k for k in old if old[k] != new[k])
    if diff:
        raise JobError("the job was made with other settings (" + ", ".join(f"{k}={old[k]!r}" for k in diff)
                       + "); resume it with the same settings or use a new --job dir")


# ---- running ------------------------------------------------------------------------------------
class StopFlag:
    """SIGINT/SIGTERM set the flag; the runner stops at the next task boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop now (tasks are idempotent, the job stays safe)
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise, and RSS creeps up with the
    image width, tools/bench_memory.py); a no-op where malloc_trim does not exist."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def run_job(root: Path, model_dir: Path | None = None, progress: bool = True, log=print) -> dict:
    """Run (or resume) a job to the end; returns the final manifest. Raises Interrupted on Ctrl-C."""
    from ..api import load_model
    from .executor import TaskRunner

    root = Path(root)
    with job_lock(root):
        store = JobStore.open(root)
        stray = store.remove_partials()
        m = store.manifest
        model_dir = Path(model_dir).resolve() if model_dir else Path(m["model"]["dir"])
        if not (model_dir / "config.json").is_file():
            raise BadInput(f"the job's model dir {model_dir} is gone; pass --model DIR with the same model")
        if model_hash(model_dir) != m["model"]["hash"]:
            raise JobError(f"model {model_dir} is not the one job {root} was made with")
        job = JobConfig.from_dict(m["job"])
        device = torch.device(job.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BadInput("--device cuda was asked for but torch sees no CUDA device")
        dtype = torch.bfloat16 if job.dtype == "bf16" else torch.float32
        model = load_model(model_dir, device=device, dtype=dtype)
        vector = (torch.from_numpy(store.array("vector")[...]).to(device)
                  if model.cfg.vector_dim else None)
        geo = store.geometry
        tasks = job_tasks(geo.grid, *_shape_args(m))
        runner = TaskRunner(store, model, vector, m["sigmas"], device, job.backend)
        cursor = m["cursor"]
        if stray:
            log(f"removed {len(stray)} partial file(s) left by an interrupted write")
        if cursor < len(tasks) and tasks[cursor].is_model and tasks[cursor].batch.index > 0:
            first = cursor - tasks[cursor].batch.index
            log(f"rebuilding the K/V frontier: replaying {cursor - first} batch(es) of the current sweep")
            for index in range(first, cursor):
                runner.replay(tasks[index])
        bar = Progress(len(tasks), total_model_blocks(m), enabled=progress)
        store.commit(status="running", updated=now_iso())
        start = time.monotonic()
        seconds0 = dict(m.get("seconds", {}))
        with StopFlag() as stop:
            for task in (tasks[i] for i in range(cursor, len(tasks))):
                blocks_before = runner.timers.model_blocks
                changes = runner.run(task) or {}
                kill_point(task.index, "before-commit")
                release_free_memory()
                spent = {k: seconds0.get(k, 0.0) + v for k, v in runner.timers.seconds.items()}
                spent["total"] = seconds0.get("total", 0.0) + time.monotonic() - start
                new_blocks = runner.timers.model_blocks - blocks_before
                store.commit(cursor=task.index + 1, seconds=spent, updated=now_iso(),
                             model_blocks_done=m["model_blocks_done"] + new_blocks, **changes)
                label = f"{task.kind} {task.step + 1}/{job.steps}" if task.is_model else task.kind
                bar.update(task.index + 1, m["model_blocks_done"], label, new_blocks,
                           force=task.index + 1 == len(tasks))
                if stop.signal is not None:
                    bar.close()
                    store.commit(status="interrupted")
                    raise Interrupted(f"interrupted; resume with: streamsr resume {root}")
        bar.close()
        store.commit(status="done", updated=now_iso())
        return store.manifest


def remove_job_dir(root: Path) -> None:
    """Delete a job dir made by streamsr (refuses a dir that does not look like one)."""
    if (root / MANIFEST).is_file() or (root / STORE).is_dir():
        shutil.rmtree(root)


def job_status(root: Path) -> dict:
    """Progress, ETA and settings of a job, from its manifest alone (works while it runs)."""
    from .progress import eta_seconds

    m = read_manifest(Path(root))
    total_blocks = total_model_blocks(m)
    done_blocks = m.get("model_blocks_done", 0)
    seconds = m.get("seconds", {})
    eta = eta_seconds(total_blocks - done_blocks, done_blocks, seconds.get("total", 0.0))
    return {"status": m["status"], "stage": m.get("stage"), "cursor": m["cursor"], "total_tasks": m["total_tasks"],
            "model_blocks_done": done_blocks, "model_blocks_total": total_blocks, "eta_seconds": eta,
            "seconds": seconds, "job": m["job"], "plan": m.get("plan"), "model": m["model"]["dir"], "input": m["input"],
            "output": m["output"]["path"], "geometry": m["geometry"], "scale": SR_SCALE}
