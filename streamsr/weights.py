"""Model dirs in diffusers' format (config.json + safetensors, written by save_pretrained): read, load for
inference (`load_model`), write, hash; and a model's recommended sampling settings (streamsr_defaults.json).

Nothing here unpickles: weights are safetensors only. A model dir may also name its semantic encoder
(later issues); this module only reads and writes the transformer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import MODES, ConfigError, ModelConfig
from .errors import BadInput

if TYPE_CHECKING:
    from .core.model import InfDiT

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' SAFETENSORS_WEIGHTS_NAME


def read_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of a model dir, validated; BadInput with the reason if it is not one."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise BadInput(f"model dir {path} does not exist or is not a directory")
    if not cfg_file.is_file():
        raise BadInput(f"model dir {path} has no config.json")
    try:
        data = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"cannot read {cfg_file}: {exc}") from None
    if data.get("_class_name") not in (None, "InfDiT"):
        raise BadInput(f"{cfg_file} describes a {data.get('_class_name')}, not an InfDiT model")
    fields = {k: v for k, v in data.items() if not k.startswith("_")}
    try:
        return ModelConfig.from_dict(fields)
    except (ConfigError, TypeError) as exc:
        raise BadInput(f"{cfg_file}: {exc}") from None


def load_model_dir(path: str | Path) -> InfDiT:
    """An InfDiT from a model dir, offline, in float32 on the CPU."""
    from diffusers.utils import logging as diffusers_logging

    from .core.model import InfDiT

    diffusers_logging.set_verbosity_error()  # no hub or dtype chatter for a local, offline model dir
    path = Path(path)
    read_model_config(path)  # clear errors before diffusers sees the dir
    if not (path / WEIGHTS_NAME).is_file():
        raise BadInput(f"model dir {path} has no {WEIGHTS_NAME}")
    try:
        return InfDiT.from_pretrained(path, local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise BadInput(f"cannot load model dir {path}: {str(exc).splitlines()[0]}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> InfDiT:
    """Load a model dir (config.json + safetensors, as save_pretrained writes) for inference.

    The weights are cast on the CPU before they move, so a bf16 model never has an fp32 copy on the
    device. In fp32 on CUDA, fp32 means IEEE fp32: TF32 is turned off (core/precision.py).
    """
    from .core.precision import needs_ieee_fp32, use_ieee_fp32

    model = load_model_dir(path)
    if dtype != torch.float32:
        model = model.to(dtype)
    if needs_ieee_fp32(device, dtype):
        use_ieee_fp32()
    return model.to(device).eval()


def save_model_dir(model, path: str | Path) -> Path:
    """Write config.json + safetensors (diffusers' save_pretrained)."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    return path


def model_hash(path: str | Path) -> str:
    """sha256 over the model dir's config fields and weights file: identifies a model for job resume."""
    path = Path(path)
    digest = hashlib.sha256()
    digest.update(json.dumps(read_model_config(path).to_dict(), sort_keys=True).encode())
    with open(path / WEIGHTS_NAME, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


DEFAULTS_NAME = "streamsr_defaults.json"  # a model's recommended sampling settings (JobConfig fields)
DEFAULT_FIELDS = ("steps", "sampler", "anchor", "sigma_min", "sigma_max", "rho", "noise_init")


@dataclass(frozen=True)
class ModelDefaults:
    """A model dir's recommended sampling settings (streamsr_defaults.json).

    Two forms are read: flat ({"steps": 2, "sigma_max": 0.02, ...}: one unnamed setting, the form of
    earlier model dirs) and named operating points ({"mode": "fidelity", "modes": {"fidelity": {...},
    "detail": {...}}}): `fidelity` is the MMSE-like estimate (best PSNR/SSIM), `detail` a schedule that
    adds plausible fine detail at some cost in PSNR.
    """

    flat: dict = field(default_factory=dict)  # settings of a flat file
    modes: dict = field(default_factory=dict)  # mode name -> settings
    default_mode: str | None = None  # the mode used when none is asked for

    def settings(self, mode: str | None = None, *, where: str = "the model dir") -> dict:
        """The JobConfig fields of `mode` (None: the model's default); BadInput for a mode it lacks."""
        if mode is None:
            return dict(self.modes[self.default_mode]) if self.default_mode else dict(self.flat)
        if mode not in MODES:
            raise BadInput(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode not in self.modes:
            have = ", ".join(self.modes) or "none"
            raise BadInput(f"{where} recommends no settings for --mode {mode} (its modes: {have}); "
                           f"give --steps/--sigma-max/--sampler instead")
        return dict(self.modes[mode])

    def to_json(self) -> dict:
        if not self.modes:
            return dict(self.flat)
        return {"mode": self.default_mode, "modes": {k: dict(v) for k, v in self.modes.items()}}


def _check_settings(data, file: Path, what: str) -> dict:
    if not isinstance(data, dict) or set(data) - set(DEFAULT_FIELDS):
        raise BadInput(f"{file}: {what} may only set {', '.join(DEFAULT_FIELDS)}")
    return data


def read_model_defaults(path: str | Path) -> ModelDefaults:
    """The model dir's ModelDefaults (empty if it has no streamsr_defaults.json); BadInput for a bad file."""
    file = Path(path) / DEFAULTS_NAME
    if not file.is_file():
        return ModelDefaults()
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{file} must hold a JSON object")
    if "modes" not in data:
        return ModelDefaults(flat=_check_settings(data, file, "the file"))
    modes, default = data["modes"], data.get("mode")
    if set(data) - {"mode", "modes"} or not isinstance(modes, dict) or not modes or set(modes) - set(MODES):
        raise BadInput(f"{file} must be {{\"mode\": NAME, \"modes\": {{NAME: settings}}}} with NAME in "
                       f"{', '.join(MODES)}")
    if default not in modes:
        raise BadInput(f"{file}: the default mode {default!r} is not one of its modes ({', '.join(modes)})")
    return ModelDefaults(modes={k: _check_settings(v, file, f"mode {k}") for k, v in modes.items()},
                         default_mode=default)


def model_defaults(path: str | Path, mode: str | None = None) -> dict:
    """The JobConfig fields a model dir recommends for `mode` (None: its default; {} if it names none)."""
    return read_model_defaults(path).settings(mode, where=str(path))
