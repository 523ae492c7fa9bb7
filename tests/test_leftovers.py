"""No leftovers without a way out (issue 14 item 5): what a killed or failed run leaves is either removed by
the next run or kept with the command that finishes it.

- a killed TIFF export's sub-level folder (.<stem>.levels-<pid>-*) is removed by the next export;
- a temporary job dir whose creation was killed (store, no job.json) is removed by the next upscale of the
  same output, an interrupted one is named with its resume command, and `resume` of a stopped creation says
  what it is;
- a full disk while writing the output keeps the job and prints its resume command.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import tiny_model_and_image

from streamsr.cli import main
from streamsr.io import atomic
from streamsr.io.export import export_array
from streamsr.jobs.leftovers import sweep_temp_jobs
from streamsr.jobs.store import read_manifest

REPO = Path(__file__).resolve().parents[1]
ARGS = ("--steps", "1", "--sampler", "euler", "--anchor", "none", "-q")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tiny_model_and_image(tmp_path_factory.mktemp("leftovers"), height=12, width=17, seed=5)


def one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


KILL_MID_TIFF = """
import os, signal, sys, zarr
from streamsr.io.export import export_array, tiff
tiff.report = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # after the first band of level 0
export_array(zarr.open_array(sys.argv[1], mode="r"), (600, 700), sys.argv[2], band_rows=512)
"""


def test_killed_tiff_export_leaves_levels_that_the_next_export_removes(tmp_path):
    arr = zarr.create_array(store=os.fspath(tmp_path / "src.zarr"), shape=(600, 700, 3), chunks=(128, 128, 3),
                            dtype="uint8", fill_value=0)
    arr[...] = np.random.default_rng(0).integers(0, 255, (600, 700, 3), dtype=np.uint8)
    out = tmp_path / "out" / "big.tif"
    out.parent.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, "-c", KILL_MID_TIFF, str(tmp_path / "src.zarr"), str(out)], env=env,
                            timeout=300)
    assert killed.returncode == -9
    assert [name for name in hidden(out.parent) if name.startswith(".big.levels-")], hidden(out.parent)
    running = out.parent / f".big.levels-{os.getpid()}-running"  # an export that still runs keeps its own
    running.mkdir()
    export_array(arr, (600, 700), out)
    assert hidden(out.parent) == [running.name]
    assert out.is_file()


def make_stopped_creation(root: Path, *, age: float) -> None:
    (root / "state.zarr" / "lr").mkdir(parents=True)
    past = time.time() - age
    os.utime(root, (past, past))


def test_next_upscale_removes_a_killed_creation_and_names_a_kept_job(work, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    make_stopped_creation(out / ".streamsr-job-killed", age=3600)
    make_stopped_creation(out / ".streamsr-job-fresh", age=0)  # may be an upscale between mkdtemp and its lock
    (out / ".streamsr-job-other").mkdir()  # not a job's: left alone
    assert main(["upscale", str(work / "in.png"), "-o", str(out / "o.png"), "--model", str(work / "model"), *ARGS,
                 "--job", str(out / ".streamsr-job-kept")]) == 0  # a finished job of this output, kept
    kept = out / ".streamsr-job-kept"
    assert read_manifest(kept).status == "done"
    assert hidden(out) == [".streamsr-job-fresh", ".streamsr-job-kept", ".streamsr-job-other"]
    messages = []
    assert sweep_temp_jobs(out / "o.png", log=messages.append, min_age=0) == [out / ".streamsr-job-fresh"]
    assert messages == []  # done: nothing to resume
    capsys.readouterr()
    assert main(["resume", str(out / ".streamsr-job-other"), "-q"]) == 2
    assert "not a streamsr job dir" in one_line(capsys)


def test_an_interrupted_temporary_job_of_the_same_output_is_named(work, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", STREAMSR_TEST_KILL="1:before-commit")
    killed = subprocess.run([sys.executable, "-m", "streamsr", "upscale", str(work / "in.png"), "-o",
                             str(out / "o.png"), "--model", str(work / "model"), *ARGS], env=env, timeout=300)
    assert killed.returncode == -9
    (job,) = out.glob(".streamsr-job-*")
    messages = []
    assert sweep_temp_jobs(out / "o.png", log=messages.append) == []
    assert len(messages) == 1 and f"streamsr resume {job}" in messages[0]
    assert sweep_temp_jobs(out / "other.png", log=messages.append) == [] and len(messages) == 1


def test_resume_of_a_stopped_creation_says_so(tmp_path, capsys):
    make_stopped_creation(tmp_path / "job", age=0)
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "job"), "-q"]) == 2
    line = one_line(capsys)
    assert "creation was stopped" in line and "--job" in line


def test_full_disk_while_writing_the_output_keeps_the_job_with_its_resume_command(work, tmp_path, capsys,
                                                                                   monkeypatch):
    out = tmp_path / "out"
    out.mkdir()

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "open_temp", full)
    capsys.readouterr()
    assert main(["upscale", str(work / "in.png"), "-o", str(out / "o.png"), "--model", str(work / "model"),
                 *ARGS]) == 1
    line = one_line(capsys)
    (job,) = out.glob(".streamsr-job-*")
    assert "No space left on device" in line and line.endswith(f"finish it with: streamsr resume {job}")
    monkeypatch.undo()
    assert main(["resume", str(job), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["o.png"]
