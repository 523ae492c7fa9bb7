"""A residual model's two operating points through the real job: fidelity (x_T = up(LR), one step: the
deterministic estimate) and detail (LR-noise init, a few Heun steps), as named in its model dir."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import random_model
from PIL import Image

from streamsr import api
from streamsr.cli import main
from streamsr.config import ConfigError, JobConfig, ModelConfig
from streamsr.core.resample import upsample_full
from streamsr.weights import DEFAULTS_NAME

CFG = ModelConfig.tiny(vector_dim=0, parametrisation="residual", sigma_data=0.05)
MODES = {"mode": "fidelity", "modes": {
    "fidelity": {"steps": 1, "sampler": "euler", "sigma_max": 1.0, "sigma_min": 0.5, "anchor": "none",
                 "noise_init": False},
    "detail": {"steps": 2, "sampler": "heun", "sigma_max": 0.1, "sigma_min": 0.01, "anchor": "none"}}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    random_model(CFG, seed=2, std=0.1).save_pretrained(root / "model")
    (root / "model" / DEFAULTS_NAME).write_text(json.dumps(MODES))
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((16, 24, 3)) * 255).astype(np.uint8)).save(root / "in.png")
    return root


def lr_of(path) -> torch.Tensor:
    img = np.asarray(Image.open(path), dtype=np.float32) / 255
    return torch.from_numpy(img * 2 - 1).permute(2, 0, 1)[None]  # (1, 3, h, w)


def quantize(x: torch.Tensor) -> np.ndarray:
    return np.round(((x.clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def test_fidelity_point_is_one_deterministic_denoiser_call(model_dir):
    model = api.load_model(model_dir / "model")
    lr = lr_of(model_dir / "in.png")
    up = upsample_full(lr)
    out = api.sample(model, lr, vector=None, steps=1, sampler="euler", sigma_max=1.0, sigma_min=0.5,
                     noise_init=False, mode="stream", batch=(1, 2))
    d = api.denoise(model, up, 1.0, lr=lr, vector=None, concat_lr=up, mode="full")
    assert (out - d).abs().max() <= 1e-5  # x_T = up(LR): one Euler step to 0 returns D(up; sigma)
    seeds = [api.sample(model, lr, vector=None, steps=1, sampler="euler", sigma_max=1.0, sigma_min=0.5,
                        noise_init=False, seed=s) for s in (0, 1)]
    assert torch.equal(*seeds)  # no noise: the seed does not matter


@pytest.mark.parametrize("mode", ["fidelity", "detail"])
def test_job_follows_the_named_mode(model_dir, tmp_path, mode):
    out = tmp_path / f"{mode}.png"
    assert main(["upscale", str(model_dir / "in.png"), "-o", str(out), "--model", str(model_dir / "model"),
                 "--mode", mode, "--batch", "2x2", "-q"]) == 0
    model = api.load_model(model_dir / "model")
    settings = {k: v for k, v in MODES["modes"][mode].items() if k != "anchor"}
    x0 = api.sample(model, lr_of(model_dir / "in.png"), vector=None, mode="stream", batch=(2, 2), seed=0,
                    **settings)
    assert np.array_equal(np.asarray(Image.open(out)), quantize(x0))


def test_flags_override_the_mode(model_dir, tmp_path):
    """--sigma-max/--steps change the schedule of the fidelity mode; --noise-init turns its noise back on."""
    from streamsr.jobs.store import read_manifest

    job = tmp_path / "job"
    assert main(["upscale", str(model_dir / "in.png"), "-o", str(tmp_path / "o.png"), "--model",
                 str(model_dir / "model"), "--job", str(job), "--steps", "2", "--sigma-max", "0.2", "--sigma-min", "0.02",
                 "--noise-init", "-q"]) == 0
    cfg = read_manifest(job).job
    assert (cfg.steps, cfg.sigma_max, cfg.noise_init, cfg.sampler) == (2, 0.2, True, "euler")


def test_noise_init_must_be_a_bool():
    with pytest.raises(ConfigError, match="noise_init"):
        JobConfig(noise_init="no")
    assert JobConfig.from_dict({k: v for k, v in JobConfig().to_dict().items() if k != "noise_init"}).noise_init
