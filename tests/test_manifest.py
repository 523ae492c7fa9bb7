"""The typed job manifest: JSON round trip, manifests of earlier versions, commits, and the task list."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from streamsr.config import JobConfig, ModelConfig
from streamsr.core.anchoring import Moments
from streamsr.jobs.manifest import (
    AnchorMoments,
    Geometry,
    InputInfo,
    JobStatus,
    Manifest,
    MemoryPlan,
    ModelRef,
    OutputRef,
)
from streamsr.jobs.store import JobDir, JobError, JobStore, read_manifest
from streamsr.stream.planner import BatchShape, Grid, Sweep, TaskKind, job_tasks

V1 = Path(__file__).resolve().parent / "fixtures" / "golden" / "jobdir-v1"


def a_manifest(**changes) -> Manifest:
    geo = Geometry(lr_height=20, lr_width=27, block_size=32)
    job = JobConfig(steps=3, batch_rows=2, batch_cols=1, seed=7, noise_init=False, placement="disk")
    m = Manifest(stage="x16 stage 2/2", status=JobStatus.RUNNING, created="2026-01-01T00:00:00+00:00",
                 model=ModelRef("/models/tiny", "ab" * 32, ModelConfig.tiny(vector_dim=0)),
                 input=InputInfo("/data/in.png", "cd" * 32, 27, 20, "RGBA", 16), output=OutputRef(None), job=job,
                 plan=MemoryPlan((2, 1), "disk", 1 << 20, 1 << 30, 12345, {"weights": 99, "frontier": 0}),
                 geometry=geo, sigmas=(40.0, 0.123456789, 0.002, 0.0), total_tasks=0, cursor=0,
                 moments=AnchorMoments(Moments(5, (0.1, -0.2, 1 / 3), (1.0, 2.0, 3.0)), Moments.empty(3)),
                 seconds={"model": 1.5, "total": 2.25}, model_blocks_done=4, updated="2026-01-01T00:01:00+00:00")
    m = replace(m, total_tasks=len(m.tasks()))
    return replace(m, **changes)


def test_manifest_round_trips_through_json():
    m = a_manifest(cursor=9)
    assert Manifest.from_json(m.to_json()) == m
    assert Manifest.from_json(json.loads(json.dumps(m.to_json(), sort_keys=True))) == m  # as job.json holds it
    bare = a_manifest(plan=None, updated=None, output=OutputRef("/out.tif"), moments=AnchorMoments.empty())
    assert Manifest.from_json(bare.to_json()) == bare
    assert "plan" not in bare.to_json() and "updated" not in bare.to_json()


def test_manifest_of_version_0_1_loads_with_defaults():
    raw = json.loads((V1 / "job.json").read_text())
    assert "noise_init" not in raw["job"]  # written before the field existed
    m = read_manifest(V1)
    assert m.job.noise_init is True and m.job == JobConfig.from_dict(raw["job"])
    assert m.status is JobStatus.RUNNING and m.cursor == 14 and m.total_tasks == len(m.tasks()) == 25
    assert m.geometry.grid == Grid(3, 4) and m.batch_shape == BatchShape(2, 2)
    task = m.tasks()[m.cursor]
    assert (task.kind, task.step, task.batch.index) == (TaskKind.PREDICT, 1, 2)
    assert m.moments == AnchorMoments.empty() and m.plan.batch == (2, 2)
    # the same keys as the version that wrote it (plus the fields added since)
    assert m.init_sweep is True  # its task list keeps the init sweep it was made with
    assert m.fuse_steps == 0  # nor fused steps
    assert set(m.to_json()) == set(raw) | {"init_sweep", "fuse_steps"}
    assert set(m.to_json()["job"]) == set(raw["job"]) | {"noise_init", "quality"}
    assert m.job.quality == 90  # JPEG/WebP quality (upscale --quality) defaults for jobs made before it
    assert ({k: v for k, v in m.to_json().items() if k not in ("job", "init_sweep", "fuse_steps")}
            == {k: v for k, v in raw.items() if k != "job"})


def test_commit_returns_the_new_manifest_and_leaves_the_old_one_alone(tmp_path):
    m = a_manifest(output=OutputRef(str(tmp_path / "out.png")))
    store = JobStore.create(JobDir(tmp_path / "job"), m)
    assert store.dir.store.is_dir() and not store.dir.is_job()  # the manifest comes last
    assert store.array("output").shape == (96, 128, 4) and str(store.array("output").dtype) == "uint16"
    first = store.commit()
    assert first == m and read_manifest(tmp_path / "job") == m
    second = store.commit(cursor=3, model_blocks_done=first.model_blocks_done + 2)
    assert (first.cursor, first.model_blocks_done) == (0, 4)  # not mutated
    assert (second.cursor, second.model_blocks_done) == (3, 6) and store.manifest is second
    assert read_manifest(JobDir(tmp_path / "job")) == second
    with pytest.raises(TypeError):
        store.commit(no_such_field=1)


@pytest.mark.parametrize("text", ["{", "[]", '{"format": "streamsr-job/1"}', '{"format": "other"}'])
def test_a_damaged_manifest_is_a_job_error(tmp_path, text):
    (tmp_path / "job.json").write_text(text)
    with pytest.raises(JobError, match="job.json"):
        read_manifest(tmp_path)


def test_task_list_kinds_steps_and_counts():
    tasks = job_tasks(Grid(2, 3), BatchShape(1, 2), steps=3, sampler="heun", anchor="global")
    kinds = [(t.kind, t.step) for t in tasks]
    per = 4  # batches per sweep: 2 bands x 2
    assert len(tasks) == per * (1 + 5 + 2) + 1
    assert kinds[:per] == [(TaskKind.INIT, None)] * per
    assert [k for k, _ in kinds[per:-1:per]] == ["predict", "correct", "predict", "correct", "predict", "stats", "anchor"]
    assert [s for _, s in kinds[per:-1:per]] == [0, 0, 1, 1, 2, None, None]
    assert kinds[-1] == (TaskKind.EXPORT, None) and tasks[len(tasks) - 1].batch is None
    assert [t.index for t in tasks] == list(range(len(tasks)))
    assert tasks.model_blocks() == 5 * 6
    assert tasks.first(TaskKind.ANCHOR) == per * 7 and tasks.first(TaskKind.EXPORT) == len(tasks) - 1
    assert [t.is_model for t in tasks][per - 1:per + 1] == [False, True]
    euler = job_tasks(Grid(2, 3), BatchShape(1, 2), steps=3, sampler="euler", anchor="none")
    assert len(euler) == per * (1 + 3 + 1) + 1
    with pytest.raises(ValueError, match="no stats"):
        euler.first(TaskKind.STATS)
    with pytest.raises(ValueError):
        Sweep(TaskKind.PREDICT)  # a denoiser sweep has a sampler step, the others none
    with pytest.raises(ValueError):
        Sweep(TaskKind.ANCHOR, 0)


def test_only_denoiser_tasks_are_replayed(tmp_path):
    import torch
    from conftest import random_model

    from streamsr.jobs.executor import SweepExecutor
    from streamsr.jobs.progress import Timers

    m = a_manifest(output=OutputRef(str(tmp_path / "out.png")))
    store = JobStore.create(tmp_path / "job", m)
    for name in ("lr", "state0"):  # the LR ingested, x_T written (a missing chunk reads as NaN and is refused)
        store.array(name)[...] = 0
    model = random_model(m.model.config)
    sweeps = SweepExecutor(store, model, vector=None, device=torch.device("cpu"), timers=Timers())
    tasks = m.tasks()
    for kind in (TaskKind.INIT, TaskKind.ANCHOR, TaskKind.EXPORT):
        with pytest.raises(ValueError, match="replayed"):
            sweeps.replay(tasks[tasks.first(kind)], None)
    with pytest.raises(ValueError, match="not a model task"):
        sweeps.compute(tasks[tasks.first(TaskKind.ANCHOR)], None)
    from streamsr.jobs.shards import ShardReader

    first = tasks[tasks.first(TaskKind.PREDICT)]
    sweeps.replay(first, sweeps.inputs(first, ShardReader(store), Timers()))  # recomputes, writes nothing
    assert np.isnan(store.array("state1")[...]).all() and np.isnan(store.array("pred")[...]).all()  # the fill
