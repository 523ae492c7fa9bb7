"""A small learned global semantic encoder: the CLIP vector's stand-in for streamsr's own trained models.

The official model conditions on a CLIP ViT-L-14 image embedding of the LR (FACTS.md 1.5). No pretrained
CLIP can be downloaded here, so the default model learns its own: a tiny CNN over a 64x64 thumbnail of
the LR, trained jointly with the transformer (training.py), giving an F.normalize'd `embed_dim` vector
(= the model's vector_dim). A model dir names it in `semantic_encoder.json`:

    {"kind": "learned", "weights": "semantic_encoder.safetensors", "embed_dim": 64, "thumb_size": 64,
     "channels": [32, 64, 128, 128]}

- `SemanticNet`: the network, thumbnail in [0, 1] (B, 3, S, S) -> unit vectors (B, embed_dim);
  len(channels) stride-2 3x3 convs with SiLU, global average pool, linear, F.normalize.
- `parse_spec` / `load_encoder`: the "learned" entries of semantic.py's `_PARSERS` / `_LOADERS`.
- `LearnedEncoder`: the inference wrapper (eval, no grad, no text tower).
- `save_encoder`: weights (safetensors) + the JSON above into a model dir.

Inference builds the thumbnail with `semantic.thumbnail(lr, thumb_size)` (shorter side -> thumb_size,
center crop, streamed over huge LRs); training uses F.interpolate on square crops, which agrees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInput
from .encoders import SPEC_NAME, SemanticEncoder, SemanticSpec

KIND = "learned"
WEIGHTS_FILE = "semantic_encoder.safetensors"
THUMB_SIZE = 64  # default thumbnail side
CHANNELS = (32, 64, 128, 128)  # default conv widths: 64 -> 32 -> 16 -> 8 -> 4 px
_KEYS = {"kind", "weights", "embed_dim", "thumb_size", "channels"}
_ROUNDTRIP_KEYS = {"model", "text"}  # SemanticSpec.to_dict's shape: model = {"thumb_size", "channels"}


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
    """A trained `SemanticNet` for inference (semantic.semantic_vector); image only."""

    kind = KIND

    def __init__(self, net: SemanticNet, image_size: int, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.embed_dim = net.embed_dim
        self.image_size = int(image_size)
        self.has_text = False

    def encode_image(self, thumb: torch.Tensor) -> torch.Tensor:
        if thumb.ndim != 4 or tuple(thumb.shape[1:]) != (3, self.image_size, self.image_size):
            raise BadInput(f"expected a (B, 3, {self.image_size}, {self.image_size}) thumbnail, got "
                           f"{tuple(thumb.shape)}")
        with torch.no_grad():
            return self.net(thumb.to(self.device, torch.float32)).float()  # (B, D)


# ---- the spec (semantic._PARSERS["learned"]) ------------------------------------------------------------
def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def parse_spec(data: dict, model_dir: Path, vector_dim: int, where: str) -> SemanticSpec:
    """The "learned" entry of `semantic_encoder.json` -> SemanticSpec(model={"thumb_size", "channels"}).

    Also accepts the shape `SemanticSpec.to_dict` writes ("model": {...}, "text": false), so a spec
    written back by `semantic.write_spec` still reads.
    """
    unknown = sorted(set(data) - _KEYS - _ROUNDTRIP_KEYS)
    if unknown:
        raise BadInput(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KEYS))})")
    data = dict(data)
    model = data.pop("model", None)
    if isinstance(model, dict):
        for key in ("thumb_size", "channels"):
            data.setdefault(key, model.get(key))
    elif model is not None:
        raise BadInput(f"{where}: kind 'learned' takes 'thumb_size' and 'channels', not model {model!r}")
    if data.pop("text", False) is not False:
        raise BadInput(f"{where}: the learned semantic encoder has no text tower ('text' must be false)")
    for key in ("weights", "embed_dim", "thumb_size", "channels"):
        if data.get(key) is None:
            raise BadInput(f"{where}: kind 'learned' needs '{key}'")
    weights, embed_dim, thumb, channels = data["weights"], data["embed_dim"], data["thumb_size"], data["channels"]
    if not _positive_int(embed_dim):
        raise BadInput(f"{where}: 'embed_dim' must be a positive integer, got {embed_dim!r}")
    if embed_dim != vector_dim:
        raise BadInput(f"{where}: embed_dim {embed_dim} != the model's vector_dim {vector_dim} (config.json)")
    if not _positive_int(thumb):
        raise BadInput(f"{where}: 'thumb_size' must be a positive integer, got {thumb!r}")
    if not (isinstance(channels, list) and channels and all(_positive_int(c) for c in channels)):
        raise BadInput(f"{where}: 'channels' must be a non-empty list of positive integers, got {channels!r}")
    if not (isinstance(weights, str) and weights.endswith(".safetensors")):
        raise BadInput(f"{where}: 'weights' must name a .safetensors file, got {weights!r}")
    spec = SemanticSpec(kind=KIND, model={"thumb_size": thumb, "channels": list(channels)}, weights=weights,
                        embed_dim=embed_dim, text=False)
    path = spec.weights_path(model_dir)
    if not path.is_file():
        raise BadInput(f"{where}: the semantic encoder weights {path} do not exist")
    return spec


# ---- loading (semantic._LOADERS["learned"]) and saving ---------------------------------------------------
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
