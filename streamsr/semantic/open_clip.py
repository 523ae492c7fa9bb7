"""The open_clip encoder (kind "open_clip"): the official CLIP vector of an LR image, from a model dir's files.

The official vector (FACTS.md 1.5) is, from the thumbnail (thumbnail.py) of the LR image:
    e = F.normalize(model.encode_image(Normalize(OpenAI mean/std)(thumb), normalize=True))
and the text tower gives e_txt the same way (encoders.text_direction combines them).

Nothing is ever downloaded: the architecture (a built-in open_clip name or an inline config) is built
with `pretrained=None` and the weights come from the safetensors file the spec names. Without "text",
the text tower is dropped, as the official code does, and visual-only weights suffice.

- `OpenClipEncoder`: Normalize(OpenAI mean/std), encode_image / encode_text, F.normalize.
- `load_encoder`: encoders.py's `_LOADERS["open_clip"]`: build, check embed_dim, load the weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import BadInput
from .base import SemanticEncoder
from .spec import SemanticSpec
from .thumbnail import THUMB_SIZE

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # = open_clip.constants.OPENAI_DATASET_MEAN
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)  # = open_clip.constants.OPENAI_DATASET_STD
_UNUSED_PARAMS = ("logit_scale", "logit_bias")  # CLIP-level parameters that no encoder path uses


@contextlib.contextmanager
def _quiet_logging():
    """Silence open_clip's 'no pretrained weights loaded' warnings (weights are loaded separately)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _build_open_clip(model: str | dict, device: str | torch.device):
    """(architecture with random weights, tokenizer) of a built-in name or an inline config; no download."""
    try:
        import open_clip
    except ImportError:
        raise BadInput('this model\'s semantic encoder is open_clip, which is not installed: '
                       'pip install "streamsr[clip]" (open_clip_torch and torchvision)') from None

    kwargs = dict(pretrained=None, load_weights=False, pretrained_image=False, pretrained_text=False,
                  device=device)
    with _quiet_logging():
        if isinstance(model, str):
            if open_clip.get_model_config(model) is None:
                raise BadInput(f"unknown open_clip model {model!r} (see open_clip.list_models())")
            return open_clip.create_model(model, **kwargs), open_clip.get_tokenizer(model)
        with tempfile.TemporaryDirectory(prefix="streamsr-openclip-") as tmp:  # open_clip's 'local-dir:' schema
            (Path(tmp) / "open_clip_config.json").write_text(json.dumps({"model_cfg": copy.deepcopy(model)}))
            return (open_clip.create_model(f"local-dir:{tmp}", **kwargs),
                    open_clip.get_tokenizer(f"local-dir:{tmp}"))


def _drop_text_tower(model: torch.nn.Module) -> None:
    """Delete everything but `visual` (and the unused logit scale/bias), as the official code does."""
    for name, _ in list(model.named_children()):
        if name != "visual":
            delattr(model, name)
    for name, _ in list(model.named_parameters(recurse=False)) + list(model.named_buffers(recurse=False)):
        if name not in _UNUSED_PARAMS:
            delattr(model, name)


def _load_state(model: torch.nn.Module, path: Path, text: bool) -> None:
    """Load a safetensors state dict into an open_clip model; without `text`, drop its text tower first."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")  # name -> tensor
    except (OSError, SafetensorError) as exc:
        raise BadInput(f"cannot read the semantic encoder weights {path}: {exc}") from None
    full = set(model.state_dict())
    unexpected = sorted(set(state) - full)
    if unexpected:
        raise BadInput(f"{path} does not fit the open_clip architecture: unexpected keys {unexpected[:5]}"
                       f"{' ...' if len(unexpected) > 5 else ''}")
    needed = {k for k in full if k not in _UNUSED_PARAMS and (text or k.startswith("visual."))}
    missing = sorted(needed - set(state))
    if missing:
        what = "" if any(k.startswith("visual.") for k in missing) else " (no text tower; set \"text\": false)"
        raise BadInput(f"{path} lacks keys of the open_clip model{what}: {missing[:5]}"
                       f"{' ...' if len(missing) > 5 else ''}")
    if not text:
        _drop_text_tower(model)
        kept = set(model.state_dict())
        state = {k: v for k, v in state.items() if k in kept}
    for key in _UNUSED_PARAMS:  # scalar vs 1-d parameter, as open_clip's load_checkpoint does
        param = getattr(model, key, None)
        if key in state and isinstance(param, torch.Tensor) and state[key].ndim != param.ndim:
            state[key] = state[key].reshape(param.shape)
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise BadInput(f"{path} does not fit the open_clip architecture: {str(exc).splitlines()[-1].strip()}") \
            from None


class OpenClipEncoder(SemanticEncoder):
    """An open_clip CLIP: Normalize(OpenAI mean/std), encode_image(normalize=True), F.normalize."""

    kind = "open_clip"

    def __init__(self, model: torch.nn.Module, tokenizer, embed_dim: int, has_text: bool,
                 device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.tokenizer = tokenizer if has_text else None
        self.embed_dim = embed_dim
        self.has_text = has_text
        self.device = torch.device(device)
        side = getattr(model.visual, "image_size", THUMB_SIZE)
        side = tuple(side) if isinstance(side, (tuple, list)) else (side, side)
        if side[0] != side[1]:
            raise BadInput(f"the open_clip vision tower takes {side[0]}x{side[1]} images; only square is supported")
        self.image_size = int(side[0])
        self.mean = torch.tensor(OPENAI_MEAN, device=self.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
        self.std = torch.tensor(OPENAI_STD, device=self.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)

    def encode_image(self, thumb: torch.Tensor) -> torch.Tensor:
        self.check_thumbnail(thumb)
        x = (thumb.to(self.device, torch.float32) - self.mean) / self.std  # (B, 3, S, S)
        with torch.no_grad():
            e = self.model.encode_image(x, normalize=True)  # (B, D)
        return F.normalize(e.float(), dim=-1)

    def encode_text(self, prompts: str | Sequence[str]) -> torch.Tensor:
        if not self.has_text:
            return super().encode_text(prompts)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = self.tokenizer(prompts).to(self.device)  # (n, context_length)
        with torch.no_grad():
            e = self.model.encode_text(tokens, normalize=True)  # (n, D)
        return F.normalize(e.float(), dim=-1)


def load_encoder(model_dir: Path, spec: SemanticSpec, device: str | torch.device = "cpu") -> OpenClipEncoder:
    """The encoder of a parsed "open_clip" spec, in eval mode on `device`; BadInput on unusable files."""
    try:
        model, tokenizer = _build_open_clip(spec.model, device)
    except BadInput:
        raise
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/KeyError/TypeError on bad configs
        raise BadInput(f"cannot build the open_clip model {spec.model!r}: {exc}") from None
    out_dim = getattr(model.visual, "output_dim", spec.embed_dim)
    if out_dim != spec.embed_dim:
        raise BadInput(f"the open_clip model {spec.model!r} gives {out_dim}-d vectors, not embed_dim "
                       f"{spec.embed_dim}")
    _load_state(model, spec.weights_path(model_dir), spec.text)
    return OpenClipEncoder(model, tokenizer, spec.embed_dim, spec.text, device)
