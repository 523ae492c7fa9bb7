"""PNG streamed both ways: a reader of non-interlaced PNGs of any size by row bands, and the row writer.

Reading (`png_bands`): the zlib stream of the IDAT chunks is inflated incrementally (CRCs checked) and
each band's scanlines are un-filtered by Pillow's C decoder, fed as a small stored PNG behind the last
raw row above (filter type 0); 16-bit colour and sub-byte depths go through pypng instead (slower).
`read_png16` decodes a whole 16-bit colour PNG through pypng (Pillow truncates it to 8 bits).

Writing (`PngWriter`, a `RowWriter`): pypng's header and chunk helpers, Up-filtered rows fed to one zlib
stream deflated on several threads (streamsr.io.deflate), IDAT chunks of about 1 MiB.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import png
from PIL import PngImagePlugin

from ..errors import BadInput
from .atomic import RowWriter
from .deflate import ParallelDeflate, cpu_workers
from .depth import to_float
from .info import ImageInfo
from .probe import DECODE_ERRORS, PNG_MAGIC, pillow_pixels, png_header
from .problems import bad_input, reason
from .pyramid import Rebander

PNG_ZLIB_LEVEL = 4  # PNG output zlib(-ng) level: chosen by tools/bench_png.py (its notes hold the figures)
_FILTER_BYTES = 1 << 20  # raw bytes filtered per numpy pass
_IDAT_BYTES = 1 << 20  # compressed bytes gathered into one IDAT chunk
_PNG_PLANES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_PIECE = 1 << 20  # compressed bytes read at a time
_PNG_DECODE_PIXELS = 1 << 22  # pixels un-filtered per Pillow call
# 16-bit types whose scanlines are byte-for-byte an 8-bit type with the same bytes per pixel, which
# Pillow un-filters in C: grey (2 bytes/pixel) as 8-bit grey+alpha, grey+alpha (4) as 8-bit RGBA.
_PNG_AS_8BIT = {(8, 0): 0, (8, 2): 2, (8, 3): 3, (8, 4): 4, (8, 6): 6, (16, 0): 4, (16, 4): 6}


# ----------------------------------------------------------------------------- reading


def _png_corrupt(path: Path, problem: str) -> BadInput:
    return bad_input(path, f"is a corrupt or truncated PNG: {problem}")


def _png_chunks(path: Path, f) -> Iterator[tuple[bytes, bytes]]:
    """(type, data) of the chunks after the signature, up to IEND, CRCs checked; IDAT data comes
    in pieces of at most _PNG_PIECE bytes (its CRC is checked after the last piece)."""
    f.seek(len(PNG_MAGIC))
    while True:
        header = f.read(8)
        if len(header) < 8:
            raise _png_corrupt(path, "the file ends before the IEND chunk")
        length, kind = struct.unpack(">I4s", header)
        crc, left, data = zlib.crc32(kind), length, bytearray()
        while left:
            piece = f.read(min(left, _PNG_PIECE))
            if not piece:
                raise _png_corrupt(path, f"the file ends inside a {kind.decode('latin-1')} chunk")
            crc, left = zlib.crc32(piece, crc), left - len(piece)
            if kind == b"IDAT":
                yield kind, piece
            elif kind in (b"PLTE", b"tRNS", b"IEND"):
                data += piece
        stored = f.read(4)
        if len(stored) < 4 or struct.unpack(">I", stored)[0] != crc:
            raise _png_corrupt(path, f"bad CRC in its {kind.decode('latin-1')} chunk")
        if kind != b"IDAT":
            yield kind, bytes(data)
        if kind == b"IEND":
            return


class _PngScanlines:
    """The filtered scanlines of a non-interlaced PNG, inflated incrementally, in blocks of rows."""

    def __init__(self, path: Path, f, height: int, stride: int):
        self.path, self.height, self.stride = path, height, stride
        self._chunks = _png_chunks(path, f)
        self.pre: list[tuple[bytes, bytes]] = []  # PLTE and tRNS
        self._first: bytes | None = None
        for kind, data in self._chunks:
            if kind == b"IDAT":
                self._first = data
                break
            if kind in (b"PLTE", b"tRNS"):
                self.pre.append((kind, data))
            if kind == b"IEND":
                raise _png_corrupt(path, "it has no image data (IDAT)")

    def _idat(self) -> Iterator[bytes]:
        if self._first is not None:
            yield self._first
        seen_other = False
        for kind, data in self._chunks:
            if kind == b"IDAT":
                if seen_other:
                    raise _png_corrupt(self.path, "its IDAT chunks are not consecutive")
                yield data
            else:
                seen_other = True

    def _drain(self) -> None:
        """Read the remaining IDAT chunks (their CRCs are checked), up to the next chunk."""
        for kind, _ in self._chunks:
            if kind != b"IDAT":
                return

    def blocks(self, rows: int) -> Iterator[bytes]:
        """Filtered scanlines (1 filter byte + row bytes each), `rows` rows at a time."""
        inflate, pending, done = zlib.decompressobj(), bytearray(), 0
        try:
            for data in itertools.chain(self._idat(), [b""]):
                while True:
                    want = min(rows, self.height - done) * self.stride
                    limit = max(want - len(pending), 1 << 16)
                    out = inflate.decompress(data, limit)
                    pending += out
                    data = inflate.unconsumed_tail
                    while done < self.height and len(pending) >= min(rows, self.height - done) * self.stride:
                        n = min(rows, self.height - done) * self.stride
                        if done + n // self.stride == self.height:
                            self._drain()  # check the CRCs of the rest of the image data first
                        yield bytes(pending[:n])
                        del pending[:n]
                        done += n // self.stride
                    if done == self.height:
                        return
                    if not data and len(out) < limit:
                        break
                if inflate.eof:
                    break
        except zlib.error as e:
            raise _png_corrupt(self.path, f"zlib: {reason(e)}") from e
        raise _png_corrupt(self.path, f"the image data ends after {done} of {self.height} rows")


def _png_mini(width: int, rows: int, ctype: int, pre: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A small 8-bit PNG holding already filtered scanlines (stored, not compressed)."""
    out = io.BytesIO()
    out.write(PNG_MAGIC)
    png.write_chunk(out, b"IHDR", struct.pack(">IIBBBBB", width, rows, 8, ctype, 0, 0, 0))
    for kind, data in pre:
        png.write_chunk(out, kind, data)
    png.write_chunk(out, b"IDAT", zlib.compress(body, 0))
    png.write_chunk(out, b"IEND", b"")
    return out.getvalue()


