"""Making a job dir: the LR input (`LRInput`), the memory plan, the store with the LR ingested (padded to
whole blocks by reflection) and the semantic vector, then the manifest (cursor 0), written last.

A job dir without a manifest is an incomplete creation: nothing in it was committed, so it is redone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..config import JobConfig, ModelConfig
from ..core.sampler import karras_sigmas
from ..errors import BadInput
from ..stream.memory import LR_SHARD_BLOCKS
from ..stream.planner import BatchShape, raster_batches
from ..stream.ranks import RankSplit, rank_split
from ..weights import model_hash, read_model_config
from .manifest import Geometry, InputInfo, JobStatus, Manifest, MemoryPlan, ModelRef, OutputRef
from .store import CroppedView, JobDir, JobError, JobStore

BAND_BLOCKS = LR_SHARD_BLOCKS[0]  # LR blocks per ingest band: whole rows of the lr shards
CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


@dataclass(frozen=True)
class LRInput:
    """An LR input: what the manifest records of it, and a generator of its row bands in [0, 1]."""

    info: InputInfo  # identity (path or a stage's description, sha256) and pixel format
    bands: Callable[[int], Iterator[tuple[int, np.ndarray]]]  # band_rows -> (y0, (rows, W, C) float32)


def file_source(path: Path) -> LRInput:
    """An input file or zarr array, read by row bands (huge PNG/TIFF/zarr inputs stream)."""
    from ..io.probe import input_sha256, probe
    from ..io.read import iter_row_bands

    info = probe(path, stream=True)
    return LRInput(InputInfo(str(Path(path).resolve()), input_sha256(path), info.width, info.height, info.mode,
                             info.bit_depth), lambda rows: iter_row_bands(path, rows))


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


def ingest(store: JobStore, source: LRInput) -> None:
    """Write the LR (and alpha) into the store by bands, padded right and bottom by reflection. Each band
    is written in one call and the last one with its bottom padding, so every write covers whole rows of
    the arrays' shards (memory.LR_SHARD_BLOCKS): no shard is rewritten."""
    geo = store.geometry
    lh, lw = geo.lr_padded
    lr, alpha = store.array("lr"), (store.array("alpha") if "A" in source.info.mode else None)
    height = source.info.height
    keep = geo.lr_block + 1  # rows of the previous band that the bottom padding may reflect
    pending: tuple[int, np.ndarray] | None = None  # (y0, band (rows, lw, C)) not yet written
    tail = np.zeros((0, lw, 0), dtype=np.float32)  # the last rows written, for the padding

    def write(y0: int, band: np.ndarray) -> None:
        color = band[..., :1].repeat(3, axis=-1) if source.info.mode in ("L", "LA") else band[..., :3]  # (rows, lw, 3)
        lr[0, :, y0:y0 + band.shape[0], :] = (color * 2 - 1).transpose(2, 0, 1)
        if alpha is not None:
            alpha[0, 0, y0:y0 + band.shape[0], :] = band[..., -1]

    rows_seen = 0
    for y0, band in source.bands(geo.lr_block * BAND_BLOCKS):
        band = _reflect_cols(np.asarray(band, dtype=np.float32), lw)  # (rows, lw, C)
        if pending is not None:
            write(*pending)
            tail = pending[1][-keep:]
        pending = (y0, band)
        rows_seen = y0 + band.shape[0]
    if rows_seen != height or pending is None:
        raise BadInput(f"{source.info.path}: expected {height} rows, read {rows_seen}")
    y0, band = pending
    if lh > height:  # bottom padding by reflection, from the last band and the rows kept before it
        rows = np.concatenate([tail, band]) if tail.shape[-1] else band  # (n, lw, C) ending at row height - 1
        first = height - rows.shape[0]
        band = np.concatenate([band, rows[[reflect_index(y, height) - first for y in range(height, lh)]]])
    write(y0, band)


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


