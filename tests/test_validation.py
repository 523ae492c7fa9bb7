"""Validated settings and manifests (issue 14): bad sigmas, seeds and steps, and an edited or inconsistent
job.json, are refused with one line (exit 2) before anything is written; never a wrong image with exit 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import finished_job, tiny_model_and_image

from streamsr.cli import main
from streamsr.config import ConfigError, JobConfig
from streamsr.jobs.jsonsum import CHECKSUM, json_checksum
from streamsr.jobs.store import read_manifest


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tiny_model_and_image(tmp_path_factory.mktemp("validation"), height=12, width=17, seed=2)
    return finished_job(root)


def one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("flags, words", [
    (["--sigma-max", "inf"], "sigma_max"), (["--sigma-max", "1e30"], "sigma_max"),
    (["--sigma-min", "1e-320"], "sigma_min"), (["--sigma-max", "nan"], "sigma_max"),
    (["--seed", str(2 ** 70)], "seed"), (["--seed", "-1"], "seed"), (["--steps", "0"], "steps"),
    (["--steps", "100000"], "steps"),
])
def test_bad_settings_are_one_line_and_write_nothing(done, tmp_path, capsys, flags, words):
    job = tmp_path / "job"
    capsys.readouterr()
    code = main(["upscale", str(done / "in.png"), "-o", str(tmp_path / "o.png"), "--model", str(done / "model"),
                 "--job", str(job), "-q", *flags])
    assert code == 2
    assert words in one_line(capsys)
    assert not (tmp_path / "o.png").exists() and not (job / "job.json").exists()


def test_job_config_ranges():
    assert JobConfig(seed=2 ** 63 - 1).seed == 2 ** 63 - 1
    for bad in (dict(seed=2 ** 63), dict(seed=True), dict(steps=True), dict(sigma_max=float("inf")),
                dict(sigma_min=0.0), dict(rho=float("nan")), dict(sigma_max="40")):
        with pytest.raises(ConfigError):
            JobConfig(**bad)


def edit_manifest(done: Path, tmp_path: Path, change, *, keep_checksum: bool = False) -> Path:
    """A copy of the finished job with job.json edited by `change`. Without its checksum (as a manifest of
    an earlier version has none), so that the content checks below are what refuses it."""
    job = tmp_path / "job"
    shutil.copytree(done / "job", job)
    data = json.loads((job / "job.json").read_text())
    change(data)
    if not keep_checksum:
        data.pop(CHECKSUM)
    (job / "job.json").write_text(json.dumps(data))
    return job


def total(data: dict) -> int:
    return data["total_tasks"]


EDITS = {
    "done with an early cursor": lambda d: d.update(cursor=1),
    "cursor past the end": lambda d: d.update(cursor=total(d) + 5),
    "negative cursor": lambda d: d.update(cursor=-1),
    "string cursor": lambda d: d.update(cursor="3"),
    "float cursor": lambda d: d.update(cursor=1.5),
    "missing status": lambda d: d.pop("status"),
    "missing geometry": lambda d: d.pop("geometry"),
    "edited block size": lambda d: d["geometry"].update(block_size=0),
    "edited width": lambda d: d["geometry"].update(lr_width=5),
    "created with a cursor": lambda d: d.update(status="created"),
}


@pytest.mark.parametrize("name", sorted(EDITS))
@pytest.mark.parametrize("command", ["resume", "export", "status"])
def test_edited_manifest_is_refused_in_one_line(done, tmp_path, capsys, name, command):
    job = edit_manifest(done, tmp_path, EDITS[name])
    before = (job / "job.json").read_bytes()
    args = {"resume": ["resume", str(job), "-q"], "export": ["export", str(job), "-o", str(tmp_path / "e.png")],
            "status": ["status", str(job)]}[command]
    capsys.readouterr()
    assert main(args) == 2
    assert "job.json" in one_line(capsys)
    assert (job / "job.json").read_bytes() == before and not (tmp_path / "e.png").exists()


RUN_EDITS = {
    "shortened sigma list": lambda d: d.update(sigmas=d["sigmas"][:-1]),
    "sigmas not ending at 0": lambda d: d.update(sigmas=[*d["sigmas"][:-1], 0.001]),
    "sigma of another schedule": lambda d: d.update(sigmas=[1e30, *d["sigmas"][1:]]),
    "total_tasks edited": lambda d: d.update(total_tasks=total(d) + 3, cursor=total(d) + 3),
}


@pytest.mark.parametrize("name", sorted(RUN_EDITS))
def test_manifest_that_cannot_run_is_refused_on_resume(done, tmp_path, capsys, name):
    job = edit_manifest(done, tmp_path, lambda d: (RUN_EDITS[name](d), d.update(status="interrupted")))
    before = (job / "job.json").read_bytes()
    capsys.readouterr()
    assert main(["resume", str(job), "-q"]) == 2
    line = one_line(capsys)
    assert "job.json" in line and "edited or damaged" in line
    assert (job / "job.json").read_bytes() == before
    assert main(["verify", str(job)]) == 2


def test_intact_manifest_still_loads(done):
    m = read_manifest(done / "job")
    assert m.cursor == m.total_tasks


@pytest.mark.parametrize("change", [lambda d: d.update(cursor=1), lambda d: d["job"].update(seed=7),
                                    lambda d: d.update(checksum="sha256:" + "0" * 64)])
@pytest.mark.parametrize("command", ["resume", "export", "status", "verify"])
def test_manifest_that_fails_its_checksum_is_refused(done, tmp_path, capsys, change, command):
    """An edit that the content checks cannot see (a seed, an earlier cursor of a running job) is still
    refused: job.json carries a checksum of its own content."""
    job = edit_manifest(done, tmp_path, lambda d: (d.update(status="interrupted", cursor=2), change(d)),
                        keep_checksum=True)
    args = {"resume": ["resume", str(job), "-q"], "export": ["export", str(job), "-o", str(tmp_path / "e.png")],
            "status": ["status", str(job)], "verify": ["verify", str(job)]}[command]
    capsys.readouterr()
    assert main(args) == 2
    line = one_line(capsys)
    assert str(job / "job.json") in line and "does not match its checksum" in line
    assert not (tmp_path / "e.png").exists()


def test_manifest_carries_its_checksum_and_one_without_still_loads(done, tmp_path):
    data = json.loads((done / "job" / "job.json").read_text())
    assert data[CHECKSUM] == json_checksum(data) and data[CHECKSUM].startswith("sha256:")
    job = edit_manifest(done, tmp_path, lambda d: None)  # as written before checksums existed
    assert read_manifest(job) == read_manifest(done / "job")
