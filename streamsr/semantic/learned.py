"""A small learned global semantic encoder (kind "learned"): the CLIP vector's stand-in for streamsr's own models.

The official model conditions on a CLIP ViT-L-14 image embedding of the LR (FACTS.md 1.5). No pretrained
CLIP can be downloaded here, so the default model learns its own: a tiny CNN over a 64x64 thumbnail of
the LR, trained jointly with the transformer (train/trainer.py), giving an F.normalize'd `embed_dim`
vector (= the model's vector_dim). A model dir names it in `semantic_encoder.json` (parsed by spec.py):

    {"kind": "learned", "weights": "semantic_encoder.safetensors", "embed_dim": 64, "thumb_size": 64,
     "channels": [32, 64, 128, 128]}

- `SemanticNet`: the network, thumbnail in [0, 1] (B, 3, S, S) -> unit vectors (B, embed_dim);
  len(channels) stride-2 3x3 convs with SiLU, global average pool, linear, F.normalize.
- `LearnedEncoder`: the inference wrapper (eval, no grad, no text tower).
- `load_net` / `load_encoder`: the weights of a model dir; `load_encoder` is encoders.py's
  `_LOADERS["learned"]`.
- `spec_dict` / `save_encoder`: weights (safetensors) + the JSON above into a model dir.

Inference builds the thumbnail with `thumbnail.thumbnail(lr, thumb_size)` (shorter side -> thumb_size,
center crop, streamed over huge LRs); training uses F.interpolate on square crops, which agrees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInput
from .base import SemanticEncoder
from .spec import SPEC_NAME, SemanticSpec

KIND = "learned"
WEIGHTS_FILE = "semantic_encoder.safetensors"
THUMB_SIZE = 64  # default thumbnail side
CHANNELS = (32, 64, 128, 128)  # default conv widths: 64 -> 32 -> 16 -> 8 -> 4 px


class SemanticNet(nn.Module):
    """Thumbnail (B, 3, S, S) in [0, 1] -> (B, embed_dim) unit vectors."""

    def __init__(self, embed_dim: int, channels: Sequence[int] = CHANNELS):
        super().__init__()
        if embed_dim <= 0 or not channels or any(c <= 0 for c in channels):
            raise ValueError(f"need embed_dim > 0 and positive channels, got {embed_dim}, {list(channels)}")
        self.embed_dim = int(embed_dim)
        self.channels = tuple(int(c) for c in channels)
        widths = (3,) + self.channels
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], kernel_size=3, stride=2, padding=1)
                                   for i in range(len(self.channels)))
        self.head = nn.Linear(self.channels[-1], self.embed_dim)

    def forward(self, thumb: torch.Tensor) -> torch.Tensor:
        h = thumb.to(self.head.weight.dtype) * 2 - 1  # (B, 3, S, S) in [-1, 1]
        for conv in self.convs:
            h = F.silu(conv(h))  # (B, C_i, S/2^i, S/2^i)
        e = self.head(h.mean(dim=(-2, -1)))  # (B, D)
        return F.normalize(e.float(), dim=-1)


class LearnedEncoder(SemanticEncoder):
    """A trained `SemanticNet` for inference (encoders.semantic_vector); image only."""

    kind = KIND

    def __init__(self, net: SemanticNet, image_size: int, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.embed_dim = net.embed_dim
        self.image_size = int(image_size)
        self.has_text = False

    def encode_image(self, thumb: torch.Tensor) -> torch.Tensor:
        self.check_thumbnail(thumb)
        with torch.no_grad():
            return self.net(thumb.to(self.device, torch.float32)).float()  # (B, D)


# ---- loading (encoders._LOADERS["learned"]) and saving -----------------------------------------------
def load_net(path: str | Path, embed_dim: int, channels: Sequence[int]) -> SemanticNet:
    """A SemanticNet with the weights of a safetensors file; BadInput on unknown, missing or misshapen keys."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    net = SemanticNet(embed_dim, channels)
    try:
        state = load_file(str(path), device="cpu")  # name -> tensor
    except (OSError, SafetensorError) as exc:
        raise BadInput(f"cannot read the semantic encoder weights {path}: {exc}") from None
    expected = net.state_dict()
    unexpected, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
    if unexpected or missing:
        raise BadInput(f"{path} does not fit the learned encoder (channels {list(channels)}, embed_dim "
                       f"{embed_dim}): unexpected keys {unexpected[:5]}, missing keys {missing[:5]}")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise BadInput(f"{path} does not fit the learned encoder: wrong shapes for {wrong[:5]}")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net


def load_encoder(model_dir: Path, spec: SemanticSpec, device: str | torch.device = "cpu") -> LearnedEncoder:
    """The encoder of a parsed "learned" spec, in eval mode on `device`."""
    net = load_net(spec.weights_path(model_dir), spec.embed_dim, spec.model["channels"])
    return LearnedEncoder(net, spec.model["thumb_size"], device)


def spec_dict(net: SemanticNet, thumb_size: int = THUMB_SIZE, weights: str = WEIGHTS_FILE) -> dict:
    """The `semantic_encoder.json` contents for a net."""
    return {"kind": KIND, "weights": weights, "embed_dim": net.embed_dim, "thumb_size": int(thumb_size),
            "channels": list(net.channels)}


def save_encoder(net: SemanticNet, model_dir: str | Path, thumb_size: int = THUMB_SIZE,
                 state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write semantic_encoder.safetensors (net's weights, or `state`) + semantic_encoder.json; returns the JSON."""
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = net.state_dict() if state is None else state
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, str(model_dir / WEIGHTS_FILE))
    path = model_dir / SPEC_NAME
    path.write_text(json.dumps(spec_dict(net, thumb_size), indent=2) + "\n")
    return path
