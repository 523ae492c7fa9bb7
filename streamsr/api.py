"""The public Python API: load_model (weights.py's), denoise, sample. Tensors are NCHW in [-1, 1].

denoise runs one denoiser call D(x; sigma) either as the full-image reference (core/denoiser.py) or
streamed by block batches (stream/engine.py); sample runs the EDM sampler over it in memory.
"""

from __future__ import annotations

from pathlib import Path

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

__all__ = ["MODES", "StreamSRPipeline", "denoise", "load_model", "sample", "upscale_image", "upsample_full"]

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


# ----------------------------------------------------------------------------- images in, images out


def _job_config(model_dir, *, mode, steps, seed, device, dtype, batch, vram, ram):
    """JobConfig from the model dir's recommended settings (mode) and the given overrides."""
    from .config import JobConfig
    from .weights import model_defaults

    settings = model_defaults(model_dir, mode)
    if steps is not None:
        settings["steps"] = int(steps)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, cols = batch or (1, 1)
    return JobConfig(**settings, seed=int(seed), batch_rows=rows, batch_cols=cols, device=device, dtype=dtype,
                     vram=vram or 0, ram=ram or 0)


def _save_input(image, folder) -> "Path":
    """A path for `image`: a path as given; a PIL image or an (H, W[, C]) uint8|uint16 array saved losslessly."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    if isinstance(image, (str, Path)):
        return Path(image)
    if isinstance(image, Image.Image):
        path = Path(folder) / "input.png"
        image.save(path, icc_profile=image.info.get("icc_profile"), exif=image.info.get("exif", b""))
        return path
    array = np.asarray(image)
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3):
        raise ValueError(f"image must be a path, a PIL image or an (H, W[, C]) uint8/uint16 array, "
                         f"got {array.dtype} {array.shape}")
    import tifffile

    path = Path(folder) / "input.tif"
    tifffile.imwrite(path, array, photometric="rgb" if array.ndim == 3 and array.shape[2] >= 3 else "minisblack")
    return path


def upscale_image(image, *, model=None, output=None, scale: int = 4, mode: str | None = None,
                  steps: int | None = None, seed: int = 0, device: str = "auto", dtype: str = "fp32",
                  batch: tuple[int, int] | None = None, vram: int | None = None, ram: int | None = None,
                  callback=None):
    """Upscale a PIL image, a numpy array or an image path x4 (or x16) with the streamed job engine.

    The same computation as `streamsr upscale` (a temporary job dir, removed at the end): the pixels equal
    the CLI's for the same settings. model: a model dir (default: the shipped model); mode: "fidelity" or
    "detail" (the model's recommended settings); callback(tasks_done, total_tasks, label) after every task.
    Returns the output as a PIL image, or, with `output` (any suffix `streamsr upscale` writes), its path.
    """
    import tempfile
    from pathlib import Path

    from PIL import Image

    from .jobs.create import resolve_model_dir
    from .jobs.flows import upscale

    model_dir = resolve_model_dir(model)
    cfg = _job_config(model_dir, mode=mode, steps=steps, seed=seed, device=device, dtype=dtype, batch=batch,
                      vram=vram, ram=ram)
    with tempfile.TemporaryDirectory(prefix="streamsr-api-") as tmp:
        source = _save_input(image, tmp)
        target = Path(output) if output is not None else Path(tmp) / "output.png"
        upscale(source, target, model_dir=model_dir, cfg=cfg, scale=scale, progress=callback or False,
                auto_batch=batch is None, auto_placement=True)
        if output is not None:
            return target
        with Image.open(target) as im:
            im.load()
            return im


class StreamSRPipeline:
    """A diffusers-style pipeline over `upscale_image`: from_pretrained(model_dir), .to(device),
    __call__(image=..., num_inference_steps=..., generator=..., output_type="pil"), a tqdm progress bar."""

    def __init__(self, model_dir=None, *, device: str = "auto", dtype: str = "fp32"):
        from .jobs.create import resolve_model_dir

        self.model_dir, self.device, self.dtype = resolve_model_dir(model_dir), device, dtype

    @classmethod
    def from_pretrained(cls, model_dir=None, *, torch_dtype=None, **_ignored) -> "StreamSRPipeline":
        return cls(model_dir, dtype="bf16" if torch_dtype is torch.bfloat16 else "fp32")

    def to(self, device) -> "StreamSRPipeline":
        self.device = str(torch.device(device)) if device != "auto" else "auto"
        return self

    def __call__(self, image=None, *, num_inference_steps: int | None = None, generator=None, mode: str | None = None,
                 output_type: str = "pil", scale: int = 4, show_progress: bool = True):
        """output_type "pil" (a PIL image) or "np" (float32 (H, W, C) in [0, 1]); generator: a torch.Generator
        whose initial_seed() is the noise seed (noise is drawn per block, so the result is the CLI's)."""
        import numpy as np
        from tqdm.auto import tqdm  # installed with diffusers

        seed = generator.initial_seed() if generator is not None else 0
        bar = tqdm(total=None, disable=not show_progress, unit="task")

        def callback(done: int, total: int, label: str) -> None:
            bar.total = total
            bar.set_description(label)
            bar.update(done - bar.n)

        try:
            result = upscale_image(image, model=self.model_dir, scale=scale, mode=mode, steps=num_inference_steps,
                                   seed=seed, device=self.device, dtype=self.dtype, callback=callback)
        finally:
            bar.close()
        if output_type == "np":
            top = 65535.0 if result.mode.startswith("I") else 255.0
            return np.asarray(result, dtype=np.float32) / top
        return result
