"""Verified job data (issue 14): a missing or corrupt chunk in any array is a one-line error naming the
array and block (exit 2) and leaves the job as it was; `streamsr verify` finds it; old job dirs still run."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import finished_job, tiny_model_and_image

from streamsr.cli import main
from streamsr.jobs.integrity import has_checksums
from streamsr.jobs.manifest import JobStatus
from streamsr.jobs.store import JobStore, read_manifest, write_json_atomic
from streamsr.jobs.verify import verify_job
from streamsr.stream.planner import TaskKind

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished job (tiny model, 2 steps) and its output."""
    root = tiny_model_and_image(tmp_path_factory.mktemp("verify"), height=20, width=27, seed=1)
    return finished_job(root)


def copy_job(done: Path, tmp_path: Path) -> Path:
    job = tmp_path / "job"
    shutil.copytree(done / "job", job)
    return job


def shard_files(job: Path, name: str) -> list[Path]:
    return sorted(p for p in (job / "state.zarr" / name / "c").rglob("*") if p.is_file())


def flip_byte(path: Path, at: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def rewind_to(job: Path, kind: TaskKind) -> int:
    """Set the job's cursor back to its first task of `kind` (status interrupted); returns the cursor."""
    m = read_manifest(job)
    tasks = m.tasks()
    cursor = next(i for i in range(len(tasks)) if tasks[i].kind is kind)
    write_json_atomic(job / "job.json", replace(m, cursor=cursor, status=JobStatus.INTERRUPTED).to_json())
    return cursor


def test_new_jobs_have_checksums_and_nan_fill(done):
    store = JobStore.open(done / "job")
    for name in ("lr", "state0", "state1", "output"):
        assert has_checksums(store.array(name)), name
    assert np.isnan(store.array("state0").metadata.fill_value)
    report = verify_job(done / "job")
    assert report.ok, report.lines()
    assert main(["verify", str(done / "job")]) == 0


def test_missing_output_shard_refuses_export(done, tmp_path, capsys):
    job = copy_job(done, tmp_path)
    shard_files(job, "output")[0].unlink()
    capsys.readouterr()
    assert main(["export", str(job), "-o", str(tmp_path / "o.png")]) == 2
    line = one_error_line(capsys)
    assert "output block (row 0, col 0) is missing" in line
    assert not (tmp_path / "o.png").exists()
    assert main(["verify", str(job)]) == 2
    assert "output block (row 0, col 0) is missing" in capsys.readouterr().out


def test_corrupt_output_chunk_refuses_export(done, tmp_path, capsys):
    job = copy_job(done, tmp_path)
    flip_byte(shard_files(job, "output")[0])
    capsys.readouterr()
    assert main(["export", str(job), "-o", str(tmp_path / "o.png")]) == 2
    assert "output block" in one_error_line(capsys)
    assert not verify_job(job).ok


@pytest.mark.parametrize("damage", ["delete", "flip"])
def test_damaged_lr_stops_resume_and_keeps_cursor(done, tmp_path, capsys, damage):
    job = copy_job(done, tmp_path)
    cursor = rewind_to(job, TaskKind.STATS)  # stats reads the LR (up) again
    shard = shard_files(job, "lr")[0]
    shard.unlink() if damage == "delete" else flip_byte(shard)
    report = verify_job(job)
    assert not report.ok and "lr block (row 0, col 0)" in report.problems[0]
    capsys.readouterr()
    assert main(["resume", str(job), "-q"]) == 2
    line = one_error_line(capsys)
    assert "lr block (row 0, col 0)" in line and "streamsr verify" in line
    assert read_manifest(job).cursor == cursor


def test_missing_state_stops_resume(done, tmp_path, capsys):
    job = copy_job(done, tmp_path)
    cursor = rewind_to(job, TaskKind.STATS)  # stats reads the sampler's result
    for name in ("state0", "state1"):
        shutil.rmtree(job / "state.zarr" / name / "c", ignore_errors=True)
    capsys.readouterr()
    assert main(["resume", str(job), "-q"]) == 2
    line = one_error_line(capsys)
    assert "block (row 0, col 0) is missing" in line and "state" in line
    assert read_manifest(job).cursor == cursor
    assert read_manifest(job).status is JobStatus.INTERRUPTED  # the run stopped: not left "running"
    assert not verify_job(job).ok


def test_old_job_dirs_resume_and_say_unverified(tmp_path):
    job = tmp_path / "jobdir-v1"
    shutil.copytree(GOLDEN / "jobdir-v1", job)
    data = json.loads((job / "job.json").read_text())
    data["output"]["path"] = str(tmp_path / "v1.png")
    (job / "job.json").write_text(json.dumps(data))
    report = verify_job(job)
    assert report.ok, report.lines()
    assert any("before checksums existed" in note for note in report.notes)
    assert main(["resume", str(job), "--model", str(GOLDEN / "model"), "-q"]) == 0
    assert (tmp_path / "v1.png").is_file()


def test_corrupt_lr_stops_the_sampler_at_its_first_read(done, tmp_path, capsys):
    job = copy_job(done, tmp_path)
    m = read_manifest(job)
    write_json_atomic(job / "job.json", replace(m, cursor=0, status=JobStatus.INTERRUPTED).to_json())
    flip_byte(shard_files(job, "lr")[0], at=200)
    capsys.readouterr()
    assert main(["resume", str(job), "-q"]) == 2
    line = one_error_line(capsys)
    assert "lr block (row 0, col 0)" in line and "corrupt" in line
    assert read_manifest(job).cursor == 0
