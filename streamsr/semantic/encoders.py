"""The global semantic vector of an LR image (Inf-DiT's CLIP vector, FACTS.md sections 1.5 and 3).

A model dir is self-contained: `semantic_encoder.json` in it names the encoder that turns the LR image
into the `vector_dim`-sized unit vector the transformer takes (ModelConfig.vector_dim):

    {"kind": "none"}                                   # the model takes no vector (vector_dim == 0)
    {"kind": "open_clip",
     "model": "ViT-L-14" | {inline open_clip model config: embed_dim, vision_cfg, text_cfg, ...},
     "weights": "<file in the model dir, or an absolute path>.safetensors",
     "embed_dim": 768,                                 # must equal the model's vector_dim
     "text": false}                                    # true: the weights hold a usable text tower
    {"kind": "learned", "weights": "semantic_encoder.safetensors", "embed_dim": 32, "thumb_size": 64,
     "channels": [...]}                                # the default model's small CNN (learned_encoder.py)

A missing file means kind "none", valid only when vector_dim == 0. Weights are safetensors only (no
pickle) and nothing is ever downloaded: the open_clip architecture is built with `pretrained=None`.

The official vector (FACTS.md 1.5) is, from the LR image x in [-1, 1]:
    thumb = CenterCrop(224)(Resize(224, BICUBIC, antialias)((x + 1) / 2))      (torchvision, no clamp)
    e     = F.normalize(model.encode_image(Normalize(OpenAI mean/std)(thumb), normalize=True))
and with text guidance (FACTS.md 3; off in the released code): e + 2 e_txt(pos) - 2 e_txt(neg), renormalised.

- `SemanticSpec`, `read_spec`, `write_spec`: the JSON above, validated against the model's vector_dim.
- `thumbnail`: the preprocessing geometry, streamed over tiles of the LR (a huge LR is never read at once).
  torch's float32 antialiased resize places its taps with float32 arithmetic, which is up to ~1e-4 off
  the exact kernel (`upsample.axis_weights`) once a side reaches ~1000 px; `torch_axis_weights` replays
  that float32 arithmetic so the thumbnail equals torchvision's (the official pipeline's) to ~1e-6.
- `load_encoder` -> `SemanticEncoder` (`encode_image`, `encode_text`): one loader per kind (`_LOADERS`).
- `text_direction`: the text-guidance formula (pure).
- `semantic_vector`: all of it for one LR image.

Adding a kind: a parser in `_PARSERS` (JSON dict -> SemanticSpec) and a loader in `_LOADERS`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadInput
from ..core.resample import axis_weights

SPEC_NAME = "semantic_encoder.json"
THUMB_SIZE = 224  # CLIP input side (ViT-L-14)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # = open_clip.constants.OPENAI_DATASET_MEAN
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)  # = open_clip.constants.OPENAI_DATASET_STD
TEXT_WEIGHT = 2.0  # official e_img + 2 e_pos - 2 e_neg
_UNUSED_PARAMS = ("logit_scale", "logit_bias")  # CLIP-level parameters that no encoder path uses


# ---- the spec ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SemanticSpec:
    """One `semantic_encoder.json`. `model` is a built-in open_clip name or an inline config dict;
    `weights` is as written in the file (relative to the model dir unless absolute)."""

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


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadInput(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


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
    if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim <= 0:
        raise BadInput(f"{where}: 'embed_dim' must be a positive integer, got {embed_dim!r}")
    if embed_dim != vector_dim:
        raise BadInput(f"{where}: embed_dim {embed_dim} != the model's vector_dim {vector_dim} (config.json)")
    if not isinstance(text, bool):
        raise BadInput(f"{where}: 'text' must be true or false, got {text!r}")
    if not (isinstance(weights, str) and weights.endswith(".safetensors")):
        raise BadInput(f"{where}: 'weights' must name a .safetensors file, got {weights!r}")
    spec = SemanticSpec(kind="open_clip", model=model, weights=weights, embed_dim=embed_dim, text=text)
    path = spec.weights_path(model_dir)
    if not path.is_file():
        raise BadInput(f"{where}: the semantic encoder weights {path} do not exist")
    return spec


# kind -> parser(json dict, model dir, vector_dim, file name for messages) -> SemanticSpec
_PARSERS: dict[str, Callable[[dict, Path, int, str], SemanticSpec]] = {
    "none": _parse_none,
    "open_clip": _parse_open_clip,
    # learned_encoder.py imports this module, so it is reached lazily
    "learned": lambda *args: __import__(f"{__package__}.learned", fromlist=["_"]).parse_spec(*args),
}


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


# ---- the thumbnail -------------------------------------------------------------------------------------
def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(size) output (h, w): shorter side -> size, longer side int(size * long / short)."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (new_long, size) if w <= h else (size, new_long)


def crop_offsets(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision's CenterCrop(size) (top, left) on an h x w image with h, w >= size."""
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def _cubic_f32(x: np.ndarray) -> np.ndarray:
    """torch's `aa_filter` for bicubic (Keys, a = -0.5), evaluated in float32 as in ATen."""
    a, x = np.float32(-0.5), np.abs(x).astype(np.float32)
    near = ((a + np.float32(2)) * x - (a + np.float32(3))) * x * x + np.float32(1)  # |x| < 1
    far = ((a * x - np.float32(5) * a) * x + np.float32(8) * a) * x - np.float32(4) * a  # 1 <= |x| < 2
    return np.where(x < 1, near, np.where(x < 2, far, np.float32(0))).astype(np.float32)


