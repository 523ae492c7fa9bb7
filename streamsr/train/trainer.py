"""Training streamsr's own models: the loop around the recipe (recipe.py), EMA, checkpoints and export.

Optimisation (`Trainer`): AdamW (lr 2e-4, wd 1e-4, betas (0.9, 0.99)) with a linear warmup and an
optional cosine decay (`learning_rate`), grad-norm clip 1.0, EMA of model + encoder weights (decay 0.999,
with the usual (1+t)/(10+t) warmup so short runs export something trained), bf16 autocast on CUDA, fp32
on CPU. A step's batch and noise are pure functions of (seed, step) (recipe.step_generator), so a
checkpoint needs only the step to continue the same stream, and a resumed run is bit-identical to an
uninterrupted one on the CPU.

Checkpoints (`save_checkpoint` / `Trainer.from_checkpoint`), never pickle:
    model/            config.json + diffusion_pytorch_model.safetensors (save_pretrained)
    encoder.safetensors, ema.safetensors ("model.*", "encoder.*"), optimizer.safetensors ("<i>.<key>")
    train_state.json  step, seed, settings, model config, optimizer param groups, extra (CLI args)
Export (`export_model_dir`): a complete model dir from the EMA weights (config.json +
diffusion_pytorch_model.safetensors + semantic_encoder.json + semantic_encoder.safetensors).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig
from ..core.model import InfDiT
from ..errors import BadInput
from ..semantic.learned import THUMB_SIZE, SemanticNet, save_encoder
from .recipe import (  # noqa: F401  (re-exported: tools import them from here)
    CropSampler,
    Noise,
    TrainBatch,
    TrainSettings,
    draw_noise,
    edm_loss,
    list_images,
    load_image,
    make_batch,
    step_generator,
)

CKPT_FORMAT = 1
SIGMA_BINS = (0.1, 0.3, 1.0, 3.0)  # log-loss bin edges: <0.1, 0.1-0.3, 0.3-1, 1-3, >=3


# ---- loss by sigma bin (logging) ---------------------------------------------------------------------
def sigma_bin(sigma: torch.Tensor) -> torch.Tensor:
    """Index of each sigma in the SIGMA_BINS log bins: (B,) int64 in [0, len(SIGMA_BINS)]."""
    return torch.bucketize(sigma.float().cpu(), torch.tensor(SIGMA_BINS))


def bin_labels() -> list[str]:
    edges = ("0",) + tuple(f"{e:g}" for e in SIGMA_BINS) + ("inf",)
    return [f"{edges[i]}-{edges[i + 1]}" for i in range(len(SIGMA_BINS) + 1)]


# ---- model init, EMA, learning rate --------------------------------------------------------------------
def init_model(cfg: ModelConfig, seed: int) -> InfDiT:
    """A fresh InfDiT (torch default init; the final linear zeroed as in DiT, so D starts at c_skip x)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InfDiT.from_model_config(cfg)
    with torch.no_grad():
        model.final.linear.weight.zero_()
        model.final.linear.bias.zero_()
    return model


