"""What an input image is (`ImageInfo`, as `probe` reports it), its pixel modes and the size limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .problems import bad_input

MAX_SIDE = 2**31  # pixels per side; more is refused as absurd
MAX_PIXELS = 2**40  # pixels in all; more is refused as absurd
INPUT_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "ZARR")
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # channels -> mode


@dataclass(frozen=True)
class ImageInfo:
    """What `probe` learns from an image header (orientation already applied for JPEG EXIF)."""

    path: Path
    width: int
    height: int
    channels: int  # 1-4
    mode: str  # "L", "LA", "RGB", "RGBA"
    bit_depth: int  # 8 or 16
    format: str  # "PNG", "JPEG", "TIFF", "ZARR"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels), the shape `read_image` returns."""
        return (self.height, self.width, self.channels)


def check_dims(path: Path, width: int, height: int) -> None:
    """BadInput for an empty or absurd image size."""
    if width <= 0 or height <= 0:
        raise bad_input(path, f"has an empty size ({width}x{height} pixels)")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise bad_input(path, f"has absurd dimensions {width}x{height} "
                              f"(limits: {MAX_SIDE} pixels per side, {MAX_PIXELS} pixels in all)")
