"""PNG export: the source's rows, band by band, into the streaming PNG writer (streamsr.io.png)."""

from __future__ import annotations

from pathlib import Path

from ..write import open_writer
from .base import ArraySource, ExportOptions, Progress, report

SUFFIXES = (".png",)


def temporaries(path: Path) -> list[Path]:
    """What a failed PNG export may leave (nothing: the row writer cleans up after itself)."""
    return []


def export_png(src: ArraySource, path: Path, options: ExportOptions, progress: Progress | None) -> None:
    """Write `src` to `path` as a PNG (the writer renames it onto `path` when complete)."""
    chunks = options.meta.png_chunks() if options.meta else []
    with open_writer(path, src.width, src.height, src.channels, src.bit_depth, chunks=chunks) as writer:
        for y0, band in src.bands():
            writer.write_rows(band)
            report(progress, y0 + len(band), src.height)
