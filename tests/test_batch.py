"""Batch upscales: a folder with a corrupt file, a killed batch resumed, existing outputs skipped or redone."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from conftest import random_model
from PIL import Image
from test_job import pixels, run_cli, run_sub

from streamsr.config import ModelConfig
from streamsr.jobs.batch import BATCH_FILE, DEFAULT_BATCH_DIR, is_batch_request
from streamsr.jobs.progress import BatchPosition, ProgressBar
from streamsr.jobs.store import JobDir

ARGS = ("--steps", 1, "--anchor", "none", "--batch", "1x1")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A tiny model and a folder: two PNGs, a JPEG in a subfolder, a corrupt PNG and a text file."""
    root = tmp_path_factory.mktemp("batch")
    random_model(ModelConfig.tiny(vector_dim=0), std=0.1).save_pretrained(root / "model")
    rng = np.random.default_rng(1)
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    for name, size in (("a.png", (16, 20)), ("b.png", (12, 9))):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(src / name)
    Image.fromarray((rng.random((10, 14, 3)) * 255).astype(np.uint8)).save(src / "sub" / "c.jpg", quality=95)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (src / "notes.txt").write_text("not an image")
    return root


def single(photos, tmp_path, name: str) -> np.ndarray:
    """The pixels of the one-file command on the same settings."""
    out = tmp_path / f"single-{name.replace('/', '-')}.png"
    assert run_cli("upscale", photos / "in" / name, "-o", out, "--model", photos / "model", *ARGS, "-q") == 0
    return pixels(out)


def test_batch_request_detection(photos, tmp_path):
    assert not is_batch_request([str(photos / "in" / "a.png")], str(tmp_path / "o.png"))
    assert is_batch_request([str(photos / "in")], str(tmp_path / "o"))
    assert is_batch_request([str(photos / "in" / "*.png")], str(tmp_path / "o"))
    assert is_batch_request([str(photos / "in" / "a.png"), str(photos / "in" / "b.png")], str(tmp_path / "o"))
    assert is_batch_request([str(photos / "in" / "a.png")], str(tmp_path) + "/")


def test_folder_with_a_corrupt_file_does_the_others_and_fails(photos, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run_cli("upscale", photos / "in", "-o", out, "-r", "--model", photos / "model", *ARGS)
    err = capsys.readouterr().err
    assert rc == 1
    assert "image 1/4" in err and "image 4/4" in err  # the count and the current image
    assert "2 done" not in err and "3 done, 0 skipped (output exists), 1 failed" in err
    assert "broken.png" in err.splitlines()[-1] and "not a valid PNG" in err.splitlines()[-1]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "b.png", "sub/c.png"]
    for name in ("a.png", "sub/c.jpg"):
        got = pixels(out / name.replace(".jpg", ".png"))
        np.testing.assert_array_equal(got, single(photos, tmp_path, name))
    state = json.loads((out / DEFAULT_BATCH_DIR / BATCH_FILE).read_text())  # kept: one image failed
    assert [item["state"] for item in state["items"]].count("failed") == 1
    assert not (out / DEFAULT_BATCH_DIR / "jobs").exists() or not any((out / DEFAULT_BATCH_DIR / "jobs").iterdir())


def test_existing_outputs_are_skipped_unless_overwrite(photos, tmp_path, capsys):
    out = tmp_path / "out"
    files = [photos / "in" / "a.png", photos / "in" / "b.png"]
    assert run_cli("upscale", *files, "-o", out, "--model", photos / "model", *ARGS, "-q") == 0
    assert not (out / DEFAULT_BATCH_DIR).exists()  # all done: the batch dir is gone
    assert capsys.readouterr().err == ""  # -q: silent on success
    (out / "a.png").write_bytes(b"mine")
    assert run_cli("upscale", *files, "-o", out, "--model", photos / "model", *ARGS) == 0
    assert "2 skipped" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == b"mine"
    assert run_cli("upscale", *files, "-o", out, "--model", photos / "model", *ARGS, "--overwrite", "-q") == 0
    np.testing.assert_array_equal(pixels(out / "a.png"), single(photos, tmp_path, "a.png"))


def test_glob_and_output_names(photos, tmp_path):
    out = tmp_path / "out"
    assert run_cli("upscale", str(photos / "in" / "[ab].png"), "-o", out, "--model", photos / "model", *ARGS,
                   "--format", "tif", "-q") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "b.tif"]
    assert Image.open(out / "b.tif").size == (36, 48)


def test_output_that_would_overwrite_an_input_is_refused(photos, tmp_path, capsys):
    folder = tmp_path / "same"
    folder.mkdir()
    Image.open(photos / "in" / "a.png").save(folder / "a.png")
    assert run_cli("upscale", folder, "-o", folder, "--model", photos / "model", *ARGS, "-q") == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


def test_killed_batch_resumes_where_it_stopped(photos, tmp_path):
    out, batch_dir = tmp_path / "out", tmp_path / "batch"
    files = [photos / "in" / "a.png", photos / "in" / "b.png"]
    killed = run_sub("upscale", *files, "-o", out, "--job", batch_dir, "--model", photos / "model", *ARGS, "-q",
                     STREAMSR_TEST_KILL="1:before-commit")
    assert killed.returncode != 0
    state = json.loads((batch_dir / BATCH_FILE).read_text())
    assert [item["state"] for item in state["items"]] == ["pending", "pending"]
    assert JobDir(batch_dir / "jobs" / "00000").is_job()  # the first image's job, killed midway
    done = run_sub("resume", batch_dir, "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert not batch_dir.exists()
    for f in files:
        np.testing.assert_array_equal(pixels(out / f.name), single(photos, tmp_path, f.name))


def test_progress_line_shows_the_image_count_and_the_image_blocks(photos, tmp_path, capsys):
    sink = io.StringIO()  # a batch's position given as the job's progress leads its progress line
    bar = ProgressBar(4, 6, stream=sink, interval=0, enabled=False, callback=BatchPosition(3, 10))
    bar.update(2, 3, label="steps 1-1/1", new_blocks=3, force=True)
    assert sink.getvalue().startswith("image 3/10  steps 1-1/1") and "blocks 3/6" in sink.getvalue()
    with pytest.raises(ValueError):
        BatchPosition(11, 10)

    files = [photos / "in" / "a.png", photos / "in" / "b.png"]
    assert run_cli("upscale", *files, "-o", tmp_path / "out", "--model", photos / "model", *ARGS) == 0
    bars = [line for line in capsys.readouterr().err.splitlines() if "blocks/s" in line]
    for k in (1, 2):  # the last line of each image: all its tasks and blocks done
        last = [line for line in bars if line.startswith(f"image {k}/2  ")][-1]
        done = re.search(r"blocks (\d+)/(\d+) ", last)
        assert "100.0%" in last and done and done[1] == done[2] and int(done[1]) > 0
