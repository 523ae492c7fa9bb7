"""The contract (DESIGN.md section 1): streamed inference equals the full-image computation."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import random_inputs, random_model

from streamsr import api
from streamsr.config import ModelConfig
from streamsr.core.attention import attend_reference, backend_available, get_kernel
from streamsr.core.resample import upsample_full
from streamsr.stream.engine import SweepStats
from streamsr.stream.planner import BatchShape, Grid, frontier_bound

STREAM_TOL = 1e-5  # fp32 round-off on the tiny configs

CONFIGS = {
    "tiny": ModelConfig.tiny(),
    "no-vector-fixed-knorm": ModelConfig.tiny(vector_dim=0, k_uses_q_norm=False, heads=4, hidden=32,
                                              block_size=16, patch_size=4, lr_patch=1, rope_table=8),
    "wide-patch": ModelConfig.tiny(block_size=48, patch_size=12, hidden=24, heads=1, layers=3, lr_patch=3,
                                   rope_table=5),
    # streamsr's own parametrisation: D denoises HR - up(LR) around the upsampled LR (DESIGN.md)
    "residual": ModelConfig.tiny(parametrisation="residual", sigma_data=0.07, block_size=16, patch_size=4,
                                 lr_patch=1, heads=4, rope_table=6),
}
GRIDS = [(r, c) for r in range(1, 5) for c in range(1, 6)]  # every grid from 1x1 to 4x5


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return random_model(CONFIGS[request.param], seed=len(request.param))


@pytest.mark.parametrize("rows,cols", GRIDS)
def test_stream_equals_full_every_grid_and_batch(model, rows, cols):
    cfg = model.cfg
    x, lr, vector = random_inputs(cfg, rows, cols, seed=rows * 10 + cols)
    up = upsample_full(lr)
    full = api.denoise(model, x, 1.3, lr=lr, vector=vector, concat_lr=up, mode="full", backend="reference")
    for bh, bw in itertools.product(range(1, rows + 1), range(1, cols + 1)):
        stats = SweepStats()
        streamed = api.denoise(model, x, 1.3, lr=lr, vector=vector, mode="stream", batch=(bh, bw),
                               backend="reference", stats=stats)  # concat_lr made per batch with a halo
        err = (streamed - full).abs().max().item()
        assert err <= STREAM_TOL, f"grid {rows}x{cols} batch {bh}x{bw}: max diff {err}"
        bound = frontier_bound(Grid(rows, cols), BatchShape(bh, bw))
        assert stats.frontier_peak_blocks <= bound, f"frontier held {stats.frontier_peak_blocks} > {bound} blocks"


def test_frontier_peak_bytes_follow_the_formula(tiny_model):
    """Peak frontier bytes = (blocks per row + batch height) slots at most (DESIGN.md section 3)."""
    cfg = tiny_model.cfg
    rows, cols = 3, 5
    x, lr, vector = random_inputs(cfg, rows, cols)
    slot = 2 * cfg.layers * cfg.block_tokens * cfg.hidden * 4  # K and V, every layer, fp32
    for bh, bw in [(1, 1), (1, 2), (2, 2), (3, 1)]:
        stats = SweepStats()
        api.denoise(tiny_model, x, 0.7, lr=lr, vector=vector, mode="stream", batch=(bh, bw), stats=stats)
        assert stats.frontier_peak_bytes <= (cols + bh) * slot
        assert stats.frontier_peak_bytes == stats.frontier_peak_blocks * slot
        assert stats.frontier_peak_blocks >= min(cols, 2)  # it really holds a row's worth of K/V


def test_batched_images(tiny_model):
    """Two images at different sigmas in one call: each equals its own full-image result."""
    cfg = tiny_model.cfg
    x, lr, vector = random_inputs(cfg, 2, 3, batch=2)
    sigma = torch.tensor([0.5, 8.0])
    full = api.denoise(tiny_model, x, sigma, lr=lr, vector=vector, mode="full", backend="reference")
    streamed = api.denoise(tiny_model, x, sigma, lr=lr, vector=vector, mode="stream", batch=(1, 2))
    assert (full - streamed).abs().max() <= STREAM_TOL
    for i in range(2):
        one = api.denoise(tiny_model, x[i:i + 1], sigma[i], lr=lr[i:i + 1], vector=vector[i:i + 1], mode="full")
        assert (one - full[i:i + 1]).abs().max() <= STREAM_TOL


@pytest.mark.parametrize("backend", ["sdpa", "xformers"])
def test_attention_backends_match_reference(backend):
    if not backend_available(backend, "cpu"):
        assert backend == "xformers"  # CUDA-only kernels: checked by one real call, not by import
        with pytest.raises(Exception):
            get_kernel(backend)(*(torch.zeros(1, 4, 1, 8),) * 3)
        return
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, 2, 16, generator=g) for n in (5, 20, 20))
    assert (get_kernel(backend)(q, k, v) - attend_reference(q, k, v)).abs().max() <= 1e-5


def test_sdpa_stream_equals_reference_full(tiny_model):
    x, lr, vector = random_inputs(tiny_model.cfg, 3, 4)
    ref = api.denoise(tiny_model, x, 3.0, lr=lr, vector=vector, mode="full", backend="reference")
    fast = api.denoise(tiny_model, x, 3.0, lr=lr, vector=vector, mode="stream", batch=(2, 2), backend="sdpa")
    assert (ref - fast).abs().max() <= STREAM_TOL


def test_bf16_stream_equals_bf16_full():
    """The bf16 fast path keeps the contract up to bf16 round-off, and stays near fp32."""
    model = random_model(ModelConfig.tiny(), std=0.1)
    x, lr, vector = random_inputs(model.cfg, 2, 3)
    fp32 = api.denoise(model, x, 2.0, lr=lr, vector=vector, mode="full")
    model_bf16 = random_model(ModelConfig.tiny(), std=0.1).to(torch.bfloat16)
    full = api.denoise(model_bf16, x, 2.0, lr=lr, vector=vector, mode="full")
    streamed = api.denoise(model_bf16, x, 2.0, lr=lr, vector=vector, mode="stream", batch=(1, 2))
    assert (full - streamed).abs().max() <= 0.05
    assert (full - fp32).abs().max() <= 0.15


def test_rope_positions_wrap_modulo_table():
    """Blocks whose global patch positions are equal modulo the RoPE table see the same rotation."""
    from streamsr.core.rope import block_angles

    cfg = ModelConfig.tiny(rope_table=8, block_size=32, patch_size=8)  # 4 tokens per side: block 2 wraps
    a = block_angles(torch.tensor([0, 2]), torch.tensor([0, 2]), cfg.block_tokens_side, cfg.head_dim, 8)
    assert torch.equal(a[0], a[1])
    b = block_angles(torch.tensor([0, 1]), torch.tensor([0, 0]), cfg.block_tokens_side, cfg.head_dim, 8)
    assert not torch.equal(b[0], b[1])


def test_gather_only_reads_the_frontier(tiny_model, monkeypatch):
    """The model's per-layer gather reads the frontier; the engine alone puts and drops, after each layer."""
    from streamsr.stream import engine

    layers: list[int] = []
    pure_gather = engine.pool_gather

    def checked_gather(frontier, reads, slots):
        gather = pure_gather(frontier, reads, slots)

        def spy(layer, k, v):
            before = (frontier.blocks(), len(frontier), frontier.held_bytes)
            out = gather(layer, k, v)
            assert (frontier.blocks(), len(frontier), frontier.held_bytes) == before
            layers.append(layer)
            return out

        return spy

    monkeypatch.setattr(engine, "pool_gather", checked_gather)
    x, lr, vector = random_inputs(tiny_model.cfg, 2, 3)
    full = api.denoise(tiny_model, x, 0.9, lr=lr, vector=vector, mode="full")
    streamed = api.denoise(tiny_model, x, 0.9, lr=lr, vector=vector, mode="stream", batch=(1, 2))
    assert (streamed - full).abs().max() <= STREAM_TOL
    assert layers == list(range(tiny_model.cfg.layers)) * 4  # 4 batches, every layer once each
