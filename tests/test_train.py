"""streamsr.train (recipe and trainer) and the learned semantic encoder: tiny model, synthetic images, CPU.

References: an uninterrupted run for resume, upsample_full for concat_lr, the binomial rate for LR dropout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from streamsr import semantic
from streamsr.api import load_model
from streamsr.config import ModelConfig
from streamsr.core.denoiser import denoise_full
from streamsr.core.resample import upsample_full
from streamsr.errors import BadInput
from streamsr.semantic.learned import SemanticNet, save_encoder
from streamsr.train.recipe import (
    CropSampler,
    Noise,
    TrainSettings,
    degrade,
    downsample_x4,
    draw_noise,
    edm_loss,
    list_images,
    lr_dropout,
    make_batch,
    quantise_8bit,
    seam_error,
    step_generator,
    train_thumbnail,
)
from streamsr.train.trainer import Trainer, learning_rate
from streamsr.weights import read_model_config

CFG = ModelConfig.tiny(vector_dim=16)  # 32 px blocks, patch 8
SETTINGS = TrainSettings(batch=2, crop=64, warmup=0, lr=1e-3, thumb_size=32, encoder_channels=(8, 16))
REPO = Path(__file__).resolve().parents[1]


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8: sinusoids of random frequency plus a little noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = [np.sin(xx * rng.uniform(0.02, 0.2) + yy * rng.uniform(0.02, 0.2) + rng.uniform(0, 6))
             for _ in range(3)]
    img = 127.5 + 100 * np.stack(chans, axis=-1) + rng.normal(0, 5, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(_smooth_image(rng, 96, 80)).save(root / "a.png")
    Image.fromarray(_smooth_image(rng, 72, 120)).save(root / "b.jpg", quality=95)
    (root / "sub").mkdir()
    Image.fromarray(_smooth_image(rng, 64, 64)).save(root / "sub" / "c.PNG")
    Image.fromarray(_smooth_image(rng, 40, 40)).save(root / "small.png")  # smaller than the crop: skipped
    return root


@pytest.fixture(scope="module")
def sampler(image_dir) -> CropSampler:
    return CropSampler.from_paths(list_images(image_dir), SETTINGS.crop)


def test_list_images_dir_and_json_split(image_dir, tmp_path):
    assert [p.name for p in list_images(image_dir)] == ["a.png", "b.jpg", "small.png", "c.PNG"]
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "a.png").symlink_to(image_dir / "a.png")
    (linked / "z.png").symlink_to(image_dir / "a.png")  # the same file twice counts once
    assert [p.name for p in list_images(linked)] == ["a.png"]
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([{"path": str(image_dir / "a.png"), "split": "train"},
                                   {"path": str(image_dir / "b.jpg"), "split": "val"}]))
    assert list_images(listing) == [image_dir / "a.png"]
    listing.write_text(json.dumps([str(image_dir / "a.png")]))
    with pytest.raises(BadInput, match="split"):
        list_images(listing)


def test_crop_sampler(sampler):
    assert len(sampler.images) == 3 and len(sampler.skipped) == 1
    a = sampler.sample(4, torch.Generator().manual_seed(3))
    b = sampler.sample(4, torch.Generator().manual_seed(3))
    assert a.shape == (4, 3, 64, 64) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1


def test_degradation_reproducible_and_sized(sampler):
    hr = sampler.sample(3, torch.Generator().manual_seed(0))
    lr1 = degrade(hr, torch.Generator().manual_seed(7), SETTINGS)
    lr2 = degrade(hr, torch.Generator().manual_seed(7), SETTINGS)
    lr3 = degrade(hr, torch.Generator().manual_seed(8), SETTINGS)
    assert lr1.shape == (3, 3, 16, 16) and torch.equal(lr1, lr2) and not torch.equal(lr1, lr3)
    assert lr1.min() >= -1 and lr1.max() <= 1
    # 8-bit values (JPEG), close to a plain antialiased x4 downscale of the HR
    assert torch.allclose((lr1 + 1) * 127.5, ((lr1 + 1) * 127.5).round(), atol=1e-3)
    plain = torch.nn.functional.interpolate(hr, size=(16, 16), mode="bicubic", antialias=True)
    assert torch.corrcoef(torch.stack([lr1.flatten(), plain.flatten()]))[0, 1] > 0.9


def test_lr_dropout_rate_and_make_batch(sampler):
    n, p = 4000, 0.07
    lr = torch.full((n, 3, 2, 2), 2.0)  # outside [-1, 1], so replaced entries are recognisable
    up = torch.full((n, 3, 8, 8), 2.0)
    lr_out, up_out, dropped = lr_dropout(lr, up, p, torch.Generator().manual_seed(0))
    assert abs(dropped.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(lr_out[~dropped], lr[~dropped]) and torch.equal(up_out[~dropped], up[~dropped])
    assert lr_out[dropped].abs().max() <= 1 and up_out[dropped].abs().max() <= 1

    hr = sampler.sample(2, torch.Generator().manual_seed(1))
    batch = make_batch(hr, torch.Generator().manual_seed(2), TrainSettings(crop=64, lr_dropout=0.0))
    assert batch.concat_lr.shape == hr.shape and not batch.dropped.any()
    assert torch.equal(batch.concat_lr, upsample_full(batch.lr))  # exactly what inference uses
    assert make_batch(hr, torch.Generator().manual_seed(2), TrainSettings(crop=64, lr_dropout=1.0)).dropped.all()


def test_loss_finite_and_rope_origin(sampler):
    trainer = Trainer(CFG, SETTINGS)
    batch, noise = trainer.next_batch(sampler)
    assert 0 <= min(noise.rope_origin) and max(noise.rope_origin) <= CFG.rope_table - 64 // CFG.patch_size
    for _ in range(2):
        r = trainer.step(sampler)
        assert np.isfinite(r.loss) and r.per_sample.shape == (2,)


def test_overfit_single_crop(sampler):
    torch.manual_seed(0)
    trainer = Trainer(CFG, TrainSettings(batch=2, crop=64, warmup=0, lr=3e-3, thumb_size=32,
                                         encoder_channels=(8, 16)))
    hr = sampler.sample(1, torch.Generator().manual_seed(5)).expand(2, -1, -1, -1).contiguous()
    batch = make_batch(hr, torch.Generator().manual_seed(6), TrainSettings(crop=64, lr_dropout=0.0))
    fixed = Noise(torch.tensor([0.3, 1.0]), torch.randn(hr.shape, generator=torch.Generator().manual_seed(7)),
                  (0, 0))

    def eval_loss() -> float:
        with torch.no_grad():
            return float(edm_loss(trainer.model, trainer.encoder, batch, fixed, thumb_size=32)[0])

    before = eval_loss()
    for step in range(20):
        trainer.train_step(batch, draw_noise(step_generator(0, step, "noise"), hr.shape, CFG, trainer.settings))
    after = eval_loss()
    assert after < 0.8 * before, (before, after)


def test_resume_is_bit_identical(sampler, tmp_path):
    straight = Trainer(CFG, SETTINGS)
    losses = [straight.step(sampler).loss for _ in range(5)]

    first = Trainer(CFG, SETTINGS)
    for _ in range(2):
        first.step(sampler)
    first.save_checkpoint(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "ema.safetensors", "encoder.safetensors", "model", "optimizer.safetensors", "train_state.json"]
    resumed = Trainer.from_checkpoint(tmp_path / "ckpt")
    assert resumed.step_count == 2
    assert [resumed.step(sampler).loss for _ in range(3)] == losses[2:]
    for a, b in ((straight.model, resumed.model), (straight.encoder, resumed.encoder)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    assert all(torch.equal(straight.ema[k], resumed.ema[k]) for k in straight.ema)


def test_export_loads_as_model_dir(sampler, tmp_path):
    trainer = Trainer(CFG, SETTINGS)
    trainer.step(sampler)
    out = trainer.export(tmp_path / "model")
    model = load_model(out)
    ema_model, _ = trainer.ema_modules()
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), ema_model.state_dict().values()))
    spec = json.loads((out / "semantic_encoder.json").read_text())
    assert spec == {"kind": "learned", "weights": "semantic_encoder.safetensors", "embed_dim": 16,
                    "thumb_size": 32, "channels": [8, 16]}
    lr = torch.rand(1, 3, 40, 56) * 2 - 1
    vec = semantic.semantic_vector(out, CFG.vector_dim, lr)
    assert vec.shape == (1, 16) and abs(float(vec.norm()) - 1) < 1e-5
    # a square LR: inference's thumbnail equals training's F.interpolate thumbnail, so the vectors agree
    square = torch.rand(1, 3, 48, 48) * 2 - 1
    _, ema_encoder = trainer.ema_modules()
    with torch.no_grad():
        want = ema_encoder(train_thumbnail(square, 32))
    assert torch.allclose(semantic.semantic_vector(out, CFG.vector_dim, square), want, atol=1e-5)
    with pytest.raises(BadInput, match="text"):
        semantic.semantic_vector(out, CFG.vector_dim, lr, prompt_pos="sharp")
    with pytest.raises(BadInput, match="vector_dim"):
        semantic.read_spec(out, 8)


def test_learned_spec_validation(tmp_path):
    net = SemanticNet(16, (8, 16))
    save_encoder(net, tmp_path, thumb_size=32)
    spec = semantic.read_spec(tmp_path, 16)
    assert spec.kind == "learned" and spec.model == {"thumb_size": 32, "channels": [8, 16]}
    semantic.write_spec(tmp_path, spec)  # SemanticSpec.to_dict's shape reads back too
    assert semantic.read_spec(tmp_path, 16) == spec
    (tmp_path / "semantic_encoder.json").write_text(json.dumps(
        {"kind": "learned", "weights": "semantic_encoder.safetensors", "embed_dim": 16, "thumb_size": 32,
         "channels": [8, 32]}))
    with pytest.raises(BadInput, match="does not fit"):
        semantic.load_encoder(tmp_path, semantic.read_spec(tmp_path, 16))


def test_default_config_loads():
    cfg = ModelConfig.from_dict(json.loads((REPO / "configs" / "default-model.json").read_text()))
    # the recipe's config is the shipped default model's: patch 4 (one token per LR pixel), residual mode
    assert (cfg.block_size, cfg.patch_size, cfg.parametrisation) == (64, 4, "residual")
    assert cfg == read_model_config(REPO / "streamsr" / "models" / "default")
    TrainSettings().check(cfg)


def test_clean_fraction_gives_the_benchmark_lr(sampler):
    """clean_fraction = 1: every LR is exactly bicubic x4 down + 8-bit (the clean evaluation LR)."""
    hr = sampler.sample(3, torch.Generator().manual_seed(0))
    clean = degrade(hr, torch.Generator().manual_seed(7), TrainSettings(crop=64, clean_fraction=1.0))
    assert torch.equal(clean, quantise_8bit(downsample_x4(hr)))
    mixed = degrade(hr, torch.Generator().manual_seed(7), TrainSettings(crop=64, clean_fraction=0.0))
    assert not torch.equal(mixed, clean)
    # the default recipe draws nothing extra: old runs keep their random stream
    assert torch.equal(mixed, degrade(hr, torch.Generator().manual_seed(7), TrainSettings(crop=64)))


def test_fidelity_fraction_sets_sigma():
    shape = (4000, 3, 8, 8)
    st = TrainSettings(crop=64, fidelity_fraction=0.5, fidelity_sigma=1.5)
    noise = draw_noise(torch.Generator().manual_seed(0), shape, CFG, st)
    at = noise.sigma == 1.5
    assert abs(at.float().mean().item() - 0.5) < 0.04
    plain = draw_noise(torch.Generator().manual_seed(0), shape, CFG, TrainSettings(crop=64))
    assert torch.equal(noise.sigma[~at], plain.sigma[~at]) and torch.equal(noise.eps, plain.eps)
    with pytest.raises(ValueError, match="fidelity_sigma"):
        TrainSettings(fidelity_fraction=0.5)


def test_learning_rate_schedule_warmup_stable_decay():
    st = TrainSettings(lr=1e-3, warmup=10, decay_start=100, decay_end=200)
    assert learning_rate(0, st) == pytest.approx(1e-4)
    assert learning_rate(50, st) == learning_rate(99, st) == 1e-3
    assert learning_rate(150, st) == pytest.approx(5e-4)
    assert learning_rate(200, st) == learning_rate(500, st) == 0.0
    lrs = [learning_rate(t, st) for t in range(100, 201)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert learning_rate(10 ** 6, TrainSettings(lr=1e-3, warmup=10)) == 1e-3  # no decay by default
    with pytest.raises(ValueError, match="decay"):
        TrainSettings(warmup=10, decay_start=5, decay_end=20)


def test_residual_model_trains_from_bicubic(sampler):
    """A fresh residual model is exactly bicubic at the fidelity point, and a few steps lower its loss."""
    cfg = ModelConfig.tiny(vector_dim=16, parametrisation="residual", sigma_data=0.05)
    st = TrainSettings(batch=2, crop=64, warmup=0, lr=3e-3, thumb_size=32, encoder_channels=(8, 16),
                       lr_dropout=0.0, clean_fraction=0.5, fidelity_fraction=0.5, fidelity_sigma=1.0)
    trainer = Trainer(cfg, st)
    hr = sampler.sample(1, torch.Generator().manual_seed(5)).expand(2, -1, -1, -1).contiguous()
    batch = make_batch(hr, torch.Generator().manual_seed(6), st)
    fixed = Noise(torch.tensor([1.0, 1.0]), torch.zeros(hr.shape), (0, 0))
    with torch.no_grad():
        d = denoise_full(trainer.model, batch.concat_lr, fixed.sigma, concat_lr=batch.concat_lr, lr=batch.lr,
                         vector=trainer.encoder(train_thumbnail(batch.lr, 32)))
    assert torch.equal(d, batch.concat_lr)  # F = 0 at init: D(up) = up(LR), i.e. bicubic

    def eval_loss() -> float:
        with torch.no_grad():
            return float(edm_loss(trainer.model, trainer.encoder, batch, fixed, thumb_size=32)[0])

    before = eval_loss()
    for step in range(20):
        trainer.train_step(batch, draw_noise(step_generator(0, step, "noise"), hr.shape, cfg, st))
    assert eval_loss() < 0.8 * before


def test_scales_share_the_crops_equally(image_dir):
    """With scales, each scale of the dataset is one group that gets the same share of the crops."""
    paths = list_images(image_dir)
    plain = CropSampler.from_paths(paths, 32)
    multi = CropSampler.from_paths(paths, 32, 0, scales=(64,))
    assert len(multi.images) == 2 * len(plain.images)
    assert max(max(im.shape[:2]) for im in multi.images[len(plain.images):]) <= 64
    w = multi.weights / multi.weights.sum()
    assert float(w[:len(plain.images)].sum()) == pytest.approx(0.5)
    assert torch.equal(CropSampler.from_paths(paths, 32, 0, scales=()).weights, plain.weights)
    with pytest.raises(ValueError, match="scales"):
        TrainSettings(scales=(0,))


def test_seam_error_counts_only_the_pairs_across_inner_block_borders():
    """A step placed at a block border costs (jump)^2 over the border pairs; steps elsewhere cost nothing."""
    x = torch.zeros(2, 3, 64, 96)  # 2x3 blocks of 32 px
    d = x.clone()
    d[..., 40:] += 1.0  # a jump inside a block: no border pair straddles it
    d[..., 10:, :] += 1.0  # a jump at row 10: inside a block too
    assert torch.equal(seam_error(d, x, block_size=32), torch.zeros(2))
    d = x.clone()
    d[0, :, :, 64:] += 0.5  # a jump of 0.5 across the column border at 64 (borders at 32 and 64; row border 32)
    pairs = 2 * 64 + 96  # two column borders of 64 rows, one row border of 96 columns
    expected = torch.tensor([0.25 * 64 / pairs, 0.0])  # only 64 of the pairs see the jump
    assert torch.allclose(seam_error(d, x, block_size=32), expected)
    one_block = torch.ones(1, 3, 32, 32)
    assert torch.equal(seam_error(one_block, one_block * 0, block_size=32), torch.zeros(1))


def test_seam_weight_adds_the_weighted_border_term(sampler):
    trainer = Trainer(CFG, SETTINGS)
    batch, noise = trainer.next_batch(sampler)
    with torch.no_grad():
        base, per = edm_loss(trainer.model, trainer.encoder, batch, noise, thumb_size=32)
        with_seam, per_seam = edm_loss(trainer.model, trainer.encoder, batch, noise, thumb_size=32, seam_weight=2.0)
        d = denoise_full(trainer.model, batch.x + noise.sigma[:, None, None, None] * noise.eps, noise.sigma,
                         concat_lr=batch.concat_lr, lr=batch.lr,
                         vector=trainer.encoder(train_thumbnail(batch.lr, 32)), rope_origin=noise.rope_origin)
    w = (noise.sigma ** 2 + CFG.sigma_data ** 2) / (noise.sigma * CFG.sigma_data) ** 2
    assert torch.allclose(per_seam - per, 2.0 * w * seam_error(d, batch.x, block_size=CFG.block_size), rtol=1e-4)
    assert float(with_seam) > float(base)
    with pytest.raises(ValueError, match="seam_weight"):
        TrainSettings(seam_weight=-1.0)
