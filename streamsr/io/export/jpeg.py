"""JPEG export: 8-bit grey or RGB (alpha dropped) through Pillow, with the ICC profile, EXIF and DPI."""

from __future__ import annotations

from pathlib import Path

from ..atomic import partial_path
from .base import ArraySource, ExportOptions, Progress, pillow_save

SUFFIXES = (".jpg", ".jpeg")
MAX_SIDE = 65500  # the format's limit


def temporaries(path: Path) -> list[Path]:
    return [partial_path(path)]


def export_jpeg(src: ArraySource, path: Path, options: ExportOptions, progress: Progress | None) -> None:
    """Write `src` to `path` as a baseline JPEG at options.quality (4:2:0 below quality 90, else 4:4:4)."""
    pillow_save(src, path, options, progress, fmt="JPEG", max_side=MAX_SIDE, alpha=False,
                subsampling=0 if options.quality >= 90 else 2, optimize=True)
