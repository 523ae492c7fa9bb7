"""Everyday CLI behaviour: output == input refused, no hidden leftovers, temporary jobs removed by resume,
no "resume it" for a job another process runs, ETA while finishing, the store's disk size, -q, --version,
status --json, help texts, --device auto."""

from __future__ import annotations

import io
import json

import pytest
import torch
from test_job import run_cli, run_sub, work  # noqa: F401  (the tiny model and input fixture)

from streamsr.cli import build_parser, resolve_device
from streamsr.jobs.flows import eta_text, status_lines
from streamsr.jobs.progress import ProgressBar
from streamsr.jobs.store import job_lock

ARGS = ("--steps", 1, "--anchor", "none", "--batch", "1x1")


def hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_output_equal_to_the_input_is_refused(work, tmp_path, capsys):  # noqa: F811
    src = tmp_path / "in.png"
    src.write_bytes((work / "in.png").read_bytes())
    assert run_cli("upscale", src, "-o", src, "--model", work / "model", *ARGS, "-q") == 2
    assert "is the input" in capsys.readouterr().err
    assert src.read_bytes() == (work / "in.png").read_bytes()
    assert hidden(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line_and_leaves_nothing(work, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli("upscale", work / "in.png", "-o", out / "o.png", "--model", work / "model", *ARGS,
                   "--device", "cuda", "-q") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]
    assert list(out.iterdir()) == []


def test_resume_removes_the_temporary_job_dir(work, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    killed = run_sub("upscale", work / "in.png", "-o", out / "o.png", "--model", work / "model", *ARGS, "-q",
                     STREAMSR_TEST_KILL="1:before-commit")
    assert killed.returncode != 0
    (job,) = [p for p in out.iterdir() if p.name.startswith(".streamsr-job-")]
    assert run_cli("resume", job, "-q") == 0
    assert sorted(p.name for p in out.iterdir()) == ["o.png"]


def test_a_job_another_process_runs_is_not_offered_for_resume(work, tmp_path, capsys):  # noqa: F811
    job = tmp_path / "job"
    run_sub("upscale", work / "in.png", "-o", tmp_path / "o.png", "--model", work / "model", *ARGS, "--job", job,
            "-q", STREAMSR_TEST_KILL="1:before-commit")
    with job_lock(job):
        assert run_cli("upscale", work / "in.png", "-o", tmp_path / "o.png", "--model", work / "model", *ARGS,
                       "--job", job) != 0
    err = capsys.readouterr().err
    assert "being run by" in err and "resume it" not in err


def test_eta_while_statistics_anchoring_and_export_remain(capsys):
    assert eta_text(0.0, 3).startswith("finishing (3 task(s) left")
    assert eta_text(0.0, 0) == "0m00s" and eta_text(75.0, 9) == "1m15s" and eta_text(None, 4) == "?"

    sink = io.StringIO()
    bar = ProgressBar(10, 8, stream=sink, interval=0)
    bar.update(5, 4, label="predict", new_blocks=4, force=True)
    bar.update(8, 8, label="stats", new_blocks=4, force=True)
    last = sink.getvalue().splitlines()[-1]
    assert "ETA 0m00s" not in last and "finishing, 2 task(s) left" in last


def test_status_json_and_text_of_a_stopped_job(work, tmp_path, capsys):  # noqa: F811
    job = tmp_path / "job"
    run_sub("upscale", work / "in.png", "-o", tmp_path / "o.png", "--model", work / "model", "--steps", 2,
            "--batch", "1x1", "--job", job, "-q", STREAMSR_TEST_KILL="5:before-commit")
    assert run_cli("status", job, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_tasks"] > data["cursor"] >= 0 and data["job"]["steps"] == 2
    assert any(line.startswith("status:") for line in status_lines(job))


def test_plan_reports_the_store_on_disk(capsys):
    assert run_cli("plan", "--size", "1024x1024", "--device", "cpu") == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("store:")][0]
    assert "bytes per output pixel" in line
    per_pixel = float(line.split("(")[1].split()[0])
    assert 25 <= per_pixel <= 32  # the two float32 (1, 3, H, W) state arrays a fused job writes, and the output
    assert run_cli("plan", "--size", "1024x1024", "--device", "cpu", "--workers", "4") == 0
    out = capsys.readouterr().out.splitlines()
    stages = int([x for x in out if x.startswith("ranks:")][0].split()[1])
    line = [x for x in out if x.startswith("store:")][0]
    assert float(line.split("(")[1].split()[0]) == pytest.approx(per_pixel + 12 * (stages - 1), abs=0.6)  # the ring


def test_quiet_prints_nothing(work, tmp_path, capfd):  # noqa: F811
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "o.png", "--model", work / "model", *ARGS, "-q") == 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_version_help_and_device_auto(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("streamsr 0.")
    up = build_parser()._subparsers._group_actions[0].choices["upscale"].format_help()  # noqa: SLF001
    for suffix in (".png", ".tif", ".zarr", ".dzi"):
        assert suffix in up
    args = build_parser().parse_args(["upscale", "x.png", "-o", "y.png"])
    assert args.device == "auto"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
