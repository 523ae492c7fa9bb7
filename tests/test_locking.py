"""Race-free job locking (issue 14): the lock is taken before anything in a job dir is created or deleted,
a second process is refused in one line whatever the timing, and manifest temp files never collide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import tiny_model_and_image

from streamsr.cli import main
from streamsr.jobs.store import JobDir, job_lock, write_json_atomic

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tiny_model_and_image(tmp_path_factory.mktemp("locking"), height=12, width=17, seed=3)


def creating(job: Path) -> Path:
    """A job dir as another process leaves it while it creates the job: a store, no manifest yet."""
    marker = job / "state.zarr" / "lr" / "being-written"
    marker.parent.mkdir(parents=True)
    marker.write_text("x")
    return marker


def test_second_upscale_during_creation_deletes_nothing(work, tmp_path, capsys):
    job = tmp_path / "job"
    job.mkdir()
    with job_lock(job):  # the first process, still creating the job
        marker = creating(job)
        capsys.readouterr()
        code = main(["upscale", str(work / "in.png"), "-o", str(tmp_path / "o.png"), "--model", str(work / "model"),
                     "--job", str(job), "--steps", "1", "-q"])
        assert code == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "being run by pid" in err[0], err
        assert marker.is_file()  # the first process's store is untouched


def test_second_process_during_creation_deletes_nothing(work, tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    with job_lock(job):
        marker = creating(job)
        res = subprocess.run([sys.executable, "-m", "streamsr", "upscale", str(work / "in.png"), "-o",
                              str(tmp_path / "o.png"), "--model", str(work / "model"), "--job", str(job), "-q"],
                             capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)))
        assert res.returncode == 2 and marker.is_file()
        assert len(res.stderr.strip().splitlines()) == 1 and "being run by pid" in res.stderr


def test_an_interrupted_creation_is_redone_under_the_lock(work, tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    marker = creating(job)  # nobody holds the lock: a creation that was killed
    assert main(["upscale", str(work / "in.png"), "-o", str(tmp_path / "o.png"), "--model", str(work / "model"),
                 "--job", str(job), "--steps", "1", "-q"]) == 0
    assert not marker.exists() and (tmp_path / "o.png").is_file()
    assert JobDir(job).lock.is_file() and not JobDir(job).partials()  # the lock file stays


def test_manifest_temp_names_are_unique_per_writer(tmp_path):
    path = tmp_path / "job.json"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(40):
                write_json_atomic(path, {"writer": n, "i": i, "pad": "x" * 2000})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert json.loads(path.read_text())["i"] == 39
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.json"]


def test_store_imports_without_fcntl():
    """Windows has no fcntl: the job store must not need it."""
    code = "import sys; sys.modules['fcntl'] = None; import streamsr.jobs.store, streamsr.jobs.run; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.stdout.strip() == "ok", res.stderr[-2000:]
