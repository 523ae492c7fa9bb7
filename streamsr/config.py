"""ModelConfig: the shape of an Inf-DiT-style transformer, one frozen dataclass for every size.

The official model (FACTS.md section 1) is `ModelConfig.official()`; the tests use tiny sizes. Every
field is validated in `__post_init__`, so a bad value fails early with a message naming it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

PARAMETRISATIONS = ("image", "residual")  # what the denoiser D predicts (see ModelConfig.parametrisation)
SR_SCALE = 4  # the model is a x4 upsampler: HR block side = 4 * LR block side (hard-wired officially)


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent with another one."""


def known_fields(cls, data: dict) -> dict:
    """`data` if every key is a field of the dataclass `cls`; ConfigError naming the unknown ones."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return data


@dataclass(frozen=True)
class ModelConfig:
    block_size: int = 128  # HR pixels per block side; a block is one unit of the attention DAG
    patch_size: int = 4  # HR pixels per token side (Conv2d(6, hidden, k=p, s=p))
    hidden: int = 1280  # transformer width
    heads: int = 16  # attention heads; head_dim = hidden / heads
    layers: int = 28  # transformer layers
    mlp_hidden: int = 5120  # MLP inner width (GELU-tanh)
    lr_patch: int = 2  # LR pixels per LR-token side in the layer-0 cross-attention (proj_lr)
    vector_dim: int = 768  # global semantic vector size (CLIP ViT-L-14 = 768); 0 = no vector input
    rope_table: int = 1024  # RoPE position table size; global patch positions wrap modulo this
    time_freqs: int = 96  # sinusoid frequencies of the time embedding (features = [cos, sin])
    k_uses_q_norm: bool = True  # official quirk: K is normalised with Q's LayerNorm (k_layer_norm unused)
    norm_eps: float = 1e-6  # eps of every LayerNorm
    sigma_data: float = 0.5  # EDM preconditioning constant (the scale of what is denoised)
    parametrisation: str = "image"  # "image": D denoises the image (official); "residual": D denoises
    #                                  HR - up(LR) around the upsampled LR (DESIGN.md "Model parametrisations")

    def __post_init__(self) -> None:
        positive = ("block_size", "patch_size", "hidden", "heads", "layers", "mlp_hidden", "lr_patch",
                    "rope_table", "time_freqs")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.vector_dim, int) or self.vector_dim < 0:
            raise ConfigError(f"ModelConfig.vector_dim must be an integer >= 0, got {self.vector_dim!r}")
        if self.hidden % self.heads:
            raise ConfigError(f"ModelConfig.hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.head_dim % 4:
            raise ConfigError(f"head_dim={self.head_dim} must be a multiple of 4 for 2D interleaved RoPE")
        if self.block_size % self.patch_size:
            raise ConfigError(f"ModelConfig.block_size={self.block_size} is not a multiple of "
                              f"patch_size={self.patch_size}")
        if self.block_size % SR_SCALE or self.lr_block_size % self.lr_patch:
            raise ConfigError(f"ModelConfig.block_size={self.block_size} must be a multiple of "
                              f"{SR_SCALE} * lr_patch={SR_SCALE * self.lr_patch}")
        if not (self.norm_eps > 0 and self.sigma_data > 0):
            raise ConfigError("ModelConfig.norm_eps and sigma_data must be > 0")
        if self.parametrisation not in PARAMETRISATIONS:
            raise ConfigError(f"ModelConfig.parametrisation must be one of {', '.join(PARAMETRISATIONS)}, "
                              f"got {self.parametrisation!r}")

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def block_tokens_side(self) -> int:
        """Tokens per block side (32 for the official model)."""
        return self.block_size // self.patch_size

    @property
    def block_tokens(self) -> int:
        """Tokens per block (1024 for the official model)."""
        return self.block_tokens_side ** 2

    @property
    def lr_block_size(self) -> int:
        """LR pixels per block side (32 for the official model)."""
        return self.block_size // SR_SCALE

    @property
    def lr_tokens_side(self) -> int:
        """LR tokens per block side in the cross-attention (16 for the official model)."""
        return self.lr_block_size // self.lr_patch

    @property
    def lr_window_tokens(self) -> int:
        """LR tokens in a block's 3x3-block cross-attention window (2304 for the official model)."""
        return (3 * self.lr_tokens_side) ** 2

    @property
    def out_per_token(self) -> int:
        return self.patch_size * self.patch_size * 3

    # ---- presets and (de)serialisation ---------------------------------------------------------
    @classmethod
    def official(cls) -> "ModelConfig":
        """The released Inf-DiT (753M parameters)."""
        return cls()

    @classmethod
    def tiny(cls, **overrides) -> "ModelConfig":
        """A test-sized model: 32 px blocks of 4x4 tokens, 2 layers, width 32."""
        base = dict(block_size=32, patch_size=8, hidden=32, heads=2, layers=2, mlp_hidden=64, lr_patch=2,
                    vector_dim=16, rope_table=64, time_freqs=8)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return cls(**known_fields(cls, data))


