"""Shared fixtures: the official reference kits and tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamsr.config import ModelConfig
from streamsr.core.model import InfDiT
from tools.harness import random_inputs, random_model  # noqa: F401  (shared with the benchmarks)

# The tests run tiny tensors: one intra-op thread is many times faster than two fighting over 2 cores.
torch.set_num_threads(1)

KITS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "infdit"


def kit_dir(name: str) -> Path:
    path = KITS / name
    assert path.is_dir(), f"reference kit {path} is missing (../shared must sit beside the repo)"
    return path


@pytest.fixture(scope="session")
def tiny_model() -> InfDiT:
    return random_model(ModelConfig.tiny())


def tiny_model_and_image(root: Path, *, height: int, width: int, seed: int) -> Path:
    """A tiny random model dir (root/model, no semantic vector) and a random 8-bit RGB image (root/in.png)
    of height x width LR pixels; returns root."""
    import numpy as np
    from PIL import Image

    random_model(ModelConfig.tiny(vector_dim=0), std=0.1).save_pretrained(root / "model")
    img = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(root / "in.png")
    return root


def finished_job(root: Path, *, steps: int = 2) -> Path:
    """Run `upscale` on root/in.png with root/model into root/job (euler, `steps` steps): root/out.png."""
    from streamsr.cli import main

    assert main(["upscale", str(root / "in.png"), "-o", str(root / "out.png"), "--model", str(root / "model"),
                 "--job", str(root / "job"), "--steps", str(steps), "--sampler", "euler", "-q"]) == 0
    return root
