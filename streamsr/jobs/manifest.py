"""The job manifest (job.json), typed: what a job was made from, its sizes and schedule, and its progress.

`Manifest` is a frozen dataclass of small frozen parts (input, model, output, plan, geometry, moments)
with the job's `JobConfig` as its `job` field. `to_json` writes the keys every streamsr version wrote;
`from_json` reads manifests of earlier versions too (missing keys take their defaults, e.g. a
JobConfig field added later). A change is a new Manifest (`dataclasses.replace`), committed by the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Mapping

from ..config import SR_SCALE, JobConfig, ModelConfig
from ..core.anchoring import Moments
from ..stream.planner import BatchShape, Grid, TaskList, job_tasks

FORMAT = "streamsr-job/1"


class JobStatus(StrEnum):
    CREATED = "created"  # the inputs are in, nothing ran
    RUNNING = "running"  # a process is running it, or was killed while running it
    INTERRUPTED = "interrupted"  # stopped cleanly (Ctrl-C, SIGTERM) at a task boundary
    DONE = "done"  # every task ran, the output file is written


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

    def to_json(self) -> dict:
        return {"lr_height": self.lr_height, "lr_width": self.lr_width, "block_size": self.block_size}

    @classmethod
    def from_json(cls, data: dict) -> "Geometry":
        return cls(int(data["lr_height"]), int(data["lr_width"]), int(data["block_size"]))


@dataclass(frozen=True)
class InputInfo:
    """The LR input a job was made from: identity and pixel format."""

    path: str  # file path, or a description for a chained stage
    sha256: str
    width: int
    height: int
    mode: str  # "L", "LA", "RGB", "RGBA"
    bit_depth: int  # 8 or 16

    @property
    def channels(self) -> int:
        """Channels of the output (the input's)."""
        return len(self.mode)

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "width": self.width, "height": self.height,
                "mode": self.mode, "bit_depth": self.bit_depth}

    @classmethod
    def from_json(cls, data: dict) -> "InputInfo":
        return cls(str(data["path"]), str(data["sha256"]), int(data["width"]), int(data["height"]),
                   str(data["mode"]), int(data["bit_depth"]))


@dataclass(frozen=True)
class ModelRef:
    """The model dir a job runs with, its content hash and its config."""

    dir: str
    hash: str
    config: ModelConfig

    def to_json(self) -> dict:
        return {"dir": self.dir, "hash": self.hash, "config": self.config.to_dict()}

    @classmethod
    def from_json(cls, data: dict) -> "ModelRef":
        return cls(str(data["dir"]), str(data["hash"]), ModelConfig.from_dict(data["config"]))


@dataclass(frozen=True)
class OutputRef:
    """Where the output file goes; None for the first stage of a x16 chain (its output array feeds the
    next stage)."""

    path: str | None

    def to_json(self) -> dict:
        return {"path": self.path}

    @classmethod
    def from_json(cls, data: dict) -> "OutputRef":
        return cls(None if data["path"] is None else str(data["path"]))


@dataclass(frozen=True)
class MemoryPlan:
    """The memory planner's choice for the job and its predicted peaks (stream.memory.Prediction)."""

    batch: tuple[int, int]  # (bh, bw) blocks
    placement: str  # where the K/V frontier lives: device, host or disk
    device_bytes: int
    host_bytes: int
    disk_bytes: int
    parts: Mapping[str, int] = field(default_factory=dict)  # named terms, bytes
    fuse: int = 0  # sampler steps per fused sweep (stream.memory.fuse_steps); 0 in plans of earlier versions

    @classmethod
    def from_prediction(cls, pred, *, fuse: int = 0) -> "MemoryPlan":
        return cls((int(pred.batch[0]), int(pred.batch[1])), pred.placement, pred.device_bytes, pred.host_bytes,
                   pred.disk_bytes, dict(pred.parts), fuse)

    def to_json(self) -> dict:
        data = {"batch": list(self.batch), "placement": self.placement, "device_bytes": self.device_bytes,
                "host_bytes": self.host_bytes, "disk_bytes": self.disk_bytes, "parts": dict(self.parts)}
        return {**data, "fuse": self.fuse} if self.fuse else data

    @classmethod
    def from_json(cls, data: dict) -> "MemoryPlan":
        return cls((int(data["batch"][0]), int(data["batch"][1])), str(data["placement"]), int(data["device_bytes"]),
                   int(data["host_bytes"]), int(data["disk_bytes"]), dict(data.get("parts", {})),
                   _count(data.get("fuse", 0), "plan fuse"))


