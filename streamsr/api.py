"""The public Python API: load_model (weights.py's), denoise, sample. Tensors are NCHW in [-1, 1].

denoise runs one denoiser call D(x; sigma) either as the full-image reference (core/denoiser.py) or
streamed by block batches (stream/engine.py); sample runs the EDM sampler over it in memory.
"""

from __future__ import annotations

import torch

from .core.denoiser import denoise_full
from .core.grid import Grid
from .core.model import InfDiT
from .core.noise import image_noise
from .core.resample import upsample_full
from .core.sampler import SIGMA_MAX, SIGMA_MIN, karras_sigmas, lr_noise_init, sample_loop
from .stream.engine import SweepStats, denoise_stream
from .stream.planner import BatchShape
from .weights import load_model  # noqa: F401  (re-exported: the public API)

__all__ = ["MODES", "denoise", "load_model", "sample", "upsample_full"]

MODES = ("full", "stream")


def _batch_shape(batch) -> BatchShape:
    return batch if isinstance(batch, BatchShape) else BatchShape(*batch)


@torch.no_grad()
def denoise(model: InfDiT, x: torch.Tensor, sigma, *, lr: torch.Tensor, vector: torch.Tensor | None,
            concat_lr: torch.Tensor | None = None, mode: str = "full", batch=(1, 1), backend: str = "sdpa",
            stats: SweepStats | None = None, placement: str = "device", spill_dir=None) -> torch.Tensor:
    """One denoiser call D(x; sigma) (B, 3, H, W) float32, full-image or streamed by block batches.

    x: noisy HR (B, 3, H, W); lr: LR (B, 3, H/4, W/4); vector: (B, V) or None for a model without one;
    concat_lr: the upsampled LR, computed from lr (antialiased bicubic, per block in stream mode) if None.
    placement: where a streamed sweep keeps its K/V frontier ("device", "host", or "disk" under spill_dir).
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
    if mode == "full":
        up = upsample_full(lr).to(x.device) if concat_lr is None else concat_lr
        return denoise_full(model, x, sigma, concat_lr=up, lr=lr, vector=vector, backend=backend)
    if mode == "stream":
        return denoise_stream(model, x, sigma, lr=lr, vector=vector, concat_lr=concat_lr, shape=_batch_shape(batch),
                              backend=backend, stats=stats, placement=placement, spill_dir=spill_dir)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


@torch.no_grad()
def sample(model: InfDiT, lr: torch.Tensor, *, vector: torch.Tensor | None, steps: int = 20,
           sampler: str = "heun", init_noise: torch.Tensor | None = None, seed: int = 0, mode: str = "full",
           batch=(1, 1), backend: str = "sdpa", sigma_min: float = SIGMA_MIN,
           sigma_max: float = SIGMA_MAX, noise_init: bool = True) -> torch.Tensor:
    """EDM sampling of the x4 image of `lr` (B, 3, h, w) in memory: (B, 3, 4h, 4w) float32, unclamped.

    x_T = up(LR) + sigma_max * eps, with eps = init_noise if given (parity with the official kits),
    else drawn per block from (seed, block), so it does not depend on the batch shape or order; with
    noise_init=False, x_T = up(LR) (a residual model's deterministic fidelity estimate).
    """
    up = upsample_full(lr)  # (B, 3, 4h, 4w)
    if init_noise is None:
        grid = Grid.for_image(up.shape[-2], up.shape[-1], model.cfg.block_size)
        init_noise = image_noise(seed, grid.rows, grid.cols, model.cfg.block_size, batch=up.shape[0])
    sigmas = karras_sigmas(steps, sigma_min, sigma_max)
    x = lr_noise_init(up, init_noise.to(up), float(sigmas[0])) if noise_init else up

    def call(x_t: torch.Tensor, sigma: float) -> torch.Tensor:
        return denoise(model, x_t, sigma, lr=lr, vector=vector, concat_lr=up, mode=mode, batch=batch,
                       backend=backend)

    return sample_loop(call, x, sigmas, sampler)
