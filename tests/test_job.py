"""Upscale jobs end to end: CLI == in-memory sampler, kill/resume bit-identity, batch independence, bad input."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import random_model
from PIL import Image

from streamsr import api
from streamsr.cli import main
from streamsr.config import ModelConfig
from streamsr.core import anchoring
from streamsr.jobs.create import reflect_index
from streamsr.jobs.store import final_array, read_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny model dir (no semantic vector) and a small RGB input of an odd size."""
    root = tmp_path_factory.mktemp("job")
    model = random_model(ModelConfig.tiny(vector_dim=0), std=0.1)
    model.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    img = (rng.random((20, 27, 3)) * 255).astype(np.uint8)  # pads to 3x4 blocks of 8 LR px
    Image.fromarray(img).save(root / "in.png")
    return root


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def sub_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def run_sub(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamsr", *map(str, args)], capture_output=True, text=True,
                          env=sub_env(**env), timeout=300)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def final_state(job: Path) -> np.ndarray:
    return zarr.open_group(job / "state.zarr", mode="r")[final_array(read_manifest(job))][...]


def padded_lr(path: Path, block: int) -> torch.Tensor:
    """The LR as the job stores it: [-1, 1], padded right/bottom by reflection: (1, 3, h, w)."""
    img = np.asarray(Image.open(path), dtype=np.float32) / 255
    h, w = img.shape[:2]
    hp, wp = -(-h // block) * block, -(-w // block) * block
    img = img[[reflect_index(i, h) for i in range(hp)]][:, [reflect_index(i, w) for i in range(wp)]]
    return torch.from_numpy(img * 2 - 1).permute(2, 0, 1)[None]


def quantize(x: torch.Tensor) -> np.ndarray:
    return np.round(((x.clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@pytest.mark.parametrize("anchor", ["none", "global", "local"])
def test_cli_equals_in_memory_sample(work, tmp_path, anchor):
    out = tmp_path / "out.png"
    assert run_cli("upscale", work / "in.png", "-o", out, "--model", work / "model", "--steps", 2, "--batch", "2x2",
                   "--anchor", anchor, "-q") == 0
    model = api.load_model(work / "model")
    lr = padded_lr(work / "in.png", model.cfg.lr_block_size)
    x0 = api.sample(model, lr, vector=None, steps=2, seed=0, mode="stream", batch=(2, 2))
    h, w = 80, 108
    if anchor == "global":
        up = api.upsample_full(lr)
        scale, shift = anchoring.global_affine(anchoring.block_moments(x0[..., :h, :w].double()),
                                               anchoring.block_moments(up[..., :h, :w].double()))
        x0 = anchoring.apply_affine(x0, scale, shift)
    elif anchor == "local":
        x0 = anchoring.local_anchor_full(x0, api.upsample_full(lr))
    expected = quantize(x0)[:h, :w]
    got = pixels(out)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected), f"{(got != expected).sum()} pixels differ"
    assert not list(tmp_path.glob(".streamsr-job-*"))  # the temporary job dir is gone


def test_batch_shape_does_not_change_the_output(work, tmp_path):
    states, images = [], []
    for batch in ("1x1", "2x3", "3x1"):
        job = tmp_path / f"job{batch}"
        assert run_cli("upscale", work / "in.png", "-o", tmp_path / f"{batch}.png", "--model", work / "model",
                       "--steps", 2, "--batch", batch, "--job", job, "-q") == 0
        states.append(final_state(job))
        images.append(pixels(tmp_path / f"{batch}.png").astype(int))
    for s, im in zip(states[1:], images[1:]):
        # fp32 round-off (relative), amplified by 3 chained calls of a random net whose state reaches ~25
        assert np.abs(s - states[0]).max() <= 1e-4 * np.abs(states[0]).max()
        assert np.abs(im - images[0]).max() <= 1


def test_sigkill_at_every_kind_of_point_then_resume_is_bit_identical(work, tmp_path):
    args = ("--model", work / "model", "--steps", 2, "--batch", "1x2", "-q")
    ref = run_sub("upscale", work / "in.png", "-o", tmp_path / "ref.png", "--job", tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr
    # 6 batches a sweep: steps 0-1 (predict0, correct0, predict1 fused) 0-5, stats 6-11, anchor 12-17,
    # export 18 (x_T is computed, no init sweep); commits cover several tasks (pipeline.CommitPolicy), and
    # land at row ends with a frontier snapshot (jobs/snapshots.py), so each point is one a resume reaches
    assert read_manifest(tmp_path / "ref").fuse_steps == 2
    points = ["1:mid-write", "2:queued", "4:before-commit", "5:mid-commit", "5:queued", "7:before-commit",
              "8:mid-commit", "13:mid-write", "14:queued", "18:before-commit"]
    job, out = tmp_path / "job", tmp_path / "out.png"
    first = run_sub("upscale", work / "in.png", "-o", out, "--job", job, *args, STREAMSR_TEST_KILL=points[0])
    assert first.returncode == -signal.SIGKILL, first.stderr
    for point in points[1:]:
        before = read_manifest(job).cursor
        res = run_sub("resume", job, "-q", STREAMSR_TEST_KILL=point)
        assert res.returncode == -signal.SIGKILL, (point, res.stderr)
        assert read_manifest(job).cursor >= before
    assert not list(tmp_path.glob("out.partial*"))  # the output appears only whole
    done = run_sub("resume", job, "-q")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(final_state(job), final_state(tmp_path / "ref"))
    assert out.read_bytes() == (tmp_path / "ref.png").read_bytes()
    assert read_manifest(job).status == "done"


def test_random_sigkills_and_ctrl_c_then_resume_is_bit_identical(work, tmp_path):
    rng = random.Random(1234)
    args = ("--model", work / "model", "--steps", 3, "--batch", "1x1", "-q")
    ref = run_sub("upscale", work / "in.png", "-o", tmp_path / "ref.png", "--job", tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr
    job, out = tmp_path / "job", tmp_path / "out.png"
    cmd = [sys.executable, "-m", "streamsr", "upscale", work / "in.png", "-o", out, "--job", job, *args]
    kills = 0
    for attempt in range(6):
        start = read_manifest(job).cursor if (job / "job.json").exists() else -1
        proc = subprocess.Popen([str(c) for c in cmd], env=sub_env(), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:  # wait until this run commits a task,
            if (job / "job.json").exists() and read_manifest(job).cursor > start:  # then strike at random
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            if attempt < 3:
                proc.kill()
                proc.wait()
                kills += 1
            else:  # Ctrl-C: a clean stop at a task boundary with exit code 130 and a resume hint
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=120)
                if proc.returncode in (0, -signal.SIGINT) and read_manifest(job).status == "done":
                    break  # the signal came after the job had finished (during interpreter exit)
                assert proc.returncode == 130, err
                assert "streamsr resume" in err and "Traceback" not in err
                assert read_manifest(job).status == "interrupted"
        else:
            proc.communicate()
            assert proc.returncode == 0
            break
    assert kills >= 1
    if proc.returncode != 0:
        done = run_sub("resume", job, "-q")
        assert done.returncode == 0, done.stderr
    assert np.array_equal(final_state(job), final_state(tmp_path / "ref"))
    assert out.read_bytes() == (tmp_path / "ref.png").read_bytes()


def test_second_process_is_refused_while_the_job_runs(work, tmp_path, capsys):
    from streamsr.jobs.store import job_lock

    job = tmp_path / "job"
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "o.png", "--model", work / "model", "--steps", 1,
                   "--job", job, "--anchor", "none", "-q") == 0
    with job_lock(job):
        res = run_sub("resume", job, "-q")
    assert res.returncode == 2
    assert "being run by pid" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_status_reports_progress_and_settings(work, tmp_path, capsys):
    job = tmp_path / "job"
    run_sub("upscale", work / "in.png", "-o", tmp_path / "o.png", "--model", work / "model", "--steps", 2,
            "--batch", "1x1", "--job", job, "-q", STREAMSR_TEST_KILL="30:before-commit")
    cursor = read_manifest(job).cursor  # commits cover several tasks: the last one before task 30's
    assert 0 < cursor <= 30
    assert run_cli("status", job) == 0
    text = capsys.readouterr().out
    assert f"task {cursor}/" in text and "steps 2 heun" in text and "ETA" in text and "108x80" in text


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("streamsr: error:"), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


@pytest.mark.parametrize("case", ["truncated", "zero", "text", "missing", "absurd"])
def test_bad_inputs_give_one_line_and_exit_2(work, tmp_path, capsys, case):
    path = tmp_path / "bad.png"
    good = (work / "in.png").read_bytes()
    if case == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif case == "zero":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("not an image")
    elif case == "absurd":
        import struct
        import zlib

        ihdr = struct.pack(">IIBBBBB", 3_000_000_000, 2, 8, 2, 0, 0, 0)
        chunk = b"IHDR" + ihdr
        path.write_bytes(good[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + good[33:])
    elif case == "missing":
        path = tmp_path / "nope.png"
    rc = run_cli("upscale", path, "-o", tmp_path / "out.png", "--model", work / "model", "--steps", 1, "-q")
    assert rc == 2
    line = one_line_error(capsys)
    assert str(path.name) in line
    assert not (tmp_path / "out.png").exists() and not list(tmp_path.glob(".streamsr-job-*"))


@pytest.mark.parametrize("args,needle", [
    (["--scale", "3"], "scale 3"), (["--steps", "0"], "steps"), (["-o", "/nonexistent-dir/x.png"], "nonexistent-dir"),
    (["-o", "OUT.bmp"], ".bmp"), (["--model", "/nonexistent-model"], "nonexistent-model"),
])
def test_bad_options_give_one_line_and_exit_2(work, tmp_path, capsys, args, needle):
    base = ["upscale", work / "in.png", "-q"]
    if "-o" not in args:
        base += ["-o", tmp_path / "out.png"]
    if "--model" not in args and args:
        base += ["--model", work / "model"]
    args = [str(a).replace("OUT", str(tmp_path / "out")) for a in args]
    assert run_cli(*base, *args) == 2
    assert needle in one_line_error(capsys)


def test_job_from_another_model_is_refused_and_stays_resumable(work, tmp_path, capsys):
    other = tmp_path / "other"
    random_model(ModelConfig.tiny(vector_dim=0), seed=9, std=0.1).save_pretrained(other)
    job = tmp_path / "job"
    run_sub("upscale", work / "in.png", "-o", tmp_path / "o.png", "--model", work / "model", "--steps", 1,
            "--job", job, "-q", STREAMSR_TEST_KILL="4:before-commit")
    cursor = read_manifest(job).cursor
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "o.png", "--model", other, "--steps", 1,
                   "--job", job, "-q") == 2
    assert "another model" in one_line_error(capsys)
    assert run_cli("resume", job, "--model", other, "-q") == 2
    assert "not the one" in one_line_error(capsys)
    assert read_manifest(job).cursor == cursor
    assert run_cli("resume", job, "-q") == 0
    assert (tmp_path / "o.png").is_file()


def test_full_disk_fails_cleanly_and_resumes(work, tmp_path, capsys, monkeypatch):
    import errno

    from streamsr.jobs import store as store_mod

    real_write = store_mod.JobStore.write
    calls = {"n": 0}

    def failing_write(self, name, box, value):
        calls["n"] += 1
        if calls["n"] == 2:  # whole shard rows are written: the second of the sampler's 3
            raise OSError(errno.ENOSPC, "No space left on device", str(self.dir.store))
        return real_write(self, name, box, value)

    monkeypatch.setattr(store_mod.JobStore, "write", failing_write)
    job = tmp_path / "job"
    args = ("--model", work / "model", "--steps", 2, "--batch", "1x1", "--job", job, "-q")
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "o.png", *args) == 1
    assert "No space left on device" in one_line_error(capsys)
    monkeypatch.setattr(store_mod.JobStore, "write", real_write)
    assert run_cli("resume", job, "-q") == 0
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "ref.png", "--model", work / "model", "--steps", 2,
                   "--batch", "1x1", "-q") == 0
    assert np.array_equal(pixels(tmp_path / "o.png"), pixels(tmp_path / "ref.png"))


@pytest.mark.parametrize("mode,depth", [("L", 8), ("LA", 8), ("RGBA", 8), ("RGB", 16)])
def test_modes_and_bit_depths_are_carried_over(work, tmp_path, mode, depth):
    rng = np.random.default_rng(3)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    data = rng.integers(0, 2 ** depth, size=(9, 14, channels), dtype=np.uint16 if depth == 16 else np.uint8)
    src = tmp_path / "in.tif"
    import tifffile

    tifffile.imwrite(src, data[..., 0] if channels == 1 else data,
                     photometric="minisblack" if channels <= 2 else "rgb",
                     extrasamples=["unassalpha"] if channels in (2, 4) else None)
    out = tmp_path / "out.tif"
    assert run_cli("upscale", src, "-o", out, "--model", work / "model", "--steps", 1, "-q") == 0
    got = tifffile.imread(out)
    got = got[..., None] if got.ndim == 2 else got
    assert got.shape == (36, 56, channels) and got.dtype == data.dtype
    if "A" in mode:  # alpha is the bicubic x4 of the input alpha
        alpha = torch.from_numpy(data[..., -1].astype(np.float32) / (2 ** depth - 1))[None, None]
        expected = api.upsample_full(alpha, clamp=False).clamp(0, 1)[0, 0].numpy() * (2 ** depth - 1)
        assert np.abs(got[..., -1].astype(float) - expected).max() <= 1.0


def test_x16_by_chaining_two_jobs(work, tmp_path):
    src = tmp_path / "small.png"
    Image.fromarray((np.random.default_rng(5).random((5, 7, 3)) * 255).astype(np.uint8)).save(src)
    out = tmp_path / "x16.png"
    job = tmp_path / "job16"
    assert run_cli("upscale", src, "-o", out, "--model", work / "model", "--steps", 1, "--scale", 16,
                   "--job", job, "--anchor", "none", "-q") == 0
    assert pixels(out).shape == (80, 112, 3)
    assert read_manifest(job / "stage2").input.width == 28
    assert run_cli("status", job) == 0


def test_ctrl_c_stops_at_a_task_boundary_and_resume_is_bit_identical(work, tmp_path):
    args = ("--model", work / "model", "--steps", 6, "--batch", "1x1", "--anchor", "local", "-q")
    ref = run_sub("upscale", work / "in.png", "-o", tmp_path / "ref.png", "--job", tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr
    job, out = tmp_path / "job", tmp_path / "out.png"
    cmd = [sys.executable, "-m", "streamsr", "upscale", work / "in.png", "-o", out, "--job", job, *args]
    proc = subprocess.Popen([str(c) for c in cmd], env=sub_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ((job / "job.json").exists() and read_manifest(job).cursor > 20):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"streamsr resume {job}" in err and "Traceback" not in err
    m = read_manifest(job)
    assert m.status == "interrupted" and 20 < m.cursor < m.total_tasks
    assert not out.exists() and not list((job / "state.zarr").rglob("*.partial"))
    done = run_sub("resume", job, "-q")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(final_state(job), final_state(tmp_path / "ref"))
    assert out.read_bytes() == (tmp_path / "ref.png").read_bytes()


def test_semantic_vector_from_a_model_dir_encoder_with_text_direction(work, tmp_path, monkeypatch):
    """A self-contained model dir names its open_clip encoder; the job conditions on its LR embedding."""
    from safetensors.torch import save_file
    from test_semantic import TINY_CFG, _tiny_clip

    from streamsr.semantic import SemanticSpec, semantic_vector, write_spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = tmp_path / "model"
    model = random_model(ModelConfig.tiny(vector_dim=TINY_CFG["embed_dim"]), std=0.1)
    model.save_pretrained(model_dir)
    clip = _tiny_clip()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(model_dir / "clip.safetensors"))
    write_spec(model_dir, SemanticSpec(kind="open_clip", model=TINY_CFG, weights="clip.safetensors",
                                       embed_dim=TINY_CFG["embed_dim"], text=True))
    job, out = tmp_path / "job", tmp_path / "out.png"
    assert run_cli("upscale", work / "in.png", "-o", out, "--model", model_dir, "--steps", 1, "--job", job,
                   "--anchor", "none", "--prompt-pos", "sharp photo", "--prompt-neg", "blurry", "-q") == 0
    stored = torch.from_numpy(zarr.open_group(job / "state.zarr", mode="r")["vector"][...])
    lr = padded_lr(work / "in.png", model.cfg.lr_block_size)[..., :20, :27]
    expected = semantic_vector(model_dir, TINY_CFG["embed_dim"], lr, "sharp photo", "blurry")
    plain = semantic_vector(model_dir, TINY_CFG["embed_dim"], lr)
    assert torch.allclose(stored, expected, atol=1e-6) and abs(stored.norm() - 1) < 1e-5
    assert (stored - plain).abs().max() > 1e-3  # the prompts moved it
    x0 = api.sample(api.load_model(model_dir), padded_lr(work / "in.png", 8), vector=stored, steps=1, seed=0,
                    mode="stream", batch=(1, 1))
    assert np.array_equal(pixels(out), quantize(x0)[:80, :108])


def test_frontier_placement_and_budget_do_not_change_the_output(work, tmp_path, capsys):
    """--frontier disk (spilled K/V, rebuilt after a kill) gives the same bytes as the device frontier."""
    args = ("--model", work / "model", "--steps", 2, "--batch", "1x2", "-q")
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "ref.png", "--frontier", "device", *args) == 0
    job = tmp_path / "job"
    killed = run_sub("upscale", work / "in.png", "-o", tmp_path / "disk.png", "--frontier", "disk", "--job", job,
                     *args, STREAMSR_TEST_KILL="3:mid-write", STREAMSR_COMMIT_EVERY="1")
    assert read_manifest(job).cursor == 2  # the first block row's shards were written: resume replays it
    assert killed.returncode == -signal.SIGKILL
    assert read_manifest(job).job.placement == "disk"
    assert run_cli("resume", job, "-q") == 0
    assert (tmp_path / "disk.png").read_bytes() == (tmp_path / "ref.png").read_bytes()
    assert run_cli("status", job) == 0
    assert "frontier on disk" in capsys.readouterr().out
    # a RAM budget: the planner picks the batch; the output does not depend on it (up to round-off)
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "budget.png", "--model", work / "model",
                   "--steps", 2, "--ram", "2GiB", "-q") == 0
    assert np.abs(pixels(tmp_path / "budget.png").astype(int) - pixels(tmp_path / "ref.png").astype(int)).max() <= 1


def test_shipped_default_model_runs_the_main_job(tmp_path):
    """No --model: the model inside the package, with its recommended settings, upscales x4."""
    from streamsr.jobs.create import default_model_dir
    from streamsr.weights import model_defaults, read_model_defaults

    assert (default_model_dir() / "config.json").is_file()
    settings = model_defaults(default_model_dir())
    src = tmp_path / "in.png"
    Image.open(REPO / "examples" / "coffee-256.png").crop((0, 0, 40, 24)).save(src)
    job = tmp_path / "job"
    assert run_cli("upscale", src, "-o", tmp_path / "out.png", "--job", job, "-q") == 0
    out = pixels(tmp_path / "out.png")
    assert out.shape == (96, 160, 3)
    m = read_manifest(job)
    assert m.job.steps == settings["steps"] and m.job.sigma_max == settings["sigma_max"]
    assert m.model.config.vector_dim > 0  # its learned semantic encoder ran
    bicubic = np.asarray(Image.open(src).resize((160, 96), Image.BICUBIC), dtype=float)
    assert np.abs(out.astype(float) - bicubic).mean() < 20  # a faithful x4, not noise
    # the two named operating points: the default is fidelity; --mode detail takes the detail schedule,
    # and explicit flags still override a mode's values
    defaults = read_model_defaults(default_model_dir())
    assert defaults.default_mode == "fidelity" and set(defaults.modes) == {"fidelity", "detail"}
    assert settings == defaults.settings("fidelity")
    detail = defaults.settings("detail")
    assert run_cli("upscale", src, "-o", tmp_path / "detail.png", "--job", tmp_path / "jd", "--mode", "detail",
                   "--steps", 1, "-q") == 0
    m = read_manifest(tmp_path / "jd")
    assert m.job.sigma_max == detail["sigma_max"] and m.job.steps == 1
    assert pixels(tmp_path / "detail.png").shape == out.shape