def torch_axis_weights(in_size: int, out_size: int, out_start: int, out_stop: int) -> tuple[int, int, torch.Tensor]:
    """`upsample.axis_weights` as torch's float32 CPU kernel computes it (ATen `_compute_weights_aa`).

    Same contract: (in_start, in_stop, W float64 (out_stop - out_start, in_stop - in_start)), but the
    scale, tap centres, filter and normalisation are rounded to float32 where ATen rounds them.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    if not 0 <= out_start < out_stop <= out_size:
        raise ValueError(f"output range [{out_start}, {out_stop}) is empty or outside [0, {out_size})")
    f32, f64 = np.float32, np.float64
    scale = f32(in_size) / f32(out_size)  # area_pixel_compute_scale<float>
    support = f32(2.0 * f64(scale)) if scale >= 1.0 else f32(2.0)  # interp_size 4 * 0.5, widened when downscaling
    invscale = f32(1.0 / f64(scale)) if scale >= 1.0 else f32(1.0)
    i = np.arange(out_start, out_stop, dtype=f64)  # (n,)
    center = (f64(scale) * (i + 0.5)).astype(f32)  # (n,) float32: the source of the deviation
    xmin = np.maximum(np.trunc((center - support).astype(f64) + 0.5), 0).astype(np.int64)  # (n,)
    xmax = np.minimum(np.trunc((center + support).astype(f64) + 0.5), in_size).astype(np.int64)  # (n,)
    taps = int((xmax - xmin).max())
    idx = xmin[:, None] + np.arange(taps)[None, :]  # (n, taps) input indices
    arg = ((idx.astype(f32) - center[:, None]).astype(f64) + 0.5) * f64(invscale)  # (n, taps)
    w = np.where(idx < xmax[:, None], _cubic_f32(arg.astype(f32)), f32(0)).astype(f32)  # (n, taps)
    total = np.zeros(len(i), dtype=f32)  # (n,) summed in tap order, in float32
    for k in range(taps):
        total = (total + w[:, k]).astype(f32)
    w = (w / total[:, None]).astype(f32)  # (n, taps)
    nz = w != 0
    lo = int(np.where(nz, idx, in_size).min())
    hi = int(np.where(nz, idx, -1).max()) + 1
    W = torch.zeros(len(i), hi - lo, dtype=torch.float64)  # (n, hi-lo)
    rows = np.broadcast_to(np.arange(len(i))[:, None], idx.shape)
    W[torch.from_numpy(rows[nz].copy()), torch.from_numpy(idx[nz] - lo)] = torch.from_numpy(w[nz].astype(f64))
    return lo, hi, W


def _lr_hw(lr) -> tuple[int, int]:
    """(h, w) of an LR of shape (1, 3, h, w) or (3, h, w); BadInput otherwise."""
    shape = tuple(int(s) for s in lr.shape)
    if not (len(shape) in (3, 4) and shape[-3] == 3 and (len(shape) == 3 or shape[0] == 1)):
        raise BadInput(f"the LR image must have shape (1, 3, h, w) or (3, h, w), got {shape}")
    if shape[-2] <= 0 or shape[-1] <= 0:
        raise BadInput(f"the LR image is empty: shape {shape}")
    return shape[-2], shape[-1]


def _read_tile(lr, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """lr[..., y0:y1, x0:x1] as a float64 CPU tensor (3, y1-y0, x1-x0)."""
    tile = lr[..., y0:y1, x0:x1]
    tile = tile.detach().cpu() if isinstance(tile, torch.Tensor) else torch.from_numpy(np.asarray(tile))
    return tile.to(torch.float64).reshape(3, y1 - y0, x1 - x0)


def thumbnail(lr, size: int = THUMB_SIZE, strip_rows: int = 256, strip_cols: int = 4096,
              exact: bool = False) -> torch.Tensor:
    """CLIP's input geometry of an LR in [-1, 1]: (1, 3, size, size) float32 in [0, 1] (not clamped).

    Equals `center_crop(resize((lr + 1) / 2, size, BICUBIC, antialias=True), size)` (torchvision on a
    float32 tensor, no clamp) to ~1e-6, but reads `lr` (a tensor, numpy or zarr array of shape
    (1, 3, h, w) or (3, h, w)) only in tiles `lr[..., y0:y1, x0:x1]` of at most strip_rows x strip_cols,
    and only the rows and columns that reach the crop. The resize is separable: out = sum over tiles of
    Wy[:, rows] @ tile @ Wx[:, cols]^T, in float64. `exact=True` uses the exact kernel
    (`upsample.axis_weights`, = torch in float64) instead of torch's float32 tap placement.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if strip_rows <= 0 or strip_cols <= 0:
        raise ValueError(f"strip_rows and strip_cols must be positive, got {strip_rows}, {strip_cols}")
    h, w = _lr_hw(lr)
    rh, rw = resized_size(h, w, size)
    top, left = crop_offsets(rh, rw, size)
    weights = axis_weights if exact else torch_axis_weights
    iy0, iy1, wy = weights(h, rh, top, top + size)  # wy: (size, iy1-iy0), crop rows only
    ix0, ix1, wx = weights(w, rw, left, left + size)  # wx: (size, ix1-ix0), crop cols only
    out = torch.zeros(3, size, size, dtype=torch.float64)  # (3, size, size)
    for y0 in range(iy0, iy1, strip_rows):
        y1 = min(y0 + strip_rows, iy1)
        wy_s = wy[:, y0 - iy0:y1 - iy0]  # (size, y1-y0)
        for x0 in range(ix0, ix1, strip_cols):
            x1 = min(x0 + strip_cols, ix1)
            tile = (_read_tile(lr, y0, y1, x0, x1) + 1.0) / 2.0  # (3, y1-y0, x1-x0) in [0, 1]
            out += wy_s @ tile @ wx[:, x0 - ix0:x1 - ix0].T  # (3, size, size)
    return out.to(torch.float32)[None]  # (1, 3, size, size)


