"""The model dir's `semantic_encoder.json`: which encoder turns the LR image into the model's vector.

A model dir is self-contained: this file names the encoder that turns the LR image into the
`vector_dim`-sized unit vector the transformer takes (ModelConfig.vector_dim):

    {"kind": "none"}                                   # the model takes no vector (vector_dim == 0)
    {"kind": "open_clip",
     "model": "ViT-L-14" | {inline open_clip model config: embed_dim, vision_cfg, text_cfg, ...},
     "weights": "<file in the model dir, or an absolute path>.safetensors",
     "embed_dim": 768,                                 # must equal the model's vector_dim
     "text": false}                                    # true: the weights hold a usable text tower
    {"kind": "learned", "weights": "semantic_encoder.safetensors", "embed_dim": 32, "thumb_size": 64,
     "channels": [...]}                                # the default model's small CNN (learned.py)

A missing file means kind "none", valid only when vector_dim == 0. Weights are safetensors only (no
pickle); the weights file must exist, but is not opened here (the loaders in encoders.py do that).

- `SemanticSpec`: one parsed file (frozen); `weights_path` resolves the weights against the model dir.
- `read_spec`: the validated spec of a model dir, one parser per kind (`_PARSERS`); `write_spec`.

Adding a kind: a parser in `_PARSERS` here and a loader in encoders.py's `_LOADERS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInput

SPEC_NAME = "semantic_encoder.json"
_LEARNED_KEYS = {"kind", "weights", "embed_dim", "thumb_size", "channels"}
_LEARNED_ROUNDTRIP_KEYS = {"model", "text"}  # SemanticSpec.to_dict's shape: model = {"thumb_size", "channels"}


@dataclass(frozen=True)
class SemanticSpec:
    """One `semantic_encoder.json`. `model` is a built-in open_clip name or an inline config dict (kind
    "open_clip") or {"thumb_size", "channels"} (kind "learned"); `weights` is as written in the file
    (relative to the model dir unless absolute)."""

    kind: str = "none"
    model: str | dict | None = field(default=None, hash=False)
    weights: str | None = None
    embed_dim: int = 0
    text: bool = False

    def weights_path(self, model_dir: str | Path) -> Path | None:
        """The weights file, resolved against the model dir; None when the kind has no weights."""
        if self.weights is None:
            return None
        path = Path(self.weights)
        return path if path.is_absolute() else Path(model_dir) / path

    def to_dict(self) -> dict:
        if self.kind == "none":
            return {"kind": "none"}
        return {"kind": self.kind, "model": self.model, "weights": self.weights, "embed_dim": self.embed_dim,
                "text": self.text}


# ---- one parser per kind -------------------------------------------------------------------------------
def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadInput(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_embed_dim(embed_dim: Any, vector_dim: int, where: str) -> None:
    if not _positive_int(embed_dim):
        raise BadInput(f"{where}: 'embed_dim' must be a positive integer, got {embed_dim!r}")
    if embed_dim != vector_dim:
        raise BadInput(f"{where}: embed_dim {embed_dim} != the model's vector_dim {vector_dim} (config.json)")


def _with_weights(spec: SemanticSpec, model_dir: Path, where: str) -> SemanticSpec:
    """The spec, once its weights name an existing .safetensors file."""
    if not (isinstance(spec.weights, str) and spec.weights.endswith(".safetensors")):
        raise BadInput(f"{where}: 'weights' must name a .safetensors file, got {spec.weights!r}")
    path = spec.weights_path(model_dir)
    if not path.is_file():
        raise BadInput(f"{where}: the semantic encoder weights {path} do not exist")
    return spec


def _parse_none(data: dict, model_dir: Path, vector_dim: int, where: str) -> SemanticSpec:
    _check_keys(data, {"kind"}, where)
    if vector_dim:
        raise BadInput(f"{where}: kind 'none' gives no semantic vector, but the model needs one of size "
                       f"{vector_dim} (config.json vector_dim)")
    return SemanticSpec()


def _parse_open_clip(data: dict, model_dir: Path, vector_dim: int, where: str) -> SemanticSpec:
    _check_keys(data, {"kind", "model", "weights", "embed_dim", "text"}, where)
    for key in ("model", "weights", "embed_dim"):
        if key not in data:
            raise BadInput(f"{where}: kind 'open_clip' needs '{key}'")
    model, weights, embed_dim, text = data["model"], data["weights"], data["embed_dim"], data.get("text", False)
    if isinstance(model, dict):
        if not isinstance(model.get("vision_cfg"), dict):
            raise BadInput(f"{where}: the inline open_clip config 'model' has no 'vision_cfg' dict")
        if "embed_dim" in model and model["embed_dim"] != embed_dim:
            raise BadInput(f"{where}: the inline config's embed_dim {model['embed_dim']} != embed_dim {embed_dim}")
    elif not (isinstance(model, str) and model):
        raise BadInput(f"{where}: 'model' must be an open_clip model name or an inline config dict, got {model!r}")
    _check_embed_dim(embed_dim, vector_dim, where)
    if not isinstance(text, bool):
        raise BadInput(f"{where}: 'text' must be true or false, got {text!r}")
    spec = SemanticSpec(kind="open_clip", model=model, weights=weights, embed_dim=embed_dim, text=text)
    return _with_weights(spec, model_dir, where)


def _parse_learned(data: dict, model_dir: Path, vector_dim: int, where: str) -> SemanticSpec:
    """The "learned" entry -> SemanticSpec(model={"thumb_size", "channels"}).

    Also accepts the shape `SemanticSpec.to_dict` writes ("model": {...}, "text": false), so a spec
    written back by `write_spec` still reads.
    """
    unknown = sorted(set(data) - _LEARNED_KEYS - _LEARNED_ROUNDTRIP_KEYS)
    if unknown:
        raise BadInput(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_LEARNED_KEYS))})")
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
    _check_embed_dim(embed_dim, vector_dim, where)
    if not _positive_int(thumb):
        raise BadInput(f"{where}: 'thumb_size' must be a positive integer, got {thumb!r}")
    if not (isinstance(channels, list) and channels and all(_positive_int(c) for c in channels)):
        raise BadInput(f"{where}: 'channels' must be a non-empty list of positive integers, got {channels!r}")
    spec = SemanticSpec(kind="learned", model={"thumb_size": thumb, "channels": list(channels)}, weights=weights,
                        embed_dim=embed_dim, text=False)
    return _with_weights(spec, model_dir, where)


# kind -> parser(json dict, model dir, vector_dim, file name for messages) -> SemanticSpec
_PARSERS: dict[str, Callable[[dict, Path, int, str], SemanticSpec]] = {
    "none": _parse_none,
    "open_clip": _parse_open_clip,
    "learned": _parse_learned,
}


# ---- the file ------------------------------------------------------------------------------------------
def read_spec(model_dir: str | Path, vector_dim: int) -> SemanticSpec:
    """The validated semantic encoder spec of a model dir whose transformer takes `vector_dim` (0: none)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise BadInput(f"model dir {model_dir} does not exist or is not a directory")
    path = model_dir / SPEC_NAME
    if not path.is_file():
        if vector_dim:
            raise BadInput(f"model dir {model_dir} has no {SPEC_NAME}, but its model needs a semantic vector of "
                           f"size {vector_dim}: add one naming the encoder (kind 'open_clip', model, weights)")
        return SemanticSpec()
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "kind" not in data:
        raise BadInput(f"{path}: expected a JSON object with a 'kind' ({', '.join(_PARSERS)})")
    parser = _PARSERS.get(data["kind"])
    if parser is None:
        raise BadInput(f"{path}: unknown semantic encoder kind {data['kind']!r} (known: {', '.join(_PARSERS)})")
    return parser(data, model_dir, vector_dim, str(path))


def write_spec(model_dir: str | Path, spec: SemanticSpec) -> Path:
    """Write `semantic_encoder.json` into the model dir; returns its path."""
    if spec.kind not in _PARSERS:
        raise ValueError(f"unknown semantic encoder kind {spec.kind!r} (known: {', '.join(_PARSERS)})")
    path = Path(model_dir) / SPEC_NAME
    path.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    return path
