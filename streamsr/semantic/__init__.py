"""The global semantic vector of an LR image, one topic per file (dependencies run down the list):

    thumbnail.py  the encoder's input: torchvision's Resize + CenterCrop of the LR, streamed over tiles
    spec.py       the model dir's semantic_encoder.json: SemanticSpec, read_spec, write_spec
    base.py       the encoder interface, SemanticEncoder
    open_clip.py  kind "open_clip": the official CLIP vector from safetensors weights (no download)
    learned.py    kind "learned": the default model's small CNN, trained with the transformer
    encoders.py   load_encoder (one loader per kind), text_direction, semantic_vector

`from streamsr.semantic import semantic_vector` (and the other names below) is the public surface.
"""

from .base import SemanticEncoder
from .encoders import load_encoder, semantic_vector, text_direction
from .spec import SPEC_NAME, SemanticSpec, read_spec, write_spec
from .thumbnail import thumbnail

__all__ = ["SPEC_NAME", "SemanticEncoder", "SemanticSpec", "load_encoder", "read_spec", "semantic_vector",
           "text_direction", "thumbnail", "write_spec"]
