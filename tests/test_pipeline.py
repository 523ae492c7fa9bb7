"""The overlapped task loop (jobs/pipeline.py) and the shard writer and reader (jobs/shards.py), against the
readable paths: whole-array zarr reads and writes, a job with the init sweep of earlier versions, and an
uninterrupted run.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import random_model
from PIL import Image
from test_job import final_state, read_manifest, run_cli, run_sub

from streamsr.config import ModelConfig
from streamsr.jobs import pipeline
from streamsr.jobs.blockio import BlockWrite
from streamsr.jobs.pipeline import CommitPolicy
from streamsr.jobs.progress import Timers
from streamsr.jobs.shards import CachedArray, ShardReader, ShardWriter
from streamsr.jobs.store import JobDir, JobStore


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny model (32 px blocks) and a 60x80 LR input: 8x10 blocks, 80 tasks a sweep at --batch 1x1."""
    root = tmp_path_factory.mktemp("pipeline")
    random_model(ModelConfig.tiny(vector_dim=0), std=0.1).save_pretrained(root / "model")
    rng = np.random.default_rng(3)
    Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(root / "in.png")
    return root


def args(work: Path, *extra) -> tuple:
    return ("--model", work / "model", "--steps", 2, "--batch", "1x1", "-q", *extra)


@pytest.fixture(scope="module")
def reference(work, tmp_path_factory):
    """An uninterrupted job: its job dir and output file."""
    out = tmp_path_factory.mktemp("ref")
    assert run_cli("upscale", work / "in.png", "-o", out / "ref.png", "--job", out / "job", *args(work)) == 0
    return out / "job", out / "ref.png"


# ---- the shard writer and reader, against plain zarr ------------------------------------------------
def a_store(tmp_path: Path) -> JobStore:
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    group.create_array("state0", shape=(1, 3, 40, 56), chunks=(1, 3, 8, 8), shards=(1, 3, 16, 24), dtype="float32",
                       compressors=None)
    group.create_array("plain", shape=(1, 3, 40, 56), chunks=(1, 3, 8, 8), dtype="float32", compressors=None)
    group.create_array("output", shape=(40, 56, 4), chunks=(8, 8, 4), shards=(16, 24, 4), dtype="uint8")
    return JobStore(JobDir(tmp_path), group, manifest=None)


def test_shard_writer_writes_whole_shards_and_reports_what_is_durable(tmp_path):
    store = a_store(tmp_path)
    writer = ShardWriter(store, timers=Timers())
    value = torch.randn(1, 3, 40, 56)  # (1, 3, 40, 56)
    pixels = np.random.default_rng(0).integers(0, 255, (40, 56, 4), dtype=np.uint8)
    boxes = [(y, y + 8, x, x + 8) for y in range(0, 40, 8) for x in range(0, 56, 8)]  # raster order
    for task, (y0, y1, x0, x1) in enumerate(boxes):
        writer.write(task, [BlockWrite("state0", (y0, y1, x0, x1), value[..., y0:y1, x0:x1]),
                            BlockWrite("plain", (y0, y1, x0, x1), value[..., y0:y1, x0:x1]),
                            BlockWrite("output", (y0, y1, x0, x1), pixels[y0:y1, x0:x1])])
        durable = writer.durable(task + 1)
        assert durable <= task + 1
        if task < 9:  # the first shard (blocks 0-2 of rows 0-1) is complete at task 9 (row 1, col 2)
            assert durable == 0
        elif task < 11:
            assert durable == 3  # then the second shard's first task is the oldest buffered one
        # a shard is 2 block rows x 3 block cols: nothing before its first task is still buffered
        assert np.array_equal(store.array("plain")[:, :, y0:y1, x0:x1], value[..., y0:y1, x0:x1].numpy())
        on_disk = store.array("state0")[...]
        done = boxes[:durable]
        assert all(np.array_equal(on_disk[:, :, a:b, c:d], value[..., a:b, c:d].numpy()) for a, b, c, d in done)
        if (y1 % 16 == 0 or y1 == 40) and x1 % 24 == 0:  # the task that completes a shard
            assert (on_disk[:, :, y1 - 8:y1, x1 - 8:x1] == value[..., y1 - 8:y1, x1 - 8:x1].numpy()).all()
    assert writer.durable(len(boxes)) == len(boxes)  # edge shards are complete when their part is
    writer.flush()
    assert writer.durable(len(boxes)) == len(boxes) and writer.buffered_bytes() == 0
    assert np.array_equal(store.array("state0")[...], value.numpy())
    assert np.array_equal(store.array("output")[...], pixels)


