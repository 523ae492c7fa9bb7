"""tools/evaluate.py: the metric functions, the LR sets, the plot, the settings and end-to-end runs on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import random_model
from PIL import Image

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


def photo_crop(size: int = 128) -> np.ndarray:
    """A real photograph: the centre size x size crop of skimage's astronaut (bundled with scikit-image)."""
    import skimage.data

    img = skimage.data.astronaut()
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return np.ascontiguousarray(img[top:top + size, left:left + size, :3])


def test_detail_measure(ev):
    from scipy.ndimage import gaussian_filter

    hr = photo_crop(128)
    assert ev.detail_measure(hr, hr) == pytest.approx(1.0)
    blurred = np.rint(gaussian_filter(hr.astype(np.float64), sigma=(1.5, 1.5, 0))).astype(np.uint8)
    assert ev.detail_measure(blurred, hr) < 0.6
    bicubic = ev.pil_upscale(ev.degrade(hr), 4, Image.BICUBIC)
    assert 0.05 < ev.detail_measure(bicubic, hr) < 0.3  # ~0.13 on skimage's photos (the docstring)
    noisy = np.clip(hr + np.random.default_rng(0).normal(0, 10, hr.shape), 0, 255).round().astype(np.uint8)
    assert ev.detail_measure(noisy, hr) > 1.05  # noise adds fine-detail energy: above the HR's
    assert ev.detail_measure(hr.astype(np.float64) / 255.0, hr) == pytest.approx(1.0)  # float RGB in [0, 1]
    y = ev.rgb_to_y(hr)
    assert ev.detail_measure(y, y) == pytest.approx(1.0)  # a 2-D input is the luma itself
    flat = np.full((32, 32, 3), 128, np.uint8)
    assert ev.detail_measure(flat, flat) == 1.0 and ev.detail_measure(hr[:32, :32], flat) == math.inf
    # the formula: sum hp(out)^2 / sum hp(hr)^2, hp = Y - GaussianBlur(Y, DETAIL_SIGMA), border shaved
    hp_out = ev.shave(ev.rgb_to_y(bicubic) - gaussian_filter(ev.rgb_to_y(bicubic), ev.DETAIL_SIGMA, mode="reflect"))
    hp_hr = ev.shave(y - gaussian_filter(y, ev.DETAIL_SIGMA, mode="reflect"))
    assert ev.detail_measure(bicubic, hr) == pytest.approx(np.sum(hp_out ** 2) / np.sum(hp_hr ** 2))


def test_degraded_lr_is_deterministic_and_differs_from_clean(ev):
    hr = photo_crop(64)
    seed = ev.crop_seed("astronaut_c0")
    assert seed == ev.crop_seed("astronaut_c0") != ev.crop_seed("astronaut_c1")
    clean = ev.make_lr(hr, "clean", seed)
    assert np.array_equal(clean, ev.degrade(hr))
    degraded = ev.make_lr(hr, "degraded", seed)
    assert degraded.shape == clean.shape == (16, 16, 3) and degraded.dtype == np.uint8
    assert np.array_equal(degraded, ev.make_lr(hr, "degraded", seed))  # the same on every call
    assert not np.array_equal(degraded, clean)
    assert not np.array_equal(degraded, ev.make_lr(hr, "degraded", seed + 1))  # the noise follows the seed
    diff = np.abs(degraded.astype(int) - clean.astype(int))
    assert 0 < diff.mean() < 8  # mild: noise 2/255 and JPEG quality 75
    with pytest.raises(ValueError):
        ev.make_lr(hr, "blurry", seed)


