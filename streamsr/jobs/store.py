"""The job dir: its layout (`JobDir`, the one place that spells its paths), its zarr store of arrays and its
typed manifest (`JobStore`), and the lock that lets one process run it.

Layout of a job dir:
    job.json      the manifest (manifest.Manifest: settings, model and input hashes, geometry, schedule,
                  cursor), written atomically (temp file, fsync, rename, fsync dir) after the data it describes
    lock          held (flock) by the one process running the job
    state.zarr/   lr (1,3,h,w) f32 in [-1,1], padded to whole blocks; alpha (1,1,h,w) f32 if any;
                  vector (1,V) f32; state0/state1 (ping-pong x_i), pred, deriv (1,3,H,W) f32;
                  output (H,W,C) uint8|uint16. Chunk = one block; zarr v3 shards of blocks (`shard_grid`,
                  aligned to the block batches; LR_SHARD_BLOCKS for lr/alpha), each written whole by
                  the run's one writer (shards.py): a temp file renamed, so a crash never tears one.
                  Job dirs of earlier versions have no shards (chunk = file) and still run.
    frontier/     the disk placement's K/V spill (never persisted across sweeps)
    ranks/        rank-K.json: the cursor of each rank of a job run by several (jobs/ranks.py)
An x16 job dir holds chain.json and two x4 job dirs, stage1/ and stage2/.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import zarr
from filelock import FileLock, Timeout
from zarr.codecs import Crc32cCodec, ZstdCodec

from ..errors import StreamsrError
from ..stream.memory import LR_SHARD_BLOCKS, SHARD_BYTES
from ..stream.planner import BatchShape
from .consistency import check_loaded, check_raw, check_runnable
from .faults import kill_point_in
from .integrity import check_chunks, check_present, check_shard_files, has_checksums, python_pipeline, read_checked
from .jsonsum import check_seal, seal
from .manifest import FORMAT, Geometry, Manifest

MANIFEST = "job.json"
STORE = "state.zarr"
LOCK = "lock"
CHAIN = "chain.json"
FRONTIER = "frontier"
RANKS = "ranks"
STAGES = ("stage1", "stage2")
STATE_ARRAYS = ("state0", "state1", "pred", "deriv")




def shard_grid(*, block_bytes: int, batch: BatchShape, grid_cols: int, ranks: int = 1) -> tuple[int, int]:
    """Blocks per shard (rows, cols): the batch's rows, and a whole number of batch widths of about
    SHARD_BYTES in all (at least one batch, at most the grid's width rounded up to a batch). On several
    ranks a shard is one batch: a shard reaches the disk whole, and the next rank's sweep waits for it."""
    per_batch = block_bytes * batch.rows * batch.cols
    widths = 1 if ranks > 1 else max(1, SHARD_BYTES // max(per_batch, 1))
    widths = min(widths, math.ceil(grid_cols / batch.cols))
    return batch.rows, widths * batch.cols


def codec_pipeline():
    """A context in which opened zarr arrays use the Rust codec pipeline of the `zarrs` package when it is
    installed (whole-shard writes ~3x faster than zarr-python's, tools/bench_engine.py notes), else
    zarr-python's own. Arrays keep the pipeline they were opened with."""
    try:
        import zarrs  # noqa: F401, PLC0415
    except ImportError:
        return contextlib.nullcontext()
    return zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})


class JobError(StreamsrError):
    """A job dir that cannot be used as asked (locked, mismatched, damaged)."""


