"""tools/evaluate.py: the metric functions on synthetic data and one end-to-end run on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import random_model
from streamsr.config import ModelConfig

pytest.importorskip("skimage")

TOOL = Path(__file__).resolve().parents[1] / "tools" / "evaluate.py"


@pytest.fixture(scope="module")
def ev():
    spec = importlib.util.spec_from_file_location("evaluate_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smooth_image(seed: int = 0, size: int = 128) -> np.ndarray:
    """A smooth random RGB float image in [0, 1]: Gaussian-filtered white noise, stretched."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random((size, size, 3)), sigma=(4, 4, 0), mode="reflect")
    return (img - img.min()) / (img.max() - img.min())


def test_psnr_identical_is_capped(ev):
    a = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    assert ev.psnr(a, a) == ev.PSNR_CAP
    assert math.isfinite(ev.psnr(a, a))


def test_psnr_known_mse(ev):
    a = np.zeros((8, 8))
    b = np.full((8, 8), 5.0)  # MSE 25
    assert ev.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 25))
    assert ev.psnr(a, b / 255.0, data_range=1.0) == pytest.approx(10 * math.log10(255 ** 2 / 25))


def test_ssim_identical_is_one(ev):
    img = (smooth_image() * 255).round()
    assert ev.ssim(img[..., 0], img[..., 0]) == pytest.approx(1.0)
    assert ev.ssim(img, img, channel_axis=-1) == pytest.approx(1.0)
    noisy = img + np.random.default_rng(1).normal(0, 20, img.shape)
    assert ev.ssim(img, noisy, channel_axis=-1) < 0.9


def test_y_of_white_and_black(ev):
    white = np.full((2, 2, 3), 255, np.uint8)
    assert ev.rgb_to_y(white) == pytest.approx(np.full((2, 2), 235.0))
    assert ev.rgb_to_y(np.ones((2, 2, 3))) == pytest.approx(np.full((2, 2), 235.0))
    assert ev.rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16.0)


def test_quality_of_identical_crops(ev):
    hr = (smooth_image() * 255).round().astype(np.uint8)
    q = ev.quality(hr, hr)
    assert q["psnr_y"] == q["psnr_rgb"] == ev.PSNR_CAP
    assert q["ssim_y"] == pytest.approx(1.0) and q["ssim_rgb"] == pytest.approx(1.0)


def test_seam_score(ev):
    img = smooth_image(2, 128)
    assert ev.seam_score(img, 32) == pytest.approx(1.0, abs=0.15)
    noise = np.random.default_rng(3).random((128, 128, 3))
    assert ev.seam_score(noise, 32) == pytest.approx(1.0, abs=0.05)
    # add a constant offset per block (checkerboard): steps exactly at the block borders
    yy, xx = np.mgrid[0:128, 0:128]
    steps = img + 0.2 * (((yy // 32) + (xx // 32)) % 2)[..., None]
    assert ev.seam_score(steps, 32) > 3.0
    assert math.isnan(ev.seam_score(img[:32, :32], 32))  # one block: no border


def test_seam_score_of_bicubic_is_one(ev):
    """x4 bicubic has larger gradients across every LR-pixel boundary: phase-matched, that is no seam."""
    lr = np.random.default_rng(5).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    up = ev.pil_upscale(lr, 4, Image.BICUBIC)
    assert ev.seam_score(up, 32) == pytest.approx(1.0, abs=0.05)
    assert ev.seam_score(up, 32, phase=1) > 1.2  # against every pair, the LR grid itself looks like seams


def test_crop_boxes_and_degrade(ev):
    boxes = ev.crop_boxes(300, 451, 128, 2)
    assert boxes[0] == (86, 162, 128)  # centre first
    assert len(boxes) == 2 and boxes[1] != boxes[0]
    assert ev.crop_boxes(88, 90, 128, 3)[0] == (0, 1, 88)
    assert ev.crop_boxes(88, 88, 128, 3) == [(0, 0, 88)]  # small image: one shrunk crop, deduplicated
    assert len(ev.crop_boxes(512, 512, 128, 12)) == 12  # beyond the fixed positions: Halton, distinct
    hr = (smooth_image() * 255).round().astype(np.uint8)
    lr = ev.degrade(hr)
    assert lr.shape == (32, 32, 3) and lr.dtype == np.uint8


def test_end_to_end(ev, tmp_path):
    model_dir = tmp_path / "model"
    random_model(ModelConfig.tiny(vector_dim=0), std=0.1).save_pretrained(model_dir)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray((smooth_image(4, 80) * 255).round().astype(np.uint8)).save(images / "synth.png")
    out = tmp_path / "report"
    assert ev.main(["--model", str(model_dir), "--images", str(images), "--steps", "1", "--crop", "64",
                    "--crops-per-image", "1", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["job"]["steps"] == 1
    assert len(report["crops"]) == 1
    for method in ("bicubic", "lanczos", "model"):
        assert f"| synth | {method} |" in md
        for key in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "seam"):
            value = report["mean"][method][key]
            assert isinstance(value, float) and math.isfinite(value), (method, key, value)
    assert 0 < report["mean"]["model"]["ssim_y"] <= 1
    for suffix in ("hr", "lr", "model", "side"):
        assert (out / "crops" / f"synth_c0_{suffix}.png").is_file()
    assert Image.open(out / "crops" / "synth_c0_lr.png").size == (16, 16)
    assert not list((out / "crops").glob(".evaluate-job-*"))  # temporary job dir removed


def test_model_dir_defaults(ev, tmp_path):
    (tmp_path / "streamsr_defaults.json").write_text(json.dumps(
        {"steps": 7, "batch": "2x3", "sigma-max": 80.0, "comment": "recommended"}))
    defaults, ignored = ev.read_model_defaults(tmp_path)
    assert defaults == {"steps": 7, "batch_rows": 2, "batch_cols": 3, "sigma_max": 80.0}
    assert ignored == ["comment"]
    args = ev.build_parser().parse_args(["--model", str(tmp_path), "--seed", "5"])
    cfg = ev.job_config(args, defaults)
    assert (cfg.steps, cfg.batch_rows, cfg.batch_cols, cfg.sigma_max, cfg.seed) == (7, 2, 3, 80.0, 5)
    args = ev.build_parser().parse_args(["--model", str(tmp_path), "--steps", "3", "--batch", "1x1"])
    cfg = ev.job_config(args, defaults)
    assert (cfg.steps, cfg.batch_rows, cfg.batch_cols, cfg.sampler) == (3, 1, 1, "heun")
    assert ev.read_model_defaults(tmp_path / "nothing") == ({}, [])