def _png_stream_pillow(info: ImageInfo, depth: int, ctype: int, band_rows: int):
    """Bands of a big PNG: the scanlines of each step, behind the last raw row of the step above
    (filter type 0), are un-filtered by Pillow's decoder as a small stored PNG."""
    as_ctype = _PNG_AS_8BIT[(depth, ctype)]
    planes = _PNG_PLANES[ctype]
    row_bytes = info.width * planes * depth // 8
    step = max(1, min(band_rows, _PNG_DECODE_PIXELS // info.width))
    ready: list[tuple[int, np.ndarray]] = []
    bands = Rebander(band_rows, info.height, info.width, info.channels, np.uint16 if depth == 16 else np.uint8,
                     lambda y0, band: ready.append((y0, to_float(band, info.bit_depth))))
    with open(info.path, "rb") as f:
        lines = _PngScanlines(info.path, f, info.height, 1 + row_bytes)
        pre = lines.pre if ctype == 3 else []
        previous: bytes | None = None
        for block in lines.blocks(step):
            n = len(block) // (1 + row_bytes)
            body = block if previous is None else b"\x00" + previous + block
            try:
                mini = _png_mini(info.width, n + (previous is not None), as_ctype, pre, body)
                with PngImagePlugin.PngImageFile(io.BytesIO(mini)) as im:
                    im.load()
                    raw = np.asarray(im)  # (rows, W) or (rows, W, planes of the 8-bit type)
                    if depth == 16:  # (rows, W, planes) big-endian
                        pixels = raw.reshape(len(raw), -1).view(">u2").reshape(len(raw), info.width, planes)
                    else:
                        pixels = pillow_pixels(im, info)  # (rows, W, C)
            except DECODE_ERRORS as e:
                raise _png_corrupt(info.path, reason(e)) from e
            previous = raw[-1].tobytes()
            bands(pixels[len(pixels) - n:, :, : info.channels])  # (n, W, C): without the row above
            yield from ready
            ready.clear()


def _png_stream_pypng(info: ImageInfo, depth: int, ctype: int, band_rows: int):
    """Bands of a big PNG through pypng (pure Python, slower): 16-bit colour and sub-byte depths."""
    try:
        reader = png.Reader(filename=os.fspath(info.path))
        if depth < 8:  # raw values, scaled or looked up as Pillow does
            _, _, rows, meta = reader.read()
            if ctype == 3:
                palette = np.zeros((256, 4), np.uint8)
                palette[:, 3] = 255
                entries = np.array(reader.palette(alpha="force"), np.uint8).reshape(-1, 4)
                palette[: len(entries)] = entries
                lut = palette[:, : info.channels]
            else:
                lut = (np.arange(256) * 255 // ((1 << depth) - 1)).clip(0, 255).astype(np.uint8)[:, None]
        else:  # 16-bit colour: as `read_image` does (read_png16)
            _, _, rows, meta = reader.asDirect()
            lut = None
        planes = 1 if lut is not None else meta["planes"]
        dtype = np.uint8 if lut is not None else np.uint16
        for y0 in range(0, info.height, band_rows):
            n = min(band_rows, info.height - y0)
            raw = np.empty((n, info.width * planes), dtype)
            for i in range(n):
                raw[i] = next(rows)
            raw = raw.reshape(n, info.width, planes)  # (n, W, planes)
            pixels = lut[raw[:, :, 0]] if lut is not None else raw[:, :, : info.channels]  # (n, W, C)
            yield y0, to_float(pixels, info.bit_depth)
    except StopIteration:
        raise _png_corrupt(info.path, "the image data ends early") from None
    except DECODE_ERRORS as e:
        raise _png_corrupt(info.path, reason(e)) from e


def png_bands(info: ImageInfo, band_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Bands of a non-interlaced PNG of any size; no more than a band is decoded at a time."""
    with open(info.path, "rb") as f:
        head = f.read(64)
    _, _, depth, ctype = png_header(info.path, head)
    if (depth, ctype) in _PNG_AS_8BIT:
        return _png_stream_pillow(info, depth, ctype, band_rows)
    return _png_stream_pypng(info, depth, ctype, band_rows)


def read_png16(info: ImageInfo) -> np.ndarray:
    """16-bit colour PNG through pypng (Pillow would drop to 8 bits)."""
    try:
        width, height, rows, meta = png.Reader(filename=os.fspath(info.path)).asDirect()
        planes = meta["planes"]
        data = np.empty((height, width * planes), np.uint16)
        for y, row in enumerate(rows):
            data[y] = row
    except DECODE_ERRORS as e:
        raise bad_input(info.path, f"is a corrupt or truncated PNG: {reason(e)}") from e
    return data.reshape(height, width, planes)[:, :, : info.channels]  # (H, W, C)


# ----------------------------------------------------------------------------- writing


def up_filter(raw: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """PNG filter type 2 (Up: each byte minus the byte above) for raw scanlines (n, L) uint8 below the
    scanline `prev` (L,); returns the filtered scanlines (n, 1 + L) with their filter-type byte.

    Why Up and not Paeth: on photographs and their upscales (tools/bench_png.py) Up compresses 5-13%
    smaller than Paeth and costs one subtraction per byte where numpy's Paeth took ~3 s per 8192^2 RGB.
    """
    out = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)  # (n, 1 + L)
    out[:, 0] = 2
    np.subtract(raw[0], prev, out=out[0, 1:])  # uint8 arithmetic wraps modulo 256, as PNG wants
    np.subtract(raw[1:], raw[:-1], out=out[1:, 1:])
    return out


class PngWriter(RowWriter):
    """PNG through pypng's header and chunk writers: Up-filtered rows, deflated as one zlib stream on
    `workers` threads (streamsr.io.deflate); the bytes do not depend on `workers`."""

    def __init__(self, *args, chunks: list[tuple[bytes, bytes]] = (), workers: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._prev = np.zeros(self.width * self.channels * self.dtype.itemsize, np.uint8)
        self._zip = ParallelDeflate(PNG_ZLIB_LEVEL if self.compress else 0,
                                    workers=cpu_workers() if workers is None else workers)
        self._pending = bytearray()
        header = png.Writer(self.width, self.height, greyscale=self.channels <= 2,
                            alpha=self.channels in (2, 4), bitdepth=self.bit_depth)
        self._guarded(header.write_preamble, self._file)
        for kind, data in chunks:  # metadata before the pixels
            self._guarded(png.write_chunk, self._file, kind, data)

    def _emit(self, pieces: list[bytes], *, final: bool = False) -> None:
        """Gather compressed bytes; write IDAT chunks of exactly _IDAT_BYTES, and the rest at the end: the
        chunks are cut at fixed offsets of the zlib stream, so the file's bytes do not depend on how many
        pieces the deflate threads had ready at each call."""
        for piece in pieces:
            self._pending += piece
        while len(self._pending) >= _IDAT_BYTES:
            png.write_chunk(self._file, b"IDAT", bytes(self._pending[:_IDAT_BYTES]))
            del self._pending[:_IDAT_BYTES]
        if final and self._pending:
            png.write_chunk(self._file, b"IDAT", bytes(self._pending))
            self._pending.clear()

    def _write(self, rows: np.ndarray) -> None:
        raw = rows.astype(">u2", copy=False) if self.bit_depth == 16 else rows
        raw = raw.view(np.uint8).reshape(len(rows), -1)  # (n, W * C * bytes)
        step = max(1, _FILTER_BYTES // raw.shape[1])
        for i in range(0, len(raw), step):
            block = raw[i: i + step]  # (m, W * C * bytes)
            self._emit(self._zip.feed(up_filter(block, self._prev)))
            self._prev = block[-1].copy()

    def _finish(self) -> None:
        self._emit(self._zip.finish(), final=True)
        png.write_chunk(self._file, b"IEND")

    def _cancel(self) -> None:
        self._zip.close()
