"""The global semantic vector of one LR image (Inf-DiT's CLIP vector, FACTS.md sections 1.5 and 3).

The steps: the model dir's spec (spec.py) names the encoder kind; `load_encoder` builds that kind's
encoder (`SemanticEncoder`, base.py) with the loader in `_LOADERS` (open_clip.py, learned.py); the
encoder embeds the streamed thumbnail of the LR (thumbnail.py); with text prompts, the text direction
is added. With text guidance (FACTS.md 3; off in the released code) the vector is
    normalize(e_img + 2 e_txt(pos) - 2 e_txt(neg)).

- `load_encoder`: the encoder a spec names, one loader per kind (`_LOADERS`; kind "none" has none).
- `text_direction`: the text-guidance formula (pure).
- `semantic_vector`: all of it for one LR image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import BadInput
from . import learned, open_clip
from .base import SemanticEncoder
from .spec import SPEC_NAME, SemanticSpec, read_spec
from .thumbnail import thumbnail

TEXT_WEIGHT = 2.0  # official e_img + 2 e_pos - 2 e_neg

# kind -> loader(model dir, spec, device) -> SemanticEncoder ("none" has no encoder)
_LOADERS: dict[str, Callable[[Path, SemanticSpec, Any], SemanticEncoder]] = {
    "open_clip": open_clip.load_encoder,
    "learned": learned.load_encoder,
}


def load_encoder(model_dir: str | Path, spec: SemanticSpec, device: str | torch.device = "cpu") -> SemanticEncoder:
    """The encoder a spec names, in eval mode on `device`; BadInput for kind 'none' or unusable files."""
    loader = _LOADERS.get(spec.kind)
    if loader is None:
        raise BadInput(f"semantic encoder kind {spec.kind!r} has no encoder to load")
    return loader(Path(model_dir), spec, device)


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

    `lr` is a tensor, numpy or zarr array of shape (1, 3, h, w) or (3, h, w), read in tiles. With
    prompts (either alone is allowed) the text direction is added (FACTS.md 3); BadInput when the
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
