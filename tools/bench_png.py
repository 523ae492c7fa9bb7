"""Benchmark the streaming PNG writer (streamsr.io.png.PngWriter) against the previous writer and libvips.

Why: issue 13 measured the PNG writer (numpy Paeth + zlib level 6 on one core) at ~18.5 s for 8192^2,
about 5 minutes for a gigapixel PNG. This tool times each writer on the same image, fed by 256-row bands
as an export feeds them, and checks that every PNG decodes back to the same pixels.

Images (RGB, 8-bit, S x S):
  photo      a photograph (data/photos.json's Dragonfly, centre square) downscaled to S/4 with Lanczos and
             upscaled x4 bicubic: smooth like an upscaler's output
  native     distinct 2048^2 crops of data/photos.json's photographs at their own resolution, as a mosaic:
             textured, like a `--mode detail` output
  synthetic  tools/bench_export.py's gradients + periodic noise tile (no photograph needed)
Writers:
  old        the previous writer, kept here as the reference: numpy Paeth filter + one zlib level-6 stream
  new        PngWriter (Up filter, zlib-ng level PNG_ZLIB_LEVEL, deflated on --workers threads)
  new1       PngWriter on one thread
  vips       libvips pngsave (compression 6, its default filter), from the whole image in memory (not
             streaming), when pyvips is installed

    .venv/bin/python -m tools.bench_png --size 8192 --images photo,native,synthetic --repeats 2

Notes (2 cores shared with a training run and other engineers' tests, so wall times are noisy; CPU
seconds are the process's, all threads; zlib-ng 2.3.3 (the `zlib-ng` 1.1.0 package), zlib 1.2.13,
isal 1.9.1, pyvips-binary 8.18.7). Chosen: Up filter, zlib-ng level 4, up to 8 threads. Before the change,
component figures on the photo image (filtered once, then compressed by each library in one stream;
wall seconds; sizes in MiB):

    filter       zlib 6        zlib-ng 3     zlib-ng 4     zlib-ng 5     zlib-ng 6     isal 2
    Paeth        16.0 s 28.8   2.5 s 31.0    3.2 s 30.0    4.2 s 29.4    8.0 s 28.6    0.4 s 33.7
    Up           7.9 s  25.2   2.0 s 27.4    2.7 s 26.2    3.2 s 25.7    5.9 s 25.0    0.6 s 31.1
    (a 3072^2 native-resolution crop, scaled x7.1 to 8192^2: Paeth/zlib 6 19.0 s 57.3 MiB;
     Up/zlib-ng 4 4.6 s 54.7; Up/isal 2 1.0 s 62.4)

The numpy Paeth filter alone took ~2.4-3.4 s for 8192^2 RGB, Up ~0.1 s. On both photographs Up compresses
smaller than Paeth (libpng's per-row minimum-sum heuristic picks Paeth for >99% of rows, and is worse).
isal is the fastest but 15-20% larger; zlib-ng 4 is smaller than the old writer's output at ~1/5 of its
compression time on one core.

End-to-end at 8192^2 RGB (`--images photo,native,synthetic --writers old,new1,new,vips --repeats 2`; new =
2 threads here; load average 5-9 during the runs, so the CPU seconds are the steadier figure; wall is the
best of the two runs, with the other run's in brackets where it differed much):

    image      writer             wall (s)       CPU (s)   size (MiB)
    photo      old (Paeth, zlib 6)  19.3 (15.3)   12.8      28.8
               new, 1 thread         3.4 (8.4)     2.2      26.2
               new, 2 threads        5.5 (6.9)     2.2      26.2
               libvips pngsave 6     4.8 (17.0)    3.4      75.9
    native     old                  20.6 (51.6)   15.8      62.1
               new, 1 thread         3.4 (10.9)    2.9      62.3
               new, 2 threads        4.2 (7.6)     2.8      62.3
               libvips pngsave 6     6.0 (10.1)    3.7     106.7
    synthetic  old                   8.5 (16.8)    5.2      36.0
               new, 1 thread         1.3           0.9      16.2
               new, 2 threads        1.3           0.9      16.2
               libvips pngsave 6     9.0 (16.9)    5.9     186.1

Every PNG decodes (Pillow) to the written pixels. The new writer does 4.5-6x less work at the same size
(native +0.3%) or smaller (photo -9%, synthetic -55%); libvips (its default filter: none) is fast but
writes 1.7-11x larger files. On 2 busy cores the second thread cannot show; the pieces are independent, so
on an idle machine with N cores the deflate part (~85% of the CPU seconds) divides by up to N (8 at most).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import png

ROOT = Path(__file__).resolve().parents[1]
BAND = 256  # rows per write, as an export's source bands
PHOTO = "Dragonfly_by_Bolly"


def _photos() -> list[str]:
    """The photographs of data/photos.json, largest first."""
    from PIL import Image

    paths = [e["path"] for e in json.loads((ROOT / "data" / "photos.json").read_text())["images"]]
    sizes = {}
    for path in paths:
        with Image.open(path) as im:
            sizes[path] = im.size[0] * im.size[1]
    return sorted(paths, key=lambda p: -sizes[p])


def _upscaled(size: int) -> np.ndarray:
    """The Dragonfly photograph's centre square, down to size/4 (Lanczos), then x4 bicubic: (S, S, 3)."""
    from PIL import Image

    with Image.open(next(p for p in _photos() if PHOTO in p)) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        small = im.resize((size // 4, size // 4), Image.LANCZOS)
        return np.asarray(small.resize((size, size), Image.BICUBIC))


def _mosaic(size: int, tile: int = 2048) -> np.ndarray:
    """(S, S, 3): distinct tile^2 crops of the photographs at their own resolution, none repeated (a repeated
    tile within deflate's 32 KiB window would compress unrealistically well)."""
    from PIL import Image

    crops = []
    want = (-(-size // tile)) ** 2
    for path in _photos():
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))  # (h, w, 3)
        for y in range(0, pixels.shape[0] - tile + 1, tile):
            for x in range(0, pixels.shape[1] - tile + 1, tile):
                crops.append(pixels[y: y + tile, x: x + tile])
        if len(crops) >= want:
            break
    if len(crops) < want:
        raise SystemExit(f"only {len(crops)} distinct {tile}^2 crops in data/photos.json, {want} needed")
    n = -(-size // tile)
    rows = [np.concatenate(crops[r * n: (r + 1) * n], axis=1) for r in range(n)]
    return np.ascontiguousarray(np.concatenate(rows)[:size, :size])


def make_image(kind: str, size: int) -> np.ndarray:
    """The (S, S, 3) uint8 test image `kind`."""
    if kind == "photo":
        return _upscaled(size)
    if kind == "native":
        return _mosaic(size)
    from tools.bench_export import synthetic_band

    noise = np.random.default_rng(0).integers(-12, 13, (97, 97, 3)).astype(np.int16)
    return np.concatenate([synthetic_band(y, min(BAND, size - y), size, 3, noise)
                           for y in range(0, size, BAND)])


def _paeth(raw: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """The previous writer's filter: PNG type 4 of scanlines (n, L) below `prev` (L,) -> (n, 1 + L)."""
    x = raw.astype(np.int16)
    b = np.concatenate([prev[None], raw[:-1]]).astype(np.int16)  # above
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]  # left
    c = np.zeros_like(x)
    c[:, bpp:] = b[:, :-bpp]  # above-left
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    out = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)
    out[:, 0] = 4
    out[:, 1:] = (x - pred) & 0xFF
    return out


def write_old(image: np.ndarray, path: Path) -> None:
    """The previous PngWriter: Paeth rows, 1 MiB per numpy pass, one zlib level-6 stream."""
    height, width, channels = image.shape
    with open(path, "wb") as fh:
        png.Writer(width, height, greyscale=False, bitdepth=8).write_preamble(fh)
        zip_, prev = zlib.compressobj(6), np.zeros(width * channels, np.uint8)
        rows = image.reshape(height, -1)  # (H, W * C)
        step = max(1, (1 << 20) // rows.shape[1])
        data = bytearray()
        for y in range(0, height, step):
            data += zip_.compress(_paeth(rows[y: y + step], prev, channels))
            prev = rows[min(height, y + step) - 1]
        data += zip_.flush()
        for i in range(0, len(data), 1 << 20):
            png.write_chunk(fh, b"IDAT", bytes(data[i: i + (1 << 20)]))
        png.write_chunk(fh, b"IEND")


def write_new(image: np.ndarray, path: Path, *, workers: int | None) -> None:
    from streamsr.io.png import PngWriter

    height, width, channels = image.shape
    with PngWriter(path, width, height, channels, 8, workers=workers) as writer:
        for y in range(0, height, BAND):
            writer.write_rows(image[y: y + BAND])


def write_vips(image: np.ndarray, path: Path) -> None:
    import pyvips

    height, width, channels = image.shape
    vim = pyvips.Image.new_from_memory(image.tobytes(), width, height, channels, "uchar")
    vim.pngsave(os.fspath(path), compression=6)


def decoded_equal(path: Path, image: np.ndarray) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        return bool(np.array_equal(np.asarray(im), image))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--images", default="photo,native")
    ap.add_argument("--writers", default="old,new1,new,vips")
    ap.add_argument("--workers", type=int, default=None, help="threads of `new` (default: the CPUs, <= 8)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp")
    args = ap.parse_args(argv)
    from streamsr.io.deflate import cpu_workers, zlib_impl
    from streamsr.io.png import PNG_ZLIB_LEVEL

    print(f"# {args.size}^2 RGB, band {BAND} rows; new = Up + {zlib_impl.__name__} level {PNG_ZLIB_LEVEL}, "
          f"{args.workers or cpu_workers()} thread(s); load average {os.getloadavg()[0]:.1f}")
    writers = {"old": write_old, "new1": lambda im, p: write_new(im, p, workers=1),
               "new": lambda im, p: write_new(im, p, workers=args.workers), "vips": write_vips}
    for kind in args.images.split(","):
        image = make_image(kind, args.size)
        for name in args.writers.split(","):
            path = Path(args.workdir) / f"bench_png_{kind}_{name}.png"
            best = None
            for _ in range(args.repeats):
                wall, cpu = time.perf_counter(), time.process_time()
                try:
                    writers[name](image, path)
                except ImportError as e:
                    print(f"{kind:9s} {name:5s} skipped: {e}")
                    break
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                best = (wall, cpu) if best is None or wall < best[0] else best
            if best is None:
                continue
            size_mib = path.stat().st_size / 2**20
            ok = decoded_equal(path, image)
            print(f"{kind:9s} {name:5s} wall {best[0]:6.2f} s  cpu {best[1]:6.2f} s  {size_mib:6.1f} MiB  "
                  f"decodes equal: {ok}", flush=True)
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