@dataclass(frozen=True)
class JobDir:
    """The one owner of a job dir's layout: every path inside it is spelled here and nowhere else.

    An x4 job dir holds the manifest, the lock, the zarr store and (disk placement) the frontier spill;
    an x16 job dir holds chain.json and two x4 job dirs, stage1/ and stage2/ (stage 2's LR is stage 1's
    output).
    """

    root: Path

    @classmethod
    def of(cls, where: "JobDir | str | os.PathLike") -> "JobDir":
        """`where` as a JobDir (a path or a JobDir)."""
        return where if isinstance(where, JobDir) else cls(Path(where))

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def manifest_tmp(self) -> Path:
        """The prefix of the manifest's temp files (each writer's own: job.json.tmp-PID-RANDOM)."""
        return self.root / f"{MANIFEST}.tmp"

    @property
    def store(self) -> Path:
        return self.root / STORE

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def frontier(self) -> Path:
        return self.root / FRONTIER

    @property
    def chain(self) -> Path:
        return self.root / CHAIN

    @property
    def ranks(self) -> Path:
        """The cursor files of a job run by several ranks (jobs/ranks.py), one per rank."""
        return self.root / RANKS

    def rank_file(self, rank: int) -> Path:
        return self.ranks / f"rank-{rank}.json"

    def stage(self, number: int) -> "JobDir":
        """Stage 1 or 2 of an x16 chain."""
        return JobDir(self.root / STAGES[number - 1])

    def is_job(self) -> bool:
        """An x4 job dir (it has a manifest)."""
        return self.manifest.is_file()

    def is_chain(self) -> bool:
        return self.chain.is_file()

    def result(self) -> "JobDir":
        """The x4 job dir whose output is this job's result: itself, or stage 2 of a chain."""
        return self.stage(2) if self.is_chain() else self

    def latest(self) -> "JobDir":
        """The last x4 job dir that exists: itself, or the last stage of a chain with a manifest (stage 1
        while stage 2 has not started); what a viewer of a running job shows."""
        if not self.is_chain():
            return self
        started = [self.stage(n) for n in (2, 1) if self.stage(n).is_job()]
        return started[0] if started else self.stage(1)

    def foreign(self) -> list[str]:
        """Names in the dir that creating an x4 job does not make (a dir holding any is not a job's)."""
        ours = {self.store.name, self.lock.name, self.ranks.name}
        tmp = self.manifest_tmp.name  # job.json.tmp-PID-RANDOM (write_json_atomic)
        return sorted(p.name for p in self.root.iterdir() if p.name not in ours and not p.name.startswith(tmp))

    def partials(self) -> list[Path]:
        """Temp files a killed write leaves behind: zarr's `*.partial` chunks and the manifest's temp file."""
        return [*self.store.rglob("*.partial"), *self.root.glob(self.manifest_tmp.name + "*")]


def state_array(step: int) -> str:
    """The ping-pong state array holding x after `step` sampler steps (x_T is step 0), per-sweep layout."""
    return STATE_ARRAYS[step % 2]


def group_array(group: int, *, ring: int = 2) -> str:
    """The state array holding x after `group` steps sweeps (fused layout; x_T is group 0): ping-pong
    state0/state1 in one process, a ring of state0 .. state{ring - 1} for a job on several ranks
    (stream/ranks.py says why ranks + 1 slots are enough)."""
    return f"state{group % ring}"


def ring_arrays(manifest: Manifest) -> tuple[str, ...]:
    """The state arrays a job's steps sweeps use beyond STATE_ARRAYS (state2 .. for several ranks)."""
    return tuple(f"state{slot}" for slot in range(2, manifest.ring))


def final_array(manifest: Manifest) -> str:
    """The state array holding the sampler's result x_0."""
    return group_array(manifest.groups, ring=manifest.ring) if manifest.fuse_steps else state_array(manifest.job.steps)


