"""`streamsr verify JOB`: read a whole job dir (running, stopped or finished) and say what is wrong.

Every chunk that is stored is read and its crc32c checked (integrity.py); a float chunk that holds NaN is
damaged. Chunks that must be present are checked against the manifest's cursor: the LR, alpha and vector
always, the sampler's result once the job is past sampling, the output once every anchor task ran. The
other state chunks are checked where a task reads them (their NaN fill makes a missing one visible then).
Arrays of job dirs made before checksums existed are read (a torn chunk shows) but cannot be proved
intact or complete; the report says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import zarr

from ..stream.planner import TaskKind
from .integrity import DamagedData, absent_chunks, data_has_nan_fill, has_checksums, python_pipeline, read_checked
from .manifest import JobStatus, Manifest
from .progress import Timers
from .store import JobDir, JobStore

SHOWN = 5  # damaged blocks named per array


@dataclass
class VerifyReport:
    """What `verify_job` found: `problems` (the job must not be used as it is) and `notes`."""

    job: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        verdict = "intact" if self.ok else f"DAMAGED ({len(self.problems)} problem(s))"
        return [f"job {self.job}: {verdict}", *(f"  problem: {p}" for p in self.problems),
                *(f"  note: {n}" for n in self.notes)]


def _block(name: str, coords: tuple[int, ...]) -> str:
    if name == "vector":
        return "vector"
    r, c = coords[:2] if name == "output" else coords[2:4]
    return f"{name} block (row {r}, col {c})"


def required_arrays(store: JobStore) -> set[str]:
    """Arrays every chunk of which must be present at the manifest's cursor."""
    from .finalize import Finalizer  # noqa: PLC0415 - the one place that names the sampler's result

    m: Manifest = store.manifest
    names = {"lr", "alpha", "vector"}
    tasks = m.tasks()
    kinds = [tasks[i].kind for i in range(len(tasks))]
    after = [i for i, kind in enumerate(kinds) if kind in (TaskKind.STATS, TaskKind.ANCHOR)]
    if m.status is JobStatus.DONE or (after and m.cursor >= after[0]):
        names.add(Finalizer(store, device=torch.device("cpu"), timers=Timers()).final)
    anchors = [i for i, kind in enumerate(kinds) if kind is TaskKind.ANCHOR]
    if m.status is JobStatus.DONE or (anchors and m.cursor > anchors[-1]):
        names.add("output")
    return names


def _verify_array(store: JobStore, name: str, array: zarr.Array, required: bool, report: VerifyReport) -> None:
    job = str(store.dir.root)
    checked = has_checksums(array)
    absent = set(absent_chunks(array, store.dir.store / name, inner=data_has_nan_fill(array))) if checked else set()
    damaged: list[str] = []
    step = array.shards or array.chunks
    for start in np.ndindex(*(-(-n // s) for n, s in zip(array.shape, step))):
        key = tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(start, step, array.shape))
        origin = (key[0].start, key[1].start) if name == "output" else (key[-2].start, key[-1].start)
        try:
            data = read_checked(array, name, key, origin=origin, job=job)
        except DamagedData as exc:
            damaged.append(f"{_block(name, tuple(k.start // c for k, c in zip(key, array.chunks)))}"
                           f"{'' if array.shards is None else ' (its shard)'} fails its checksum or cannot be "
                           f"decoded ({str(exc).split('(', 2)[-1].rsplit(';', 1)[0]}")
            continue
        if data.dtype.kind != "f" or not checked:
            continue
        for local in np.ndindex(*(-(-d // c) for d, c in zip(data.shape, array.chunks))):
            coords = tuple(k.start // c + i for k, c, i in zip(key, array.chunks, local))
            part = data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(local, array.chunks))]
            if coords not in absent and np.isnan(part).any():
                damaged.append(f"{_block(name, coords)} holds NaN")
    if required:
        damaged += [f"{_block(name, coords)} is missing" for coords in sorted(absent)]
    if damaged:
        more = f" and {len(damaged) - SHOWN} more" if len(damaged) > SHOWN else ""
        report.problems.append("; ".join(damaged[:SHOWN]) + more)
    if not checked:
        report.notes.append(f"{name}: written before checksums existed (an earlier streamsr): read, but its "
                            "integrity and completeness cannot be proved")


def verify_job(where: JobDir | str | os.PathLike) -> VerifyReport:
    """Check a job dir (x4, or both stages of a x16 chain); never changes it."""
    job_dir = JobDir.of(where)
    if job_dir.is_chain():
        report = VerifyReport(str(job_dir.root))
        for number in (1, 2):
            stage = job_dir.stage(number)
            if not stage.is_job():
                report.notes.append(f"stage {number} has not started")
                continue
            sub = verify_job(stage)
            report.problems += [f"stage {number}: {p}" for p in sub.problems]
            report.notes += [f"stage {number}: {n}" for n in sub.notes]
        return report
    store = JobStore.open(job_dir)  # the manifest is validated on load (JobError otherwise)
    report = VerifyReport(str(job_dir.root))
    required = required_arrays(store)
    with python_pipeline():  # checksums checked on every decode
        group = zarr.open_group(job_dir.store, mode="r")
        names = sorted(group.array_keys())
        for name in names:
            _verify_array(store, name, group[name], name in required, report)
    for name in sorted(required - set(names)):
        if name in ("lr", "output") or (name == "vector" and store.manifest.model.config.vector_dim) \
                or (name == "alpha" and "A" in store.manifest.input.mode):
            report.problems.append(f"array {name} is missing from {job_dir.store}")
    m = store.manifest
    report.notes.append(f"status {m.status}, task {m.cursor}/{m.total_tasks}; "
                        f"{m.geometry.grid.rows * m.geometry.grid.cols} blocks per array")
    return report