@dataclass(frozen=True)
class AnchorMoments:
    """Per-channel moments of the result (`out`) and of up(LR) (`ref`), accumulated by the stats tasks."""

    out: Moments
    ref: Moments

    @classmethod
    def empty(cls, channels: int = 3) -> "AnchorMoments":
        return cls(Moments.empty(channels), Moments.empty(channels))

    def to_json(self) -> dict:
        return {"out": self.out.to_json(), "ref": self.ref.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> "AnchorMoments":
        empty = Moments.empty(3).to_json()
        return cls(Moments.from_json(data.get("out", empty)), Moments.from_json(data.get("ref", empty)))


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class Manifest:
    """Everything a job dir records besides its arrays; job.json holds `to_json()`."""

    stage: str  # "x4", or "x16 stage 1/2" / "x16 stage 2/2"
    status: JobStatus
    created: str  # ISO time (UTC)
    model: ModelRef
    input: InputInfo
    output: OutputRef
    job: JobConfig
    geometry: Geometry
    sigmas: tuple[float, ...]  # the Karras schedule, sigma_0 .. sigma_N = 0
    total_tasks: int
    plan: MemoryPlan | None = None  # absent in manifests of early versions
    cursor: int = 0  # tasks done (committed)
    moments: AnchorMoments = field(default_factory=AnchorMoments.empty)
    seconds: Mapping[str, float] = field(default_factory=dict)  # time spent per category (model, read, write, total)
    model_blocks_done: int = 0  # block evaluations of the denoiser committed so far
    updated: str | None = None  # ISO time of the last commit while running
    init_sweep: bool = True  # x_T written by an init sweep (earlier versions) or computed by step 0's sweeps
    fuse_steps: int = 0  # sampler steps per steps sweep (planner.fused_sweeps); 0: one sweep per predict/correct
    ranks: int = 1  # processes that run the job together (stream/ranks.py; 1 in earlier versions)
    bands: int = 1  # column bands per steps sweep (stream/bands.py): ranks // bands sweeps in flight

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", JobStatus(self.status))
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        if not 0 <= self.cursor <= self.total_tasks:
            raise ValueError(f"cursor {self.cursor} outside 0..{self.total_tasks}")
        if self.ranks < 1 or (self.ranks > 1 and not self.fuse_steps):
            raise ValueError(f"ranks {self.ranks}: a job runs on >= 1 rank, several only with fused steps")
        if not 1 <= self.bands <= self.ranks:
            raise ValueError(f"{self.bands} column bands on {self.ranks} rank(s)")

    # ---- derived ----------------------------------------------------------------------------------
    @property
    def batch_shape(self) -> BatchShape:
        return BatchShape(self.job.batch_rows, self.job.batch_cols)

    def tasks(self) -> TaskList:
        """The job's task list (planner.job_tasks) for its grid, batch shape, sampler and anchoring."""
        return job_tasks(self.geometry.grid, self.batch_shape, steps=self.job.steps, sampler=self.job.sampler,
                         anchor=self.job.anchor, init_sweep=self.init_sweep, fuse=self.fuse_steps)

    @property
    def groups(self) -> int:
        """Steps sweeps of a fused job (0 for the per-sweep layout)."""
        return -(-self.job.steps // self.fuse_steps) if self.fuse_steps else 0

    @property
    def ring(self) -> int:
        """State arrays the steps sweeps cycle through (store.group_array): sweeps in flight + 1."""
        return self.ranks // self.bands + 1

    # ---- JSON -------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        data = {
            "format": FORMAT,
            "stage": self.stage,
            "status": str(self.status),
            "created": self.created,
            "model": self.model.to_json(),
            "input": self.input.to_json(),
            "output": self.output.to_json(),
            "job": self.job.to_dict(),
            "geometry": self.geometry.to_json(),
            "sigmas": list(self.sigmas),
            "cursor": self.cursor,
            "anchor_moments": self.moments.to_json(),
            "seconds": dict(self.seconds),
            "model_blocks_done": self.model_blocks_done,
            "total_tasks": self.total_tasks,
            "init_sweep": self.init_sweep,
            "fuse_steps": self.fuse_steps,
        }
        if self.ranks != 1:
            data["ranks"] = self.ranks
        if self.bands != 1:
            data["bands"] = self.bands
        if self.plan is not None:
            data["plan"] = self.plan.to_json()
        if self.updated is not None:
            data["updated"] = self.updated
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        """Inverse of `to_json`; also reads the manifests of earlier versions (keys they lack take their
        defaults). Raises ValueError (or KeyError, TypeError) on a manifest that is not one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} manifest")
        plan = data.get("plan")
        return cls(
            stage=str(data.get("stage", "x4")),
            status=JobStatus(data["status"]),
            created=str(data.get("created", "")),
            model=ModelRef.from_json(data["model"]),
            input=InputInfo.from_json(data["input"]),
            output=OutputRef.from_json(data["output"]),
            job=JobConfig.from_dict(data["job"]),
            geometry=Geometry.from_json(data["geometry"]),
            sigmas=tuple(float(s) for s in data["sigmas"]),
            total_tasks=int(data["total_tasks"]),
            plan=None if plan is None else MemoryPlan.from_json(plan),
            cursor=int(data.get("cursor", 0)),
            moments=AnchorMoments.from_json(data.get("anchor_moments", {})),
            seconds={str(k): float(v) for k, v in data.get("seconds", {}).items()},
            model_blocks_done=int(data.get("model_blocks_done", 0)),
            updated=data.get("updated"),
            init_sweep=_flag(data.get("init_sweep", True), "init_sweep"),
            fuse_steps=_count(data.get("fuse_steps", 0), "fuse_steps"),
            ranks=_count(data.get("ranks", 1), "ranks"),
            bands=_count(data.get("bands", 1), "bands"),
        )
