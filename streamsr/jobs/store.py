"""The job store: a zarr v3 group holding a job's arrays, and its JSON manifest.

Layout of a job dir:
    job.json      the manifest (settings, model and input hashes, geometry, schedule, cursor),
                  written atomically (temp file, fsync, rename, fsync dir) after the data it describes
    lock          held (flock) by the one process running the job
    state.zarr/   lr (1,3,h,w) f32 in [-1,1], padded to whole blocks; alpha (1,1,h,w) f32 if any;
                  vector (1,V) f32; state0/state1 (ping-pong x_i), pred, deriv (1,3,H,W) f32;
                  output (H,W,C) uint8|uint16. Chunk = one block, so one block write is one atomic
                  chunk write (zarr writes a temp file and renames it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from ..config import SR_SCALE
from ..errors import StreamsrError
from .faults import kill_point
from ..stream.planner import Grid

MANIFEST = "job.json"
STORE = "state.zarr"
LOCK = "lock"
FORMAT = "streamsr-job/1"
STATE_ARRAYS = ("state0", "state1", "pred", "deriv")


class JobError(StreamsrError):
    """A job dir that cannot be used as asked (locked, mismatched, damaged)."""


CHAIN = "chain.json"  # an x16 job dir: chain.json + stage1/ + stage2/ (each an x4 job dir)
FRONTIER = "frontier"  # the disk placement's K/V spill dir (never persisted across sweeps)
STAGES = ("stage1", "stage2")


@dataclass(frozen=True)
class JobDir:
    """The one owner of a job dir's layout: every path inside it is spelled here and nowhere else.

    An x4 job dir holds the manifest, the lock, the zarr store and (disk placement) the frontier spill;
    an x16 job dir holds chain.json and two x4 job dirs, stage1/ and stage2/ (stage 2's LR is stage 1's
    output).
    """

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def manifest_tmp(self) -> Path:
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


@dataclass(frozen=True)
class Geometry:
    """Sizes of a job: the LR as given, padded to whole blocks, and the x4 output."""

    lr_height: int  # LR pixels as given
    lr_width: int
    block_size: int  # HR pixels per block side

    @property
    def lr_block(self) -> int:
        return self.block_size // SR_SCALE

    @property
    def grid(self) -> Grid:
        return Grid(-(-self.lr_height // self.lr_block), -(-self.lr_width // self.lr_block))

    @property
    def lr_padded(self) -> tuple[int, int]:
        return self.grid.rows * self.lr_block, self.grid.cols * self.lr_block

    @property
    def hr_padded(self) -> tuple[int, int]:
        return self.grid.rows * self.block_size, self.grid.cols * self.block_size

    @property
    def hr_size(self) -> tuple[int, int]:
        """(height, width) of the output after cropping the padding."""
        return self.lr_height * SR_SCALE, self.lr_width * SR_SCALE

    def to_dict(self) -> dict:
        return {"lr_height": self.lr_height, "lr_width": self.lr_width, "block_size": self.block_size}


def write_json_atomic(path: Path, data: dict, fault_index: int = -1) -> None:
    """Write JSON so that a crash leaves either the old or the new file, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    kill_point(fault_index - 1, "mid-commit")
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        raise JobError(f"{root} is not a streamsr job dir (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise JobError(f"{path} is not a {FORMAT} manifest")
    return data


class JobStore:
    """Arrays and manifest of one job dir."""

    def __init__(self, root: Path, group: zarr.Group, manifest: dict):
        self.root = root
        self.group = group
        self.manifest = manifest
        self.geometry = Geometry(**manifest["geometry"])

    # ---- create / open --------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, manifest: dict, channels_out: int, out_dtype: str, has_alpha: bool,
               vector_dim: int) -> "JobStore":
        """Make the arrays; the manifest is written last, by the caller, once the inputs are in."""
        geo = Geometry(**manifest["geometry"])
        root.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(root / STORE, mode="w")
        lh, lw = geo.lr_padded
        hh, hw = geo.hr_padded
        lb, bs = geo.lr_block, geo.block_size
        group.create_array("lr", shape=(1, 3, lh, lw), chunks=(1, 3, lb, lb), dtype="float32", compressors=None)
        if has_alpha:
            group.create_array("alpha", shape=(1, 1, lh, lw), chunks=(1, 1, lb, lb), dtype="float32",
                               compressors=None)
        if vector_dim:
            group.create_array("vector", shape=(1, vector_dim), chunks=(1, vector_dim), dtype="float32",
                               compressors=None)
        for name in STATE_ARRAYS:
            group.create_array(name, shape=(1, 3, hh, hw), chunks=(1, 3, bs, bs), dtype="float32",
                               compressors=None)
        group.create_array("output", shape=(hh, hw, channels_out), chunks=(bs, bs, channels_out),
                           dtype=out_dtype, fill_value=0)
        return cls(root, group, manifest)

    @classmethod
    def open(cls, root: Path) -> "JobStore":
        manifest = read_manifest(root)
        try:
            group = zarr.open_group(root / STORE, mode="r+")
        except Exception as exc:  # zarr raises several types for a missing or damaged group
            raise JobError(f"cannot open the job store {root / STORE}: {exc}") from None
        return cls(root, group, manifest)

    def commit(self, **changes) -> None:
        """Update the manifest and write it atomically (after the data it describes)."""
        self.manifest.update(changes)
        write_json_atomic(self.root / MANIFEST, self.manifest, self.manifest.get("cursor", 0))

    def remove_partials(self) -> list[Path]:
        """Delete the temp files a killed zarr write leaves behind; returns what was removed."""
        stray = list((self.root / STORE).rglob("*.partial")) + list(self.root.glob(f"{MANIFEST}.tmp"))
        for path in stray:
            path.unlink(missing_ok=True)
        return stray

    # ---- block I/O ------------------------------------------------------------------------------
    def read(self, name: str, box: tuple[int, int, int, int]) -> torch.Tensor:
        """Region (y0, y1, x0, x1) of a (1, C, H, W) array as a float32 tensor (1, C, h, w)."""
        y0, y1, x0, x1 = box
        return torch.from_numpy(np.ascontiguousarray(self.group[name][:, :, y0:y1, x0:x1]))

    def write(self, name: str, box: tuple[int, int, int, int], value: torch.Tensor) -> None:
        y0, y1, x0, x1 = box
        self.group[name][:, :, y0:y1, x0:x1] = value.detach().to("cpu", torch.float32).numpy()

    def array(self, name: str):
        return self.group[name]


class CroppedView:
    """The unpadded (h, w) top-left part of a (1, C, H, W) array, sliceable like the array itself."""

    def __init__(self, array, height: int, width: int):
        self.array = array
        self.shape = (*array.shape[:2], height, width)

    def __getitem__(self, key):
        return self.array[:, :, :self.shape[2], :self.shape[3]][key]


@contextlib.contextmanager
def job_lock(root: Path):
    """Hold the job's lock for the life of the block; a second process gets a clear JobError."""
    path = root / LOCK
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            raise JobError(f"job {root} is being run by {owner}; wait for it or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.close()