def init_encoder(cfg: ModelConfig, settings: TrainSettings) -> SemanticNet | None:
    """The learned semantic encoder for cfg.vector_dim (None when the model takes no vector)."""
    if not cfg.vector_dim:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed + 1)
        return SemanticNet(cfg.vector_dim, settings.encoder_channels)


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warmup to settings.lr over settings.warmup steps, constant, then (when decay_end > 0) a
    cosine decay from decay_start to 0 at decay_end; `step` counts from 0."""
    if settings.decay_end and step >= settings.decay_start:
        t = min(1.0, (step - settings.decay_start) / (settings.decay_end - settings.decay_start))
        return settings.lr * 0.5 * (1 + math.cos(math.pi * t))
    return settings.lr * min(1.0, (step + 1) / settings.warmup) if settings.warmup else settings.lr


def ema_decay(updates: int, decay: float) -> float:
    """EMA decay after `updates` optimizer steps: min(decay, (1 + t) / (10 + t))."""
    return min(decay, (1 + updates) / (10 + updates))


def named_params(model: InfDiT, encoder: SemanticNet | None) -> dict[str, torch.Tensor]:
    """Every trained tensor by name: "model.<name>", "encoder.<name>"."""
    out = {f"model.{k}": v for k, v in model.state_dict().items()}
    if encoder is not None:
        out.update({f"encoder.{k}": v for k, v in encoder.state_dict().items()})
    return out


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], current: dict[str, torch.Tensor], decay: float) -> None:
    """ema <- decay ema + (1 - decay) current, in place."""
    for name, value in current.items():
        ema[name].lerp_(value.float(), 1.0 - decay)


# ---- the trainer ---------------------------------------------------------------------------------------
@dataclass
class StepResult:
    step: int  # the step just done (1-based count of optimizer steps)
    loss: float
    per_sample: torch.Tensor  # (B,) CPU
    sigma: torch.Tensor  # (B,) CPU
    grad_norm: float


class Trainer:
    """Model + encoder + EMA + AdamW, stepped with `step(sampler)`; checkpoint / resume / export."""

    def __init__(self, cfg: ModelConfig, settings: TrainSettings, device: str | torch.device = "cpu",
                 model: InfDiT | None = None, encoder: SemanticNet | None = None, step: int = 0):
        settings.check(cfg)
        self.cfg, self.settings, self.device = cfg, settings, torch.device(device)
        self.model = (model if model is not None else init_model(cfg, settings.seed)).to(self.device).train()
        self.encoder = encoder if encoder is not None or not cfg.vector_dim else init_encoder(cfg, settings)
        if self.encoder is not None:
            self.encoder = self.encoder.to(self.device).train()
        self.params = list(self.model.parameters()) + (list(self.encoder.parameters()) if self.encoder else [])
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, betas=tuple(settings.betas),
                                           weight_decay=settings.weight_decay)
        self.ema = {k: v.detach().float().clone() for k, v in named_params(self.model, self.encoder).items()}
        self.step_count = step
        self.extra: dict = {}  # free-form provenance stored in train_state.json (e.g. CLI args)

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self, batch: TrainBatch, noise: Noise) -> StepResult:
        """One optimizer step on a prepared batch and noise."""
        batch = batch.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step_count, self.settings)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, per_sample = edm_loss(self.model, self.encoder, batch, noise, thumb_size=self.settings.thumb_size,
                                        seam_weight=self.settings.seam_weight)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        self.optimizer.step()
        self.step_count += 1
        ema_update(self.ema, named_params(self.model, self.encoder),
                   ema_decay(self.step_count, self.settings.ema_decay))
        return StepResult(self.step_count, float(loss.detach()), per_sample.detach().float().cpu(),
                          noise.sigma.detach().cpu(), float(grad_norm))

    def next_batch(self, sampler: CropSampler) -> tuple[TrainBatch, Noise]:
        """The batch and noise of the next step: pure functions of (seed, step)."""
        data_gen = step_generator(self.settings.seed, self.step_count, "data")
        noise_gen = step_generator(self.settings.seed, self.step_count, "noise")
        batch = make_batch(sampler.sample(self.settings.batch, data_gen), data_gen, self.settings)
        return batch, draw_noise(noise_gen, batch.x.shape, self.cfg, self.settings)

    def step(self, sampler: CropSampler) -> StepResult:
        return self.train_step(*self.next_batch(sampler))

    # ---- checkpoints ---------------------------------------------------------------------------------
    def state_json(self) -> dict:
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
                  for g in self.optimizer.state_dict()["param_groups"]]
        return {"format": CKPT_FORMAT, "step": self.step_count, "seed": self.settings.seed,
                "rng": "per-step generators from (seed, step, stream); see train.recipe.step_generator",
                "settings": self.settings.to_dict(), "model_config": self.cfg.to_dict(),
                "has_encoder": self.encoder is not None, "optimizer_param_groups": groups, "extra": self.extra}

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the checkpoint dir atomically (tmp dir + rename; the previous one is kept until then)."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp / "model", safe_serialization=True)
        if self.encoder is not None:
            save_file(_cpu(self.encoder.state_dict()), str(tmp / "encoder.safetensors"))
        save_file(_cpu(self.ema), str(tmp / "ema.safetensors"))
        opt = {f"{i}.{k}": v for i, st in self.optimizer.state_dict()["state"].items() for k, v in st.items()}
        save_file(_cpu(opt), str(tmp / "optimizer.safetensors"))
        (tmp / "train_state.json").write_text(json.dumps(self.state_json(), indent=2) + "\n")
        _fsync_dir(tmp)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        return path

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "Trainer":
        """Resume: the same model, encoder, EMA, AdamW moments and step; the next step continues the stream."""
        from safetensors.torch import load_file

        path = find_checkpoint(path)
        state = json.loads((path / "train_state.json").read_text())
        if state.get("format") != CKPT_FORMAT:
            raise BadInput(f"{path}: unknown checkpoint format {state.get('format')!r}")
        cfg = ModelConfig.from_dict(state["model_config"])
        settings = TrainSettings.from_dict(state["settings"])
        model = InfDiT.from_model_config(cfg)
        _load_strict(model, load_file(str(path / "model" / "diffusion_pytorch_model.safetensors")), path / "model")
        encoder = None
        if state["has_encoder"]:
            encoder = SemanticNet(cfg.vector_dim, settings.encoder_channels)
            _load_strict(encoder, load_file(str(path / "encoder.safetensors")), path / "encoder.safetensors")
        trainer = cls(cfg, settings, device, model, encoder, step=int(state["step"]))
        ema = load_file(str(path / "ema.safetensors"))
        if set(ema) != set(trainer.ema):
            raise BadInput(f"{path}/ema.safetensors does not match the model's parameters")
        trainer.ema = {k: ema[k].to(trainer.device) for k in trainer.ema}
        flat = load_file(str(path / "optimizer.safetensors"))
        opt_state: dict[int, dict] = {}
        for key, value in flat.items():
            index, name = key.split(".", 1)
            opt_state.setdefault(int(index), {})[name] = value
        groups = state["optimizer_param_groups"]
        groups[0]["params"] = list(range(len(trainer.params)))
        trainer.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        trainer.extra = state.get("extra", {})
        return trainer

    # ---- export --------------------------------------------------------------------------------------
    def ema_modules(self) -> tuple[InfDiT, SemanticNet | None]:
        """CPU copies of model and encoder holding the EMA weights."""
        model = InfDiT.from_model_config(self.cfg)
        model.load_state_dict({k[6:]: v.cpu() for k, v in self.ema.items() if k.startswith("model.")})
        encoder = None
        if self.encoder is not None:
            encoder = SemanticNet(self.cfg.vector_dim, self.settings.encoder_channels)
            encoder.load_state_dict({k[8:]: v.cpu() for k, v in self.ema.items() if k.startswith("encoder.")})
        return model.eval(), encoder

    def export(self, model_dir: str | Path) -> Path:
        """A complete model dir from the EMA weights (see the module docstring)."""
        model, encoder = self.ema_modules()
        return export_model_dir(model, encoder, model_dir, self.settings.thumb_size)


def export_model_dir(model: InfDiT, encoder: SemanticNet | None, model_dir: str | Path,
                     thumb_size: int = THUMB_SIZE) -> Path:
    """config.json + diffusion_pytorch_model.safetensors (+ semantic_encoder.json/.safetensors) in model_dir."""
    model_dir = Path(model_dir)
    model.save_pretrained(model_dir, safe_serialization=True)
    if encoder is not None:
        save_encoder(encoder, model_dir, thumb_size)
    else:
        (model_dir / "semantic_encoder.json").write_text(json.dumps({"kind": "none"}) + "\n")
    return model_dir


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint dir at `path`, or its `.old` twin when a save was interrupted between the renames."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / "train_state.json").is_file():
            return candidate
    raise BadInput(f"no checkpoint at {path} (no train_state.json)")


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    expected = set(module.state_dict())
    if set(state) != expected:
        raise BadInput(f"{where}: weights do not match the architecture (missing "
                       f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]})")
    module.load_state_dict(state)


def _fsync_dir(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
