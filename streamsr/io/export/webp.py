"""WebP export: 8-bit RGB or RGBA (grey becomes RGB) through Pillow, with the ICC profile, EXIF and DPI."""

from __future__ import annotations

from pathlib import Path

from ..atomic import partial_path
from .base import ArraySource, ExportOptions, Progress, pillow_save

SUFFIXES = (".webp",)
MAX_SIDE = 16383  # the format's limit


def temporaries(path: Path) -> list[Path]:
    return [partial_path(path)]


def export_webp(src: ArraySource, path: Path, options: ExportOptions, progress: Progress | None) -> None:
    """Write `src` to `path` as a lossy WebP at options.quality (lossless at quality 100)."""
    pillow_save(src, path, options, progress, fmt="WEBP", max_side=MAX_SIDE, alpha=True,
                lossless=options.quality >= 100, method=4)