def write_json_atomic(path: Path, data: dict, *, fault_tasks: range = range(0)) -> None:
    """Write JSON so that a crash leaves either the old or the new file, never a torn one; it carries its
    own checksum (jsonsum.seal), which read_manifest checks.

    fault_tasks: the tasks a cursor commit covers (the crash tests' `mid-commit` point of each).
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")  # one per writer
    with open(tmp, "w") as fh:
        json.dump(seal(data), fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    kill_point_in(fault_tasks, "mid-commit")
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_manifest(where: JobDir | str | os.PathLike) -> Manifest:
    """The manifest of an x4 job dir; JobError if there is none or it cannot be read."""
    job_dir = JobDir.of(where)
    path = job_dir.manifest
    if not path.is_file() and job_dir.store.is_dir():  # killed while being created: nothing was committed
        raise JobError(f"{job_dir.root} has no {path.name}: its creation was stopped (or still runs) before it "
                       f"committed anything, so nothing in it can be resumed; delete it, or run the same upscale "
                       f"with --job {job_dir.root}")
    if not path.is_file():
        raise JobError(f"{job_dir.root} is not a streamsr job dir (no {path.name})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobError(f"cannot read {path}: {exc}") from None
    check_seal(data, path, error=JobError)  # an edited or damaged manifest (none in earlier versions)
    try:
        check_raw(data)
        manifest = Manifest.from_json(data)
        check_loaded(manifest)
        return manifest
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError) as exc:
        raise JobError(f"{path} is not a {FORMAT} manifest ({type(exc).__name__}: {exc})") from None


class JobStore:
    """Arrays and manifest of one job dir. `manifest` is the last one committed."""

    def __init__(self, job_dir: JobDir, group: zarr.Group, manifest: Manifest):
        self.dir = job_dir
        self.group = group
        self._arrays: dict[str, zarr.Array] = {}  # opened once: each open reads the array's zarr.json
        self._checked: set[str] = set()  # arrays whose checksums were all checked (check_once)
        self.manifest = manifest

    @property
    def geometry(self) -> Geometry:
        return self.manifest.geometry

    # ---- create / open --------------------------------------------------------------------------
    @classmethod
    def create(cls, where: JobDir | str | os.PathLike, manifest: Manifest) -> "JobStore":
        """Make the arrays for `manifest`; the manifest is written last, by the caller (`commit`), once the
        inputs are in."""
        job_dir = JobDir.of(where)
        geo, info = manifest.geometry, manifest.input
        job_dir.root.mkdir(parents=True, exist_ok=True)
        with codec_pipeline():
            group = zarr.open_group(job_dir.store, mode="w")
        lh, lw = geo.lr_padded
        hh, hw = geo.hr_padded
        lb, bs = geo.lr_block, geo.block_size
        vector_dim = manifest.model.config.vector_dim
        rows, cols = shard_grid(block_bytes=3 * bs * bs * 4, batch=manifest.batch_shape, grid_cols=geo.grid.cols,
                                ranks=manifest.ranks)
        lr_shard = (lb * LR_SHARD_BLOCKS[0], lb * LR_SHARD_BLOCKS[1])  # ingest writes whole rows of them
        crc = [Crc32cCodec()]  # checksummed chunks, NaN fill: integrity.py (never a silently wrong pixel)
        nan = {"dtype": "float32", "compressors": crc, "fill_value": float("nan")}
        group.create_array("lr", shape=(1, 3, lh, lw), chunks=(1, 3, lb, lb), shards=(1, 3, *lr_shard), **nan)
        if "A" in info.mode:
            group.create_array("alpha", shape=(1, 1, lh, lw), chunks=(1, 1, lb, lb), shards=(1, 1, *lr_shard), **nan)
        if vector_dim:
            group.create_array("vector", shape=(1, vector_dim), chunks=(1, vector_dim), **nan)
        for name in (*STATE_ARRAYS, *ring_arrays(manifest)):
            group.create_array(name, shape=(1, 3, hh, hw), chunks=(1, 3, bs, bs), shards=(1, 3, rows * bs, cols * bs),
                               **nan)
        group.create_array("output", shape=(hh, hw, info.channels), chunks=(bs, bs, info.channels),
                           shards=(rows * bs, cols * bs, info.channels), compressors=[ZstdCodec(level=0), *crc],
                           dtype="uint16" if info.bit_depth == 16 else "uint8", fill_value=0)
        return cls(job_dir, group, manifest)

    @classmethod
    def open(cls, where: JobDir | str | os.PathLike) -> "JobStore":
        job_dir = JobDir.of(where)
        manifest = read_manifest(job_dir)
        try:
            check_runnable(manifest)
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            raise JobError(f"{job_dir.manifest} does not describe a job that can run ({exc}); it was edited or "
                           "damaged") from None
        try:
            with codec_pipeline():
                group = zarr.open_group(job_dir.store, mode="r+")
        except Exception as exc:  # zarr raises several types for a missing or damaged group
            raise JobError(f"cannot open the job store {job_dir.store}: {exc}") from None
        return cls(job_dir, group, manifest)

    def commit(self, **changes) -> Manifest:
        """Write the manifest with `changes` (Manifest fields) atomically, after the data it describes;
        returns it (it is also the store's `manifest` from now on)."""
        manifest = replace(self.manifest, **changes)
        write_json_atomic(self.dir.manifest, manifest.to_json(),
                          fault_tasks=range(self.manifest.cursor, manifest.cursor))
        self.manifest = manifest
        return manifest

    def remove_partials(self) -> list[Path]:
        """Delete the temp files a killed write left behind; returns what was removed."""
        stray = self.dir.partials()
        for path in stray:
            path.unlink(missing_ok=True)
        return stray

    # ---- block I/O ------------------------------------------------------------------------------
    def read(self, name: str, box: tuple[int, int, int, int]) -> torch.Tensor:
        """Region (y0, y1, x0, x1) of a (1, C, H, W) array as a float32 tensor (1, C, h, w); a missing or
        corrupt block is integrity.DamagedData."""
        y0, y1, x0, x1 = box
        return torch.from_numpy(np.ascontiguousarray(self.read_region(name, (slice(None), slice(None), slice(y0, y1),
                                                                            slice(x0, x1)), origin=(y0, x0))))

    def read_region(self, name: str, key, *, origin: tuple[int, int]) -> np.ndarray:
        """array[key] read with its checksums checked and, for a (1, C, H, W) float array, no missing block
        (`origin`: the key's top-left pixel); DamagedData naming the block otherwise."""
        array = self.reading(name)
        data = read_checked(array, name, key, origin=origin, job=str(self.dir.root))
        if data.ndim == 4 or name == "vector":
            check_present(data, array, name, origin=origin, job=str(self.dir.root))
        return data

    def check_once(self, name: str) -> None:
        """Check every chunk checksum of an array that a run never writes (lr, alpha) once, shard by shard
        (DamagedData naming the first bad one); later reads of it may then skip the checks (`zarrs`)."""
        if name not in self._checked:
            job = str(self.dir.root)
            if not check_shard_files(self.array(name), self.dir.store / name, name, job=job):  # fast: file by file
                check_chunks(self.reading(name), name, job=job)
            self._checked.add(name)

    def reading(self, name: str) -> zarr.Array:
        """The array `name` opened for reads: with zarr-python's pipeline when its chunks have checksums
        (which it checks on every decode), else the same as `array`."""
        key = f"{name}:read"
        array = self._arrays.get(key)
        if array is None:
            array = self.array(name)
            if has_checksums(array):
                with python_pipeline():
                    array = self.group[name]
            self._arrays[key] = array
        return array

    def write(self, name: str, box: tuple[int, int, int, int], value) -> None:
        """Write value over region (y0, y1, x0, x1): (1, C, h, w) (tensor or array) into a (1, C, H, W)
        array, or (h, w, C) pixels into the (H, W, C) output array. The one place the job's arrays are
        written during a run (shards.ShardWriter calls it)."""
        y0, y1, x0, x1 = box
        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu", torch.float32).numpy()
        if name == "output":
            self.array(name)[y0:y1, x0:x1, :] = value
        else:
            self.array(name)[:, :, y0:y1, x0:x1] = value

    def array(self, name: str) -> zarr.Array:
        """The array `name`, opened once (with the fastest codec pipeline there is, `codec_pipeline`)."""
        array = self._arrays.get(name)
        if array is None:
            with codec_pipeline():
                array = self._arrays[name] = self.group[name]
        return array


class CroppedView:
    """The unpadded (h, w) top-left part of a (1, C, H, W) array, sliceable like the array itself."""

    def __init__(self, array, height: int, width: int):
        self.array = array
        self.shape = (*array.shape[:2], height, width)

    def __getitem__(self, key):
        if (isinstance(key, tuple) and len(key) == 3 and key[0] is Ellipsis
                and all(isinstance(k, slice) and k.step in (None, 1) for k in key[1:])):
            ys, xs = (slice(*k.indices(n)[:2]) for k, n in zip(key[1:], self.shape[2:]))
            return self.array[:, :, ys, xs]  # (..., rows, cols) inside the crop: read only that region
        return self.array[:, :, :self.shape[2], :self.shape[3]][key]


@contextlib.contextmanager
def job_lock(where: JobDir | str | os.PathLike):
    """Hold the job's lock for the life of the block; a second process (or thread) gets a clear JobError.

    The lock is an OS lock (filelock: flock on POSIX, LockFileEx on Windows) on the `lock` file, which
    streamsr never deletes; it is taken before anything in the job dir is created or deleted."""
    job_dir = JobDir.of(where)
    lock = FileLock(job_dir.lock, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            owner = job_dir.lock.read_text().strip() or "another process"
        except OSError:
            owner = "another process"
        raise JobError(f"job {job_dir.root} is being run by {owner}; wait for it or stop it first") from None
    try:
        with contextlib.suppress(OSError):  # who holds it, for the message above (Windows may refuse the write)
            job_dir.lock.write_text(f"pid {os.getpid()}")
        yield
    finally:
        lock.release()
