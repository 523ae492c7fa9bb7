"""streamsr: Inf-DiT-style block-streaming diffusion upsampling inside a fixed memory budget.

Public API (imported lazily so that `streamsr --help` stays fast): upscale_image and StreamSRPipeline
(images in, images out), load_model, denoise, sample (tensors), ModelConfig, InfDiT.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["upscale_image", "StreamSRPipeline", "load_model", "denoise", "sample", "ModelConfig", "InfDiT"]


def __getattr__(name: str):
    if name in ("load_model", "denoise", "sample", "upscale_image", "StreamSRPipeline"):
        from . import api

        return getattr(api, name)
    if name == "ModelConfig":
        from .config import ModelConfig

        return ModelConfig
    if name == "InfDiT":
        from .core.model import InfDiT

        return InfDiT
    raise AttributeError(f"module 'streamsr' has no attribute {name!r}")