def test_plot_is_a_png(ev, tmp_path):
    points = [{"method": m, "set": s, "detail": d, "psnr_y": p} for m, s, d, p in (
        ("bicubic", "clean", 0.13, 27.1), ("lanczos", "clean", 0.15, 27.3), ("fidelity", "clean", 0.3, 28.4),
        ("detail", "clean", 0.8, 26.2), ("bicubic", "degraded", 0.13, 26.5), ("lanczos", "degraded", 0.15, 26.6),
        ("fidelity", "degraded", 0.3, 27.2), ("detail", "degraded", float("nan"), 25.4))]
    path = tmp_path / "plot.png"
    ev.write_plot(path, points, title="test")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == ev.PLOT_SIZE
        im.verify()
    img = np.asarray(Image.open(path).convert("RGB"))
    assert (img == ev.METHOD_COLOURS["detail"]).all(-1).any()  # the detail (clean) marker is drawn
    assert (img == ev.METHOD_COLOURS["fidelity"]).all(-1).any()
    assert ev.nice_ticks(0.0, 1.05) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert ev.nice_ticks(26.0, 29.0)[0] <= 26.0 and ev.nice_ticks(26.0, 29.0)[-1] >= 29.0


DEFAULTS = {"mode": "fidelity", "modes": {
    "fidelity": {"steps": 1, "sampler": "euler", "sigma_max": 1.0, "sigma_min": 0.5, "anchor": "none"},
    "detail": {"steps": 2, "sampler": "euler", "sigma_max": 2.0, "sigma_min": 0.1, "anchor": "none"}}}


def test_method_configs(ev, tmp_path):
    from streamsr.weights import read_model_defaults

    parse = ev.build_parser().parse_args
    configs = ev.method_configs(parse(["--model", "m"]), read_model_defaults(tmp_path))  # no file
    assert list(configs) == ["model"] and configs["model"][0] == {}
    assert configs["model"][1] == ev.JobConfig()
    (tmp_path / "streamsr_defaults.json").write_text(json.dumps({"steps": 7, "sigma_max": 80.0}))  # flat
    configs = ev.method_configs(parse(["--model", "m", "--seed", "5"]), read_model_defaults(tmp_path))
    cfg = configs["model"][1]
    assert list(configs) == ["model"] and (cfg.steps, cfg.sigma_max, cfg.seed) == (7, 80.0, 5)
    with pytest.raises(SystemExit, match="no modes"):
        ev.method_configs(parse(["--model", "m", "--modes", "detail"]), read_model_defaults(tmp_path))
    (tmp_path / "streamsr_defaults.json").write_text(json.dumps(DEFAULTS))
    defaults = read_model_defaults(tmp_path)
    configs = ev.method_configs(parse(["--model", "m", "--batch", "1x2", "--steps", "3"]), defaults)
    assert list(configs) == ["fidelity", "detail"]
    assert configs["detail"][0] == DEFAULTS["modes"]["detail"]
    for mode, (_, cfg) in configs.items():  # the overrides apply to every mode
        assert (cfg.steps, cfg.batch_rows, cfg.batch_cols) == (3, 1, 2)
        recommended = DEFAULTS["modes"][mode]
        assert (cfg.sigma_min, cfg.sigma_max) == (recommended["sigma_min"], recommended["sigma_max"])
    configs = ev.method_configs(parse(["--model", "m", "--modes", "detail,fidelity"]), defaults)
    assert list(configs) == ["fidelity", "detail"]  # MODES order
    assert list(ev.method_configs(parse(["--model", "m", "--modes", "detail"]), defaults)) == ["detail"]
    (tmp_path / "streamsr_defaults.json").write_text(json.dumps({"mode": "detail", "modes": {"detail": {"steps": 2}}}))
    with pytest.raises(SystemExit, match="fidelity"):
        ev.method_configs(parse(["--model", "m", "--modes", "fidelity"]), read_model_defaults(tmp_path))
    with pytest.raises(SystemExit):
        parse(["--model", "m", "--sets", "clean,blurry"])
    assert parse(["--model", "m"]).sets == ("clean", "degraded")
    assert parse(["--model", "m", "--sets", "degraded"]).sets == ("degraded",)


def tiny_model_dir(path: Path, defaults: dict | None) -> Path:
    random_model(ModelConfig.tiny(vector_dim=0), std=0.1).save_pretrained(path)
    if defaults is not None:
        (path / "streamsr_defaults.json").write_text(json.dumps(defaults))
    return path


