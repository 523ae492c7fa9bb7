"""Training recipe, as pure functions (FACTS.md section 3): settings, data, degradation, noise draws, EDM loss.

The recipe, step by step:

1. Data (`list_images`, `CropSampler`): images (JPEG/PNG) held in memory as uint8; random `crop` px
   crops (a multiple of block_size), random horizontal flips -> x (B, 3, crop, crop) in [-1, 1].
2. Degradation (`degrade`): per sample, Gaussian blur (sigma ~ U[0.2, 1.0] HR px), antialiased bicubic
   x4 down, Gaussian noise (sigma ~ U[0, 0.02]), JPEG round trip (quality ~ U{70..95}, Pillow in
   memory) -> lr (B, 3, crop/4, crop/4) in [-1, 1]. A milder stand-in for Real-ESRGAN's second-order
   degradation. concat_lr = `core.resample.upsample_full(lr)`, exactly what inference uses.
3. LR dropout (`lr_dropout`, p = 0.07): both lr and concat_lr of a sample become clamp(randn, -1, 1).
4. Semantic vector (`train_thumbnail` + semantic.learned.SemanticNet): the learned encoder on a thumbnail
   of the (degraded, possibly dropped) LR, gradients flowing into the encoder. Training resizes the
   small square LR crop with F.interpolate(bicubic, antialias) to thumb_size; inference uses
   `semantic.thumbnail` (shorter side -> thumb_size, centre crop, streamed), which agrees on square
   inputs. Like the official CLIP-of-the-LR-crop, training sees local crops, inference whole images.
5. EDM loss (`draw_noise`, `edm_loss`): sigma = exp(N(P_mean=-1.0, P_std=1.4)) clipped >= 1e-3,
   x_noisy = x + sigma eps, D = denoiser.denoise_full(model, x_noisy, sigma, ...) with the RoPE
   origin drawn per batch in [0, rope_table - crop/patch] for rows and cols (FACTS.md 1.2),
   weight (sigma^2 + sd^2) / (sigma sd)^2, loss = mean(weight (D - x)^2).
6. Seam term (`seam_error`, weight `seam_weight`, 0: off): the same weight times the mean squared error
   of D's pixel differences across the crop's inner block borders (against x's). A 2x2-block crop has
   1 pixel pair across a border per 64 pixels, so the per-pixel loss barely sees faint block borders.

Determinism by construction: step t's randomness comes from two generators seeded by (seed, t)
(`step_generator`): "data" (crops, degradation, dropout) and "noise" (sigma, eps, RoPE origin), so a
resumed run draws exactly what an uninterrupted one would. The optimisation loop is trainer.py's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import ModelConfig, known_fields
from ..core.denoiser import denoise_full
from ..core.model import InfDiT
from ..core.resample import upsample_full
from ..errors import BadInput
from ..semantic.learned import CHANNELS, THUMB_SIZE, SemanticNet

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


# ---- settings ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSettings:
    """Everything that changes the trained weights (besides the ModelConfig and the data)."""

    batch: int = 8  # crops per step
    crop: int = 256  # HR crop side, a multiple of block_size
    seed: int = 0  # model init and the per-step random streams
    lr: float = 2e-4  # AdamW peak learning rate
    warmup: int = 100  # linear learning-rate warmup steps (0: none)
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0  # max global grad norm (model + encoder)
    ema_decay: float = 0.999
    p_mean: float = -1.0  # log-normal sigma distribution (EDM P_mean, P_std)
    p_std: float = 1.4
    sigma_floor: float = 1e-3  # sigma clipped below
    lr_dropout: float = 0.07  # probability of replacing both LR inputs by clamp(randn)
    blur_sigma: tuple[float, float] = (0.2, 1.0)  # Gaussian blur sigma range (HR px)
    noise_sigma: tuple[float, float] = (0.0, 0.02)  # additive Gaussian noise range (LR, [-1, 1] units)
    jpeg_quality: tuple[int, int] = (70, 95)  # JPEG quality range (inclusive)
    thumb_size: int = THUMB_SIZE  # learned encoder thumbnail side
    encoder_channels: tuple[int, ...] = CHANNELS  # learned encoder conv widths
    max_side: int = 0  # images are downscaled (Lanczos) so their longer side is <= this (0: keep)
    scales: tuple[int, ...] = ()  # the images are also loaded with longer side <= each of these (equal shares)
    clean_fraction: float = 0.0  # share of samples whose LR is clean: bicubic x4 down, 8-bit, nothing else
    fidelity_fraction: float = 0.0  # share of samples trained at the fidelity point: x = up(LR), sigma = fidelity_sigma
    fidelity_sigma: float = 0.0  # sigma of those samples (> 0 when fidelity_fraction > 0)
    decay_start: int = 0  # cosine learning-rate decay from this step ... (0: constant after warmup)
    decay_end: int = 0  # ... to zero at this step (warmup-stable-decay, so a run can be extended until decay_start)
    seam_weight: float = 0.0  # weight of the block-border gradient term (seam_error) next to the per-pixel loss

    def __post_init__(self) -> None:
        for name in ("batch", "crop", "thumb_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TrainSettings.{name} must be a positive integer, got {value!r}")
        if any(not isinstance(v, int) or v <= 0 for v in self.scales):
            raise ValueError(f"TrainSettings.scales must be positive sizes, got {self.scales!r}")
        if self.seed < 0 or self.warmup < 0 or self.max_side < 0:
            raise ValueError("TrainSettings.seed, warmup and max_side must be >= 0")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.grad_clip > 0 and 0 <= self.ema_decay < 1):
            raise ValueError("need lr > 0, weight_decay >= 0, grad_clip > 0 and 0 <= ema_decay < 1")
        if not (0 <= self.clean_fraction <= 1 and 0 <= self.fidelity_fraction <= 1):
            raise ValueError("TrainSettings.clean_fraction and fidelity_fraction must be in [0, 1]")
        if self.fidelity_fraction and not self.fidelity_sigma > 0:
            raise ValueError("TrainSettings.fidelity_sigma must be > 0 when fidelity_fraction > 0")
        if self.decay_end and not self.warmup <= self.decay_start < self.decay_end:
            raise ValueError("need warmup <= decay_start < decay_end for the learning-rate decay")
        if not (math.isfinite(self.seam_weight) and self.seam_weight >= 0):
            raise ValueError(f"TrainSettings.seam_weight must be a finite number >= 0, got {self.seam_weight!r}")
        if not 0 <= self.lr_dropout <= 1:
            raise ValueError(f"TrainSettings.lr_dropout must be in [0, 1], got {self.lr_dropout}")
        if not (0 < self.blur_sigma[0] <= self.blur_sigma[1] and 0 <= self.noise_sigma[0] <= self.noise_sigma[1]
                and 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100):
            raise ValueError("bad degradation ranges (blur_sigma, noise_sigma, jpeg_quality)")

    def check(self, cfg: ModelConfig) -> None:
        """Raise ValueError when the settings do not fit the model."""
        if self.crop % cfg.block_size:
            raise ValueError(f"crop {self.crop} must be a multiple of the model's block_size {cfg.block_size}")
        if self.crop // cfg.patch_size > cfg.rope_table:
            raise ValueError(f"crop {self.crop} spans more than rope_table={cfg.rope_table} patches")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSettings":
        data = known_fields(cls, data)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def step_generator(seed: int, step: int, stream: str) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, step, stream): the randomness of one step."""
    digest = hashlib.sha256(f"streamsr-train:{seed}:{step}:{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))


def uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    """(n,) float32 uniform in [lo, hi)."""
    return lo + (hi - lo) * torch.rand(n, generator=gen)


# ---- data ----------------------------------------------------------------------------------------------
def _json_entries(path: Path) -> list[Path]:
    """Image paths of split "train" in a JSON list file (entries {"path"|"file": ..., "split": ...})."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"cannot read the data list {path}: {exc}") from None
    if isinstance(data, dict):
        data = data.get("images", data.get("files"))
    if not isinstance(data, list):
        raise BadInput(f"{path}: expected a JSON list of {{\"path\", \"split\"}} objects (or {{\"images\": [...]}})")
    out = []
    for i, entry in enumerate(data):
        name = entry.get("path", entry.get("file")) if isinstance(entry, dict) else None
        if not isinstance(name, str) or "split" not in entry:
            raise BadInput(f"{path}: entry {i} must be an object with a 'path' and a 'split', got {entry!r}")
        if entry["split"] == "train":
            p = Path(name)
            out.append(p if p.is_absolute() else path.parent / p)
    return out


def list_images(data: str | Path) -> list[Path]:
    """Training images: every JPEG/PNG under a directory (recursive, sorted), or the split-"train"
    entries of a JSON list file (relative paths are relative to the file); duplicates (the same file
    reached through symlinks) are kept once."""
    data = Path(data)
    if data.is_dir():
        paths = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    elif data.is_file():
        paths = _json_entries(data)
    else:
        raise BadInput(f"training data {data} is neither a directory nor a JSON list file")
    unique: dict[str, Path] = {}
    for p in paths:  # symlinks to one file (wallpaper packages ship many) count once
        unique.setdefault(os.path.realpath(p), p)
    if not unique:
        raise BadInput(f"no training images (JPEG/PNG, split 'train') found in {data}")
    return list(unique.values())


def load_image(path: Path, max_side: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB; downscaled (Lanczos) so that max(H, W) <= max_side when max_side > 0."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if max_side and max(im.size) > max_side:
                scale = max_side / max(im.size)
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                               Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.uint8).copy()
    except OSError as exc:
        raise BadInput(f"cannot read training image {path}: {exc}") from None


class CropSampler:
    """Images in memory as uint8; `sample` draws random crops with random horizontal flips.

    An image is chosen with probability proportional to its number of crop positions (so every
    position of the dataset is about equally likely); images smaller than the crop are skipped.
    """

    def __init__(self, images: Sequence[np.ndarray], crop: int, names: Sequence[str] | None = None,
                 groups: Sequence[int] | None = None):
        self.crop = crop
        keep = [i for i, im in enumerate(images) if im.shape[0] >= crop and im.shape[1] >= crop]
        self.skipped = [names[i] if names else str(i) for i in range(len(images)) if i not in set(keep)]
        self.images = [images[i] for i in keep]
        if not self.images:
            raise BadInput(f"no training image is at least {crop}x{crop} px")
        positions = torch.tensor([float((im.shape[0] - crop + 1) * (im.shape[1] - crop + 1))
                                  for im in self.images], dtype=torch.float64)  # (n_images,)
        if groups is not None:  # every group (one scale of the dataset) gets the same share of the crops
            group = torch.tensor([groups[i] for i in keep])  # (n_images,)
            totals = torch.zeros(int(group.max()) + 1, dtype=torch.float64).index_add_(0, group, positions)
            positions = positions / totals[group]
        self.weights = positions

    @classmethod
    def from_paths(cls, paths: Sequence[Path], crop: int, max_side: int = 0,
                   scales: Sequence[int] = ()) -> "CropSampler":
        """Every image at max_side, and again at each of `scales` (longer side <= that); with scales,
        each scale is one group that gets an equal share of the crops (fine and whole-scene textures)."""
        if not scales:
            return cls([load_image(p, max_side) for p in paths], crop, [str(p) for p in paths])
        images, names, groups = [], [], []
        for g, side in enumerate((max_side, *scales)):
            for p in paths:
                images.append(load_image(p, side))
                names.append(f"{p}@{side}")
                groups.append(g)
        return cls(images, crop, names, groups)

    def sample(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        """(B, 3, crop, crop) float32 in [-1, 1]."""
        c = self.crop
        which = torch.multinomial(self.weights, batch, replacement=True, generator=gen)  # (B,)
        out = torch.empty(batch, 3, c, c)
        for b, i in enumerate(which.tolist()):
            im = self.images[i]
            y = int(torch.randint(im.shape[0] - c + 1, (1,), generator=gen))
            x = int(torch.randint(im.shape[1] - c + 1, (1,), generator=gen))
            t = torch.from_numpy(im[y:y + c, x:x + c]).permute(2, 0, 1).float() / 127.5 - 1  # (3, c, c)
            out[b] = t.flip(-1) if bool(torch.rand(1, generator=gen) < 0.5) else t
        return out


# ---- degradation ---------------------------------------------------------------------------------------
def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma, reflect padding: x (B, C, H, W), sigma (B,)."""
    b, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)  # (K,)
    k = torch.exp(-t[None] ** 2 / (2 * sigma[:, None].float() ** 2))  # (B, K)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    y = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="reflect")  # (1, B*C, H+2r, W+2r)
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)  # (1, B*C, H+2r, W)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)  # (1, B*C, H, W)
    return y.reshape(b, c, h, w)