def test_shard_writer_writes_a_whole_shard_at_once_without_a_buffer(tmp_path):
    """Batches aligned with shards (the usual case) write each shard straight from the task's tensor."""
    store = a_store(tmp_path)
    writer = ShardWriter(store, timers=Timers())
    value = torch.randn(1, 3, 40, 56)  # (1, 3, 40, 56)
    for task, (y0, y1, x0, x1) in enumerate([(0, 16, 0, 24), (32, 40, 48, 56), (16, 32, 24, 48)]):  # shards
        writer.write(task, [BlockWrite("state0", (y0, y1, x0, x1), value[..., y0:y1, x0:x1])])
        assert writer.durable(task + 1) == task + 1 and writer.buffered_bytes() == 0
        assert np.array_equal(store.array("state0")[:, :, y0:y1, x0:x1], value[..., y0:y1, x0:x1].numpy())
    writer.write(3, [BlockWrite("state0", (0, 8, 24, 32), value[..., 0:8, 24:32])])  # part of a shard: buffered
    assert writer.durable(4) == 3 and writer.buffered_bytes() > 0


def test_releasing_freed_memory_is_never_an_error():
    pipeline.keep_freed_memory(0)  # keep 0: glibc as it is
    pipeline.release_free_memory(keep=64 << 20)  # a no-op or a trim
    pipeline.release_free_memory()


def test_shard_writer_flush_of_a_partial_shard_keeps_the_rest(tmp_path):
    store = a_store(tmp_path)
    old = np.full((1, 3, 40, 56), 7.0, dtype=np.float32)
    store.array("state0")[...] = old
    writer = ShardWriter(store, timers=Timers())
    new = torch.zeros(1, 3, 8, 8)
    writer.write(0, [BlockWrite("state0", (0, 8, 8, 16), new)])
    assert writer.durable(1) == 0
    writer.flush()
    want = old.copy()
    want[:, :, 0:8, 8:16] = 0
    assert np.array_equal(store.array("state0")[...], want)


def test_shard_reader_equals_direct_reads(tmp_path):
    store = a_store(tmp_path)
    data = np.random.default_rng(1).standard_normal((1, 3, 40, 56)).astype(np.float32)
    store.array("state0")[...] = data
    store.array("plain")[...] = data
    reader = ShardReader(store, keep=1, keep_lr=2)
    rng = np.random.default_rng(2)
    for _ in range(50):
        y0, y1 = sorted(rng.choice(41, 2, replace=False))
        x0, x1 = sorted(rng.choice(57, 2, replace=False))
        for name in ("state0", "plain"):
            assert np.array_equal(reader.region(name, y0, y1, x0, x1), data[:, :, y0:y1, x0:x1])
        assert np.array_equal(CachedArray(reader, "state0")[..., y0:y1, x0:x1], data[:, :, y0:y1, x0:x1])
    store.array("state0")[...] = 0  # a writer changed it: forget() is the runner's promise to call
    reader.forget()
    assert not reader.region("state0", 0, 40, 0, 56).any()


# ---- whole jobs -----------------------------------------------------------------------------------
def test_new_jobs_have_shards_and_no_init_sweep_and_equal_the_init_sweep_layout(work, reference, tmp_path):
    ref_job, ref_png = reference
    m = read_manifest(ref_job)
    assert m.init_sweep is False and m.tasks()[0].kind == "steps"
    group = zarr.open_group(ref_job / "state.zarr", mode="r")
    assert group["state1"].shards is not None and group["lr"].shards is not None
    assert "init" not in {task.kind for task in m.tasks()}  # x_T is computed where it is read, never written
    # the layout of earlier versions: an init sweep writes x_T, the sampler reads it back
    job = tmp_path / "job"
    killed = run_sub("upscale", work / "in.png", "-o", tmp_path / "old.png", "--job", job, *args(work),
                     STREAMSR_TEST_KILL="0:queued")
    assert killed.returncode == -signal.SIGKILL and read_manifest(job).cursor == 0
    relayout(job, fuse=0, init_sweep=True)
    assert read_manifest(job).tasks()[0].kind == "init"
    assert run_cli("resume", job, "-q") == 0
    assert (tmp_path / "old.png").read_bytes() == ref_png.read_bytes()
    assert np.array_equal(final_state(job), final_state(ref_job))


@pytest.mark.parametrize("killed_at", [21, 50, 170])
def test_resume_reruns_a_bounded_number_of_tasks(work, reference, tmp_path, killed_at):
    """Commits every 16 tasks (and at sweep ends) after the writes are on disk: a kill re-runs at most the
    tasks since the last commit, plus those of the shard being filled; then the bytes are identical."""
    ref_job, ref_png = reference
    job = tmp_path / "job"
    res = run_sub("upscale", work / "in.png", "-o", tmp_path / "o.png", "--job", job, *args(work),
                  STREAMSR_TEST_KILL=f"{killed_at}:queued")
    assert res.returncode == -signal.SIGKILL, res.stderr
    m = read_manifest(job)
    shard_tasks = zarr.open_group(job / "state.zarr", mode="r")["state1"].shards[3] // 32  # 1x1 batches
    rerun = killed_at + 1 - m.cursor
    assert 0 < rerun <= CommitPolicy().every_tasks + shard_tasks, (m.cursor, shard_tasks)
    if killed_at >= 160:  # a sweep end always commits: the anchor sweep (160-239) never re-runs stats
        assert m.cursor >= 160
    assert run_cli("resume", job, "-q") == 0
    assert (tmp_path / "o.png").read_bytes() == ref_png.read_bytes()


