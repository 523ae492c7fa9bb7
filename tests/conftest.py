"""Shared fixtures: the official reference kits and tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamsr.config import ModelConfig
from streamsr.core.model import InfDiT

# The tests run tiny tensors: one intra-op thread is many times faster than two fighting over 2 cores.
torch.set_num_threads(1)

KITS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "infdit"


def kit_dir(name: str) -> Path:
    path = KITS / name
    assert path.is_dir(), f"reference kit {path} is missing (../shared must sit beside the repo)"
    return path


def random_model(cfg: ModelConfig, seed: int = 0, std: float = 0.3) -> InfDiT:
    """A model with every parameter redrawn (the official zero-inits would hide most of the math)."""
    torch.manual_seed(seed)
    model = InfDiT.from_model_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def random_inputs(cfg: ModelConfig, rows: int, cols: int, batch: int = 1, seed: int = 1):
    """(x, lr, vector) for a rows x cols grid: x (B, 3, H, W), lr (B, 3, H/4, W/4) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    h, w = rows * cfg.block_size, cols * cfg.block_size
    x = torch.randn(batch, 3, h, w, generator=g)
    lr = torch.rand(batch, 3, h // 4, w // 4, generator=g) * 2 - 1
    vector = torch.randn(batch, cfg.vector_dim, generator=g) if cfg.vector_dim else None
    return x, lr, vector


@pytest.fixture(scope="session")
def tiny_model() -> InfDiT:
    return random_model(ModelConfig.tiny())