def one_image_dir(path: Path) -> Path:
    path.mkdir()
    Image.fromarray((smooth_image(4, 80) * 255).round().astype(np.uint8)).save(path / "synth.png")
    return path


def test_end_to_end_with_modes(ev, tmp_path):
    model_dir = tiny_model_dir(tmp_path / "model", DEFAULTS)
    images = one_image_dir(tmp_path / "images")
    out = tmp_path / "report"
    assert ev.main(["--model", str(model_dir), "--images", str(images), "--crop", "64", "--crops-per-image", "1",
                    "--seed", "3", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    methods = ["bicubic", "lanczos", "fidelity", "detail"]
    assert report["methods"] == methods
    assert set(report["sets"]) == {"clean", "degraded"}
    jobs = {m: report["settings"]["methods"][m]["job"] for m in ("fidelity", "detail")}
    assert (jobs["fidelity"]["steps"], jobs["fidelity"]["sigma_max"], jobs["fidelity"]["seed"]) == (1, 1.0, 3)
    assert (jobs["detail"]["steps"], jobs["detail"]["sigma_max"], jobs["detail"]["seed"]) == (2, 2.0, 3)
    for lr_set in ("clean", "degraded"):
        res = report["sets"][lr_set]
        assert len(res["crops"]) == 1 and res["crops"][0]["set"] == lr_set
        for method in methods:
            assert f"| synth | {method} |" in md
            for key in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "detail", "seam"):
                value = res["mean"][method][key]
                assert isinstance(value, float) and math.isfinite(value), (lr_set, method, key, value)
        assert 0 < res["mean"]["detail"]["ssim_y"] <= 1
        assert set(res["vs_bicubic"]) == {"fidelity", "detail"}
        assert res["vs_bicubic"]["detail"]["delta_psnr_y"] == pytest.approx(
            res["mean"]["detail"]["psnr_y"] - res["mean"]["bicubic"]["psnr_y"])
        for suffix in ("lr", "fidelity", "detail", "side"):
            assert (out / "crops" / f"synth_c0_{lr_set}_{suffix}.png").is_file()
        assert Image.open(out / "crops" / f"synth_c0_{lr_set}_lr.png").size == (16, 16)
    assert report["sets"]["degraded"]["crops"][0]["noise_seed"] == ev.crop_seed("synth_c0")
    lr_clean = np.asarray(Image.open(out / "crops" / "synth_c0_clean_lr.png"))
    lr_degraded = np.asarray(Image.open(out / "crops" / "synth_c0_degraded_lr.png"))
    assert not np.array_equal(lr_clean, lr_degraded)
    assert md.count("vs bicubic (mean):") == 2 and "## LR set `degraded`" in md
    assert len(report["plot"]) == 8 and {(p["method"], p["set"]) for p in report["plot"]} == {
        (m, s) for m in methods for s in ("clean", "degraded")}
    with Image.open(out / "plot.png") as im:
        assert im.format == "PNG"
    assert (out / "crops" / "synth_c0_hr.png").is_file()
    assert not list((out / "crops").glob(".evaluate-job-*"))  # temporary job dirs removed


def test_end_to_end_without_modes(ev, tmp_path):
    """A model dir without streamsr_defaults.json: one method "model", one set when asked."""
    model_dir = tiny_model_dir(tmp_path / "model", None)
    images = one_image_dir(tmp_path / "images")
    out = tmp_path / "report"
    assert ev.main(["--model", str(model_dir), "--images", str(images), "--steps", "1", "--crop", "64",
                    "--crops-per-image", "1", "--sets", "clean", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == ["bicubic", "lanczos", "model"] and list(report["sets"]) == ["clean"]
    assert report["settings"]["methods"]["model"]["job"]["steps"] == 1
    assert math.isfinite(report["sets"]["clean"]["mean"]["model"]["detail"])
    assert (out / "crops" / "synth_c0_clean_model.png").is_file() and (out / "plot.png").is_file()
