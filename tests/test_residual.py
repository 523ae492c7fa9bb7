"""The residual parametrisation (DESIGN.md "Model parametrisations"): D(x; s) = up + c_skip (x - up) + c_out F.

streamed == full for this mode is in test_stream.py (the "residual" config); here: the formula itself,
F = 0 giving up(LR) exactly, the official parametrisation untouched, and the config round trip.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_inputs, random_model

from streamsr import api
from streamsr.config import ConfigError, ModelConfig
from streamsr.core.model import InfDiT
from streamsr.core.resample import upsample_full
from streamsr.core.sampler import denoised, network_input, precond
from streamsr.weights import read_model_config

RESIDUAL = ModelConfig.tiny(parametrisation="residual", sigma_data=0.05)


def zero_output(model: InfDiT) -> InfDiT:
    """The same model with F = 0 (the final linear zeroed, as a fresh training run starts)."""
    with torch.no_grad():
        model.final.linear.weight.zero_()
        model.final.linear.bias.zero_()
    return model


def test_residual_formula_is_edm_around_up():
    g = torch.Generator().manual_seed(0)
    x, up, f = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    pc = precond(torch.tensor([0.03, 5.0]), 0.05)
    c_skip, c_out, c_in = (c[:, None, None, None] for c in (pc.c_skip, pc.c_out, pc.c_in))
    d = denoised(x, up, f, c_skip, c_out, residual=True)
    assert torch.allclose(d - up, denoised(x - up, torch.zeros_like(up), f, c_skip, c_out, residual=False), atol=1e-6)
    inp = network_input(x, up, c_in, residual=True)
    assert torch.equal(inp[:, 3:], up)  # the LR channels are not scaled by c_in in the residual mode
    assert torch.allclose(inp[:, :3], c_in * (x - up))
    official = network_input(x, up, c_in, residual=False)
    assert torch.allclose(official, torch.cat([x, up], 1) * c_in)  # FACTS.md 1.1: both scaled


@pytest.mark.parametrize("mode", ["full", "stream"])
def test_zero_network_gives_exactly_the_upsampled_lr(mode):
    model = zero_output(random_model(RESIDUAL, seed=3))
    x, lr, vector = random_inputs(RESIDUAL, 2, 3, seed=4)
    up = upsample_full(lr)
    # D(up; sigma) = up at every sigma, bit for bit: nothing but the upsampled LR comes out of F = 0
    for sigma in (0.002, 0.05, 1.0, 80.0):
        d = api.denoise(model, up, sigma, lr=lr, vector=vector, concat_lr=up, mode=mode, batch=(2, 2))
        assert torch.equal(d, up), sigma
    # from a noisy x, D keeps only c_skip of the noise: D - up = c_skip (x - up)
    sigma = 2.0
    d = api.denoise(model, x, sigma, lr=lr, vector=vector, concat_lr=up, mode=mode, batch=(1, 2))
    c_skip = float(precond(torch.tensor(sigma), RESIDUAL.sigma_data).c_skip)
    assert torch.allclose(d - up, c_skip * (x - up), atol=1e-6)
    # the sampler from x_T = up (no noise) returns up(LR) exactly, through every Heun step
    out = api.sample(model, lr, vector=vector, steps=3, sampler="heun", init_noise=torch.zeros_like(up),
                     mode=mode, batch=(1, 1), sigma_max=1.0, sigma_min=0.01)
    assert torch.equal(out, up)


def test_image_mode_with_zero_network_is_not_up():
    """The official parametrisation keeps D = c_skip x (F = 0 shrinks the image): the two modes differ."""
    cfg = ModelConfig.tiny()
    model = zero_output(random_model(cfg, seed=5))
    _, lr, vector = random_inputs(cfg, 1, 2)
    up = upsample_full(lr)
    d = api.denoise(model, up, 1.0, lr=lr, vector=vector, mode="full")
    c_skip = float(precond(torch.tensor(1.0), cfg.sigma_data).c_skip)
    assert torch.allclose(d, c_skip * up, atol=1e-6)


def test_parametrisation_in_config_json(tmp_path):
    model = random_model(RESIDUAL)
    model.save_pretrained(tmp_path / "res", safe_serialization=True)
    assert json.loads((tmp_path / "res" / "config.json").read_text())["parametrisation"] == "residual"
    assert read_model_config(tmp_path / "res").parametrisation == "residual"
    # a model dir written before the field existed means the official (image) parametrisation
    random_model(ModelConfig.tiny()).save_pretrained(tmp_path / "old", safe_serialization=True)
    data = json.loads((tmp_path / "old" / "config.json").read_text())
    data.pop("parametrisation")
    (tmp_path / "old" / "config.json").write_text(json.dumps(data))
    assert read_model_config(tmp_path / "old").parametrisation == "image"
    assert ModelConfig.official().parametrisation == "image"


def test_bad_parametrisation_is_refused():
    with pytest.raises(ConfigError, match="parametrisation"):
        ModelConfig.tiny(parametrisation="eps")