def downsample_x4(x: torch.Tensor) -> torch.Tensor:
    """Antialiased bicubic x4 down: (B, C, H, W) -> (B, C, H/4, W/4)."""
    return F.interpolate(x, size=(x.shape[-2] // 4, x.shape[-1] // 4), mode="bicubic", antialias=True,
                         align_corners=False)


def jpeg_roundtrip(x: torch.Tensor, quality: Sequence[int]) -> torch.Tensor:
    """Each image through an in-memory JPEG at its quality (Pillow): (B, 3, h, w) in [-1, 1] -> same, 8-bit."""
    out = torch.empty_like(x)
    for b, q in enumerate(quality):
        u8 = ((x[b] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # (h, w, 3)
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=int(q))
        buf.seek(0)
        with Image.open(buf) as im:
            dec = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())  # (h, w, 3)
        out[b] = dec.permute(2, 0, 1).float() / 127.5 - 1
    return out


def quantise_8bit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] values rounded to the 256 levels of an 8-bit file (as a saved LR image is)."""
    return ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def degrade(hr: torch.Tensor, gen: torch.Generator, settings: TrainSettings = TrainSettings()) -> torch.Tensor:
    """HR (B, 3, H, W) in [-1, 1] -> LR (B, 3, H/4, W/4) in [-1, 1]: blur, x4 down, noise, JPEG (per sample);
    a `clean_fraction` share of the samples is only x4 down and 8-bit (the clean bicubic benchmark LR)."""
    b = hr.shape[0]
    blur = uniform(gen, b, *settings.blur_sigma)  # (B,) HR px
    noise = uniform(gen, b, *settings.noise_sigma)  # (B,)
    quality = torch.randint(settings.jpeg_quality[0], settings.jpeg_quality[1] + 1, (b,), generator=gen)  # (B,)
    eps = torch.randn(b, 3, hr.shape[-2] // 4, hr.shape[-1] // 4, generator=gen)  # (B, 3, h, w)
    radius = max(1, math.ceil(3 * settings.blur_sigma[1]))
    lr = downsample_x4(gaussian_blur(hr.float(), blur, radius))  # (B, 3, h, w)
    lr = lr + noise[:, None, None, None] * eps
    lr = jpeg_roundtrip(lr, quality.tolist())
    if settings.clean_fraction:  # drawn last, so runs without clean samples keep their random stream
        clean = torch.rand(b, generator=gen) < settings.clean_fraction  # (B,)
        lr = torch.where(clean[:, None, None, None], quantise_8bit(downsample_x4(hr.float())), lr)
    return lr


def lr_dropout(lr: torch.Tensor, concat_lr: torch.Tensor, p: float, gen: torch.Generator):
    """Replace both LR inputs of a sample by clamp(randn, -1, 1) with probability p.

    lr (B, 3, h, w), concat_lr (B, 3, H, W) -> (lr, concat_lr, dropped (B,) bool).
    """
    b = lr.shape[0]
    dropped = torch.rand(b, generator=gen) < p  # (B,)
    noise_lr = torch.randn(lr.shape, generator=gen).clamp(-1, 1)
    noise_up = torch.randn(concat_lr.shape, generator=gen).clamp(-1, 1)
    m = dropped[:, None, None, None]
    return torch.where(m, noise_lr, lr), torch.where(m, noise_up, concat_lr), dropped


@dataclass(frozen=True)
class TrainBatch:
    x: torch.Tensor  # (B, 3, H, W) clean HR in [-1, 1]
    lr: torch.Tensor  # (B, 3, H/4, W/4)
    concat_lr: torch.Tensor  # (B, 3, H, W) = upsample_full(lr) (or noise where dropped)
    dropped: torch.Tensor  # (B,) bool: LR dropout applied

    def to(self, device) -> "TrainBatch":
        return TrainBatch(*(t.to(device, non_blocking=True) for t in (self.x, self.lr, self.concat_lr, self.dropped)))


def make_batch(hr: torch.Tensor, gen: torch.Generator, settings: TrainSettings = TrainSettings()) -> TrainBatch:
    """HR crops (B, 3, H, W) -> a training TrainBatch: degrade, upsample as at inference, LR dropout."""
    lr = degrade(hr, gen, settings)  # (B, 3, H/4, W/4)
    concat_lr = upsample_full(lr)  # (B, 3, H, W)
    lr, concat_lr, dropped = lr_dropout(lr, concat_lr, settings.lr_dropout, gen)
    return TrainBatch(hr, lr, concat_lr, dropped)


# ---- EDM loss ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Noise:
    sigma: torch.Tensor  # (B,)
    eps: torch.Tensor  # (B, 3, H, W)
    rope_origin: tuple[int, int]  # token offset (rows, cols), shared by the batch
    from_lr: torch.Tensor | None = None  # (B,) bool: the noisy input is up(LR) itself (the fidelity point)


def sample_sigma(n: int, gen: torch.Generator, p_mean: float = -1.0, p_std: float = 1.4,
                 floor: float = 1e-3) -> torch.Tensor:
    """EDM training sigmas: exp(N(p_mean, p_std^2)) clipped >= floor: (n,)."""
    return torch.exp(p_mean + p_std * torch.randn(n, generator=gen)).clamp(min=floor)


def draw_rope_origin(gen: torch.Generator, cfg: ModelConfig, crop: int) -> tuple[int, int]:
    """Random RoPE token offset in [0, rope_table - crop/patch] for rows and cols (FACTS.md 1.2)."""
    hi = cfg.rope_table - crop // cfg.patch_size + 1
    oy, ox = torch.randint(hi, (2,), generator=gen).tolist()
    return int(oy), int(ox)


def draw_noise(gen: torch.Generator, shape: Sequence[int], cfg: ModelConfig,
               settings: TrainSettings = TrainSettings()) -> Noise:
    """sigma, eps and the RoPE origin for a batch of HR images of `shape` (B, 3, H, W)."""
    sigma = sample_sigma(shape[0], gen, settings.p_mean, settings.p_std, settings.sigma_floor)
    eps = torch.randn(tuple(shape), generator=gen)
    origin = draw_rope_origin(gen, cfg, shape[-1])
    if not settings.fidelity_fraction:
        return Noise(sigma, eps, origin)
    at_fidelity = torch.rand(shape[0], generator=gen) < settings.fidelity_fraction  # (B,); drawn last
    sigma = torch.where(at_fidelity, torch.full_like(sigma, settings.fidelity_sigma), sigma)
    return Noise(sigma, eps, origin, from_lr=at_fidelity)


def loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def train_thumbnail(lr: torch.Tensor, size: int = THUMB_SIZE) -> torch.Tensor:
    """Training's encoder input: LR (B, 3, h, w) in [-1, 1] -> (B, 3, size, size) in [0, 1] (square crops;
    inference uses semantic.thumbnail, which agrees there)."""
    return F.interpolate((lr.float() + 1) / 2, size=(size, size), mode="bicubic", antialias=True,
                         align_corners=False)


def seam_error(d: torch.Tensor, x: torch.Tensor, *, block_size: int) -> torch.Tensor:
    """Per-sample mean squared error of the pixel differences across inner block borders: (B,).

    d, x: (B, C, H, W). A pair (i-1, i) straddles a border when i is a multiple of block_size, 0 < i < side
    (rows and columns pooled). Zero when the crop is a single block.
    """
    terms = []
    for dim in (-1, -2):  # columns, then rows
        at = torch.arange(block_size, d.shape[dim], block_size, device=d.device)  # (n,) border indices
        gd = d.index_select(dim, at) - d.index_select(dim, at - 1)  # (B, C, H, n) or (B, C, n, W)
        gx = x.index_select(dim, at) - x.index_select(dim, at - 1)
        terms.append(((gd - gx) ** 2).flatten(1))
    pooled = torch.cat(terms, dim=1)  # (B, pairs)
    return pooled.mean(dim=1) if pooled.shape[1] else d.new_zeros(d.shape[0])


def edm_loss(model: InfDiT, encoder: SemanticNet | None, batch: TrainBatch, noise: Noise, *,
             thumb_size: int = THUMB_SIZE, seam_weight: float = 0.0,
             backend: str = "sdpa") -> tuple[torch.Tensor, torch.Tensor]:
    """(loss scalar, per-sample loss (B,)): mean of loss_weight(sigma) (D(x + sigma eps) - x)^2, plus
    seam_weight times the same weight times seam_error(D, x) when seam_weight > 0."""
    x = batch.x
    sigma = noise.sigma.to(x.device)  # (B,)
    x_noisy = x + sigma[:, None, None, None] * noise.eps.to(x.device)  # (B, 3, H, W)
    if noise.from_lr is not None:  # the fidelity point: x_T = up(LR), D must give E[HR | LR] in one step
        x_noisy = torch.where(noise.from_lr.to(x.device)[:, None, None, None], batch.concat_lr, x_noisy)
    vector = encoder(train_thumbnail(batch.lr, thumb_size)) if encoder is not None else None  # (B, V)
    d = denoise_full(model, x_noisy, sigma, concat_lr=batch.concat_lr, lr=batch.lr, vector=vector, backend=backend,
                     rope_origin=noise.rope_origin)  # (B, 3, H, W) float32
    w = loss_weight(sigma, model.cfg.sigma_data)  # (B,)
    per_sample = (w[:, None, None, None] * (d - x.float()) ** 2).mean(dim=(1, 2, 3))  # (B,)
    if seam_weight:
        per_sample = per_sample + seam_weight * w * seam_error(d, x.float(), block_size=model.cfg.block_size)
    return per_sample.mean(), per_sample