def test_out_of_memory_is_one_line_and_the_job_resumes(work, reference, tmp_path, capsys, monkeypatch):
    from streamsr.jobs import executor

    real = executor.SweepExecutor.compute
    calls = {"n": 0}

    def oom_on_the_30th(self, task, inputs):
        calls["n"] += 1
        if calls["n"] == 30:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, task, inputs)

    monkeypatch.setattr(executor.SweepExecutor, "compute", oom_on_the_30th)
    job = tmp_path / "job"
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "o.png", "--job", job, *args(work)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert "out of memory" in err[-1] and f"streamsr resume {job}" in err[-1]
    assert read_manifest(job).status == "interrupted" and read_manifest(job).cursor <= 29
    monkeypatch.setattr(executor.SweepExecutor, "compute", real)
    assert run_cli("resume", job, "-q") == 0
    assert (tmp_path / "o.png").read_bytes() == reference[1].read_bytes()


def relayout(job: Path, *, fuse: int, init_sweep: bool = False) -> None:
    """Rewrite a not-yet-started job's manifest to `fuse` steps per sweep (0: one sweep per predict and
    correct, the layout of earlier versions, with an init sweep if asked), as if the planner chose it."""
    from dataclasses import replace

    from streamsr.jobs.store import write_json_atomic

    m = read_manifest(job)
    assert m.cursor == 0
    m = replace(m, fuse_steps=fuse, plan=replace(m.plan, fuse=fuse), init_sweep=init_sweep)
    write_json_atomic(job / "job.json", replace(m, total_tasks=len(m.tasks())).to_json())


@pytest.mark.parametrize("fuse", [0, 1])
def test_fused_steps_equal_one_sweep_per_predict_and_correct(work, reference, tmp_path, fuse, monkeypatch):
    """The reference fuses both Heun steps (3 sweeps in flight); 1 step per sweep and the per-sweep
    layout (pred and deriv through the store) give the same bytes, and write the state 4x (fuse 0) or 2x
    (fuse 1) as much per block."""
    ref_job, ref_png = reference
    assert read_manifest(ref_job).fuse_steps == 2 and len(read_manifest(ref_job).tasks()) == 80 * 3 + 1
    job = tmp_path / "job"
    killed = run_sub("upscale", work / "in.png", "-o", tmp_path / "o.png", "--job", job, *args(work),
                     STREAMSR_TEST_KILL="0:queued")
    assert killed.returncode == -signal.SIGKILL
    relayout(job, fuse=fuse)
    written = count_state_writes(monkeypatch)
    assert run_cli("resume", job, "-q") == 0
    assert (tmp_path / "o.png").read_bytes() == ref_png.read_bytes()
    assert np.array_equal(final_state(job), final_state(ref_job))
    per_block = sum(written.values()) / (256 * 320 * 3)  # the padded state: 8x10 blocks of 32 px
    assert per_block == {0: 4, 1: 2}[fuse], written  # the reference (fuse 2): 1


def count_state_writes(monkeypatch) -> dict[str, int]:
    """Elements written per state array through JobStore.write from now on."""
    from streamsr.jobs import store as store_mod

    real, written = store_mod.JobStore.write, {}

    def counting(self, name, box, value):
        if name != "output":
            written[name] = written.get(name, 0) + int(np.prod(value.shape))
        return real(self, name, box, value)

    monkeypatch.setattr(store_mod.JobStore, "write", counting)
    return written


def test_shard_file_check_finds_a_flipped_byte_in_any_chunk_and_in_the_index(tmp_path):
    """integrity.check_shard_files (the per-run check of lr and alpha) against zarr-python's own decode."""
    from zarr.codecs import Crc32cCodec

    from streamsr.jobs.integrity import DamagedData, check_shard_files

    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    array = group.create_array("lr", shape=(1, 3, 40, 56), chunks=(1, 3, 8, 8), shards=(1, 3, 16, 48),
                               dtype="float32", compressors=[Crc32cCodec()], fill_value=float("nan"))
    array[...] = np.random.default_rng(0).random((1, 3, 40, 56), dtype=np.float32)
    root = tmp_path / "s.zarr" / "lr"
    assert check_shard_files(array, root, "lr", job="J")
    shard = root / "c" / "0" / "0" / "1" / "1"  # rows 16-31, cols 48-55 (an edge shard)
    good = shard.read_bytes()
    for at, needle in ((10, "lr block (row 2, col 6) is corrupt"), (len(good) - 9, "index fails its checksum")):
        bad = bytearray(good)
        bad[at] ^= 0x40
        shard.write_bytes(bytes(bad))
        with pytest.raises(DamagedData, match=needle.replace("(", r"\(").replace(")", r"\)")):
            check_shard_files(array, root, "lr", job="J")
    shard.write_bytes(good)
    assert check_shard_files(array, root, "lr", job="J")