SAMPLERS = ("heun", "euler")
ANCHORS = ("none", "global", "local")
DTYPES = ("fp32", "bf16")
SCALES = (4, 16)
MODES = ("fidelity", "detail")  # a model dir's named operating points (weights.ModelDefaults)
SIGMA_RANGE = (1e-4, 1e3)  # allowed sigma_min .. sigma_max: beyond, fp32 state loses the image (all black)
RHO_RANGE = (0.1, 100.0)  # allowed Karras rho
SEED_MAX = 2 ** 63 - 1  # seeds are 0..SEED_MAX (noise.py mixes them as 64-bit: 2^64 would equal 0)
QUALITY_RANGE = (1, 100)  # JPEG/WebP output quality (Pillow's scale; WebP 100 is lossless)
MAX_STEPS = 1000


@dataclass(frozen=True)
class JobConfig:
    """Settings of one upscale job; everything that changes the output pixels is here."""

    steps: int = 20  # EDM steps (Heun: 2*steps - 1 denoiser sweeps)
    sampler: str = "heun"  # "heun" or "euler"
    seed: int = 0  # per-block noise seed
    batch_rows: int = 1  # block batch height (bh)
    batch_cols: int = 1  # block batch width (bw)
    anchor: str = "global"  # statistics anchoring: "none", "global" or "local"
    sigma_min: float = 0.002  # Karras schedule ends (official values)
    sigma_max: float = 40.0
    rho: float = 7.0
    noise_init: bool = True  # x_T = up(LR) + sigma_max * eps (official); False: x_T = up(LR), the deterministic
    #                          one-step estimate of a residual model at its fidelity point (no noise input)
    device: str = "cpu"  # "cpu" or "cuda"
    dtype: str = "fp32"  # "fp32" or "bf16"
    backend: str = "sdpa"  # attention kernel: "sdpa", "reference" or "xformers"
    prompt_pos: str = ""  # optional text direction for encoders with a text tower
    prompt_neg: str = ""
    placement: str = "device"  # where the K/V frontier lives: device, host (pinned) or disk
    vram: int = 0  # device memory budget in bytes (0: none); the memory planner picks batch and placement
    ram: int = 0  # host memory budget in bytes (0: none)
    quality: int = 90  # JPEG/WebP output quality: it changes the output file's pixels, so it is kept with the job

    def __post_init__(self) -> None:
        if not _is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"steps must be an integer in 1..{MAX_STEPS}, got {self.steps!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"seed must be an integer in 0..2^63-1, got {self.seed!r}")
        if not (isinstance(self.batch_rows, int) and isinstance(self.batch_cols, int)
                and self.batch_rows >= 1 and self.batch_cols >= 1):
            raise ConfigError(f"batch must be at least 1x1, got {self.batch_rows}x{self.batch_cols}")
        if self.anchor not in ANCHORS:
            raise ConfigError(f"anchor must be one of {', '.join(ANCHORS)}, got {self.anchor!r}")
        low, high = SIGMA_RANGE
        for name in ("sigma_min", "sigma_max"):
            value = getattr(self, name)
            if not _is_real(value) or not low <= value <= high:
                raise ConfigError(f"{name} must be a finite number in {low:g}..{high:g}, got {value!r}")
        if not self.sigma_min < self.sigma_max:
            raise ConfigError(f"need sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not isinstance(self.noise_init, bool):
            raise ConfigError(f"noise_init must be true or false, got {self.noise_init!r}")
        if not _is_real(self.rho) or not RHO_RANGE[0] <= self.rho <= RHO_RANGE[1]:
            raise ConfigError(f"rho must be a finite number in {RHO_RANGE[0]:g}..{RHO_RANGE[1]:g}, got {self.rho!r}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be cpu or cuda, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.placement not in ("device", "host", "disk"):
            raise ConfigError(f"placement must be device, host or disk, got {self.placement!r}")
        if not (isinstance(self.vram, int) and isinstance(self.ram, int)) or self.vram < 0 or self.ram < 0:
            raise ConfigError(f"memory budgets must be sizes >= 0, got vram={self.vram!r} ram={self.ram!r}")
        if self.backend not in ("sdpa", "reference", "xformers"):
            raise ConfigError(f"backend must be sdpa, reference or xformers, got {self.backend!r}")
        if not _is_int(self.quality) or not QUALITY_RANGE[0] <= self.quality <= QUALITY_RANGE[1]:
            raise ConfigError(f"quality must be an integer in {QUALITY_RANGE[0]}..{QUALITY_RANGE[1]}, "
                              f"got {self.quality!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "JobConfig":
        return cls(**known_fields(cls, data))

    def pixel_settings(self) -> dict:
        """The settings a resumed job must share with its creator (all but where and how fast it runs)."""
        data = self.to_dict()
        for name in ("device", "backend", "batch_rows", "batch_cols", "placement", "vram", "ram"):
            data.pop(name)
        return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    """A finite int or float (not a bool, a string, NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