def plan_memory(mcfg: ModelConfig, cfg: JobConfig, *, geometry: Geometry, auto_batch: bool,
                auto_placement: bool, ranks: int = 1) -> tuple[JobConfig, MemoryPlan, RankSplit]:
    """Resolve batch and frontier placement with the memory planner: (JobConfig with them, the plan, the
    split of the ranks). On several ranks (stream/ranks.rank_split) each steps sweep has few enough steps
    that every stage gets one, a sweep may be split into column bands, and the plan is one rank's (its
    band's frontier) within the budgets, which are per rank."""
    from ..stream import memory

    device_type = torch.device(cfg.device).type

    def plan_at(width: int, batch: tuple[int, int] | None) -> tuple[int, memory.Prediction]:
        """One rank's plan for a band `width` pixels wide: the budget's steps per sweep and the
        prediction of one sweep in flight."""
        try:
            pred = memory.plan(mcfg, 2 if cfg.dtype == "bf16" else 4, (geometry.hr_padded[0], width),
                               cfg.vram or None, cfg.ram or None, device_type, batch=batch,
                               placement=None if auto_placement else cfg.placement,
                               reference_attention=cfg.backend == "reference")
        except memory.BudgetError as exc:
            raise BadInput(str(exc)) from None
        fuse = memory.fused_plan(pred, steps=cfg.steps, sampler=cfg.sampler, vram=cfg.vram or None,
                                 ram=cfg.ram or None, device_type=device_type)[0]
        return fuse, pred

    fuse, pred = plan_at(geometry.hr_padded[1], None if auto_batch else (cfg.batch_rows, cfg.batch_cols))
    batches = raster_batches(geometry.grid, BatchShape(*pred.batch))
    plans = {1: (fuse, pred)}

    def fuse_for(bands: int) -> tuple[int, bool]:
        if bands not in plans:  # the widest band, with the whole job's batch shape
            width = min(-(-batches.cols // bands) * pred.batch[1], geometry.grid.cols) * mcfg.block_size
            plans[bands] = plan_at(width, pred.batch)
        return plans[bands][0], plans[bands][1].placement == "device"

    split = rank_split(ranks, steps=cfg.steps, batch_cols=batches.cols, batches=len(batches), fuse_for=fuse_for)
    fused = memory.fused_prediction(plans[split.bands][1], split.fuse, steps=cfg.steps, sampler=cfg.sampler,
                                    device_type=device_type)  # the sweeps in flight of the steps it runs
    fused = memory.with_heap_reuse(fused, ram=cfg.ram or None, device_type=device_type)
    plan = MemoryPlan.from_prediction(fused, fuse=split.fuse)
    return replace(cfg, batch_rows=plan.batch[0], batch_cols=plan.batch[1], placement=plan.placement), plan, split


def create_job(where: JobDir | Path, source: LRInput, *, output: Path | None, model_dir: Path, cfg: JobConfig,
               stage: str = "x4", auto_batch: bool = False, auto_placement: bool = False, ranks: int = 1) -> JobStore:
    """Make a new job dir: store, LR, semantic vector, then the manifest (written last). ranks: the
    processes that will run it together (jobs/ranks.py)."""
    from ..semantic import semantic_vector

    mcfg: ModelConfig = read_model_config(model_dir)
    if source.info.width < 1 or source.info.height < 1:
        raise BadInput(f"{source.info.path}: empty image")
    if source.info.mode not in CHANNELS:
        raise BadInput(f"{source.info.path}: pixel mode {source.info.mode!r} is not one of {', '.join(CHANNELS)}")
    geo = Geometry(source.info.height, source.info.width, mcfg.block_size)
    cfg, plan, split = plan_memory(mcfg, cfg, geometry=geo, auto_batch=auto_batch, auto_placement=auto_placement,
                                   ranks=ranks)
    manifest = Manifest(
        stage=stage,
        status=JobStatus.CREATED,
        created=now_iso(),
        model=ModelRef(str(model_dir), model_hash(model_dir), mcfg),
        input=source.info,
        output=OutputRef(str(output) if output else None),
        job=cfg,
        plan=plan,
        geometry=geo,
        sigmas=tuple(float(s) for s in karras_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)),
        total_tasks=0,
        init_sweep=False,  # step 0's sweeps compute x_T (planner.job_tasks)
        fuse_steps=plan.fuse,  # steps sweeps of this many steps (planner.fused_sweeps)
        ranks=ranks,
        bands=split.bands,
    )
    manifest = replace(manifest, total_tasks=len(manifest.tasks()))
    store = JobStore.create(where, manifest)
    ingest(store, source)
    vector = semantic_vector(model_dir, mcfg.vector_dim, CroppedView(store.array("lr"), geo.lr_height, geo.lr_width),
                             prompt_pos=cfg.prompt_pos or None, prompt_neg=cfg.prompt_neg or None)  # (1, V) or None
    if vector is not None:
        store.array("vector")[...] = vector.detach().float().cpu().numpy()
    store.commit()  # the manifest is the last thing written: a job dir without it is incomplete
    return store


def check_same_job(manifest: Manifest, source: LRInput, *, model_dir: Path, cfg: JobConfig) -> None:
    """An existing job dir must have been made from the same input, model and pixel settings."""
    if manifest.model.hash != model_hash(model_dir):
        raise JobError(f"the job was made with another model ({manifest.model.dir}); use a new --job "
                       "dir or the same --model")
    if manifest.input.sha256 != source.info.sha256:
        raise JobError(f"the job was made from another input ({manifest.input.path}); use a new --job dir")
    old = manifest.job.pixel_settings()
    new = cfg.pixel_settings()
    diff = sorted(k for k in old if old[k] != new[k])
    if diff:
        raise JobError("the job was made with other settings (" + ", ".join(f"{k}={old[k]!r}" for k in diff)
                       + "); resume it with the same settings or use a new --job dir")
