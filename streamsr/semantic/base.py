"""The semantic encoder interface: what the encoder of every kind gives (unit vectors of size embed_dim).

Each kind implements it in its own file (open_clip.py, learned.py); encoders.py loads the one a model
dir's spec names. It lives apart from encoders.py so that those files can subclass it while
encoders.py imports them (no import cycle).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import BadInput
from .thumbnail import THUMB_SIZE


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

    def check_thumbnail(self, thumb: torch.Tensor) -> None:
        """BadInput unless thumb is (B, 3, image_size, image_size)."""
        if thumb.ndim != 4 or tuple(thumb.shape[1:]) != (3, self.image_size, self.image_size):
            raise BadInput(f"expected a (B, 3, {self.image_size}, {self.image_size}) thumbnail, got "
                           f"{tuple(thumb.shape)}")