# ---- encoders ------------------------------------------------------------------------------------------
class SemanticEncoder:
    """An image (and maybe text) encoder giving unit vectors of size `embed_dim`.

    Subclasses set `kind`, `embed_dim`, `image_size` (thumbnail side), `has_text` and implement
    `encode_image` (and `encode_text` when `has_text`).
    """

    kind = "base"
    embed_dim: int
    image_size: int = THUMB_SIZE
    has_text: bool = False

    def encode_image(self, thumb: torch.Tensor) -> torch.Tensor:
        """(B, 3, image_size, image_size) in [0, 1] -> (B, embed_dim) float32 unit vectors."""
        raise NotImplementedError

    def encode_text(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """(n,) prompts -> (n, embed_dim) float32 unit vectors; BadInput without a text tower."""
        raise BadInput(f"the {self.kind} semantic encoder has no text tower, so it cannot use text prompts")


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
    import open_clip

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
        if thumb.ndim != 4 or tuple(thumb.shape[1:]) != (3, self.image_size, self.image_size):
            raise BadInput(f"expected a (B, 3, {self.image_size}, {self.image_size}) thumbnail, got "
                           f"{tuple(thumb.shape)}")
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


def _load_open_clip(model_dir: Path, spec: SemanticSpec, device: str | torch.device) -> SemanticEncoder:
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


# kind -> loader(model dir, spec, device) -> SemanticEncoder ("none" has no encoder)
_LOADERS: dict[str, Callable[[Path, SemanticSpec, Any], SemanticEncoder]] = {
    "open_clip": _load_open_clip,
    "learned": lambda *args: __import__(f"{__package__}.learned", fromlist=["_"]).load_encoder(*args),
}


def load_encoder(model_dir: str | Path, spec: SemanticSpec, device: str | torch.device = "cpu") -> SemanticEncoder:
    """The encoder a spec names, in eval mode on `device`; BadInput for kind 'none' or unusable files."""
    loader = _LOADERS.get(spec.kind)
    if loader is None:
        raise BadInput(f"semantic encoder kind {spec.kind!r} has no encoder to load")
    return loader(Path(model_dir), spec, device)


# ---- the vector ----------------------------------------------------------------------------------------
def text_direction(e_img: torch.Tensor, e_pos: torch.Tensor | None = None, e_neg: torch.Tensor | None = None,
                   weight: float = TEXT_WEIGHT) -> torch.Tensor:
    """normalize(e_img + weight * e_pos - weight * e_neg) over the last dim; a missing prompt adds nothing."""
    e = e_img
    if e_pos is not None:
        e = e + weight * e_pos
    if e_neg is not None:
        e = e - weight * e_neg
    return F.normalize(e, dim=-1)


def semantic_vector(model_dir: str | Path, vector_dim: int, lr, prompt_pos: str | None = None,
                    prompt_neg: str | None = None, device: str | torch.device = "cpu") -> torch.Tensor | None:
    """The (1, vector_dim) float32 CPU unit vector of an LR image in [-1, 1], or None for kind 'none'.

    With prompts (either alone is allowed) the text direction is added (FACTS.md 3); BadInput when the
    model dir's encoder has no text tower, or takes no vector at all.
    """
    spec = read_spec(model_dir, vector_dim)
    prompts = prompt_pos is not None or prompt_neg is not None
    if spec.kind == "none":
        if prompts:
            raise BadInput(f"model dir {model_dir} takes no semantic vector, so text prompts cannot be used")
        return None
    if prompts and not spec.text:
        raise BadInput(f"the semantic encoder of model dir {model_dir} has no text tower (\"text\": false in "
                       f"{SPEC_NAME}), so text prompts cannot be used")
    encoder = load_encoder(model_dir, spec, device)
    e = encoder.encode_image(thumbnail(lr, encoder.image_size))  # (1, D)
    if prompts:
        e_pos = encoder.encode_text([prompt_pos]) if prompt_pos is not None else None  # (1, D)
        e_neg = encoder.encode_text([prompt_neg]) if prompt_neg is not None else None  # (1, D)
        e = text_direction(e, e_pos, e_neg)
    return e.float().cpu()
