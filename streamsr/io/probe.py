"""Probing inputs: what a PNG, JPEG, TIFF or zarr input is, from its header alone, and its identity.

Inputs are recognised by their first bytes, not their suffix (zarr: a directory with zarr metadata).
`probe(path)` accepts what `read_image` can decode: PNG and JPEG within Pillow's decompression-bomb
limit (`PIL.Image.MAX_IMAGE_PIXELS`, honoured here, never changed), TIFFs of 8/16-bit unsigned gray/
gray+alpha/RGB/RGBA (tiled or stripped, BigTIFF, any size) and zarr arrays. `probe(path, stream=True)`
accepts what `iter_row_bands` can stream: also non-interlaced PNGs beyond Pillow's limit, and JPEGs
beyond it when libvips (`pyvips`) is importable. `input_sha256` is an input's identity (file bytes, or
every file of a zarr store). Also here: the Pillow/tifffile openers and `pillow_pixels`, shared by the
readers. Every problem raises a one-line `BadInput` naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import png
import tifffile
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from ..errors import BadInput
from .info import INPUT_FORMATS, ImageInfo, check_dims
from .problems import bad_input, one_line, reason
from .zarr_input import is_zarr_dir, probe_zarr

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
DECODE_ERRORS = (  # what the decoders raise for a broken file
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error, zlib.error,
    png.Error, Image.DecompressionBombError, tifffile.TiffFileError,
)

# Pillow's default, stated here because a truncated input must fail, never decode as grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def check_readable(path: Path) -> bytes:
    """The file's first 64 bytes, after refusing a missing, empty, unreadable or non-file path."""
    if not path.exists():
        raise bad_input(path, "no such file")
    if path.is_dir():
        if is_zarr_dir(path):
            return b""
        raise bad_input(path, "is a directory, not an image")
    try:
        if path.stat().st_size == 0:
            raise bad_input(path, "is empty (0 bytes)")
        with open(path, "rb") as f:
            return f.read(64)
    except OSError as e:
        raise bad_input(path, f"cannot read: {reason(e)}") from e


def _sniff(head: bytes) -> str:
    if head.startswith(PNG_MAGIC):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in _TIFF_MAGICS:
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return ""


def _unsupported_format(path: Path) -> BadInput:
    """Name the format if Pillow knows it, else say it is not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                fmt = im.format
    except Exception:  # noqa: BLE001 - anything Pillow cannot identify is "not an image"
        fmt = None
    supported = ", ".join(INPUT_FORMATS)
    if fmt:
        return bad_input(path, f"is a {fmt} image; supported input formats: {supported}")
    return bad_input(path, f"is not an image (supported input formats: {supported})")


def _check_pillow_limit(path: Path, fmt: str, width: int, height: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise bad_input(path, f"{fmt} image is {width}x{height} ({width * height / 1e6:.1f} MP), above "
                              f"Pillow's limit of {limit / 1e6:.1f} MP (PIL.Image.MAX_IMAGE_PIXELS); "
                              f"convert it to a tiled TIFF (e.g. vips tiffsave in.{fmt.lower()} in.tif "
                              f"--tile --bigtiff) and pass that instead")


def png_header(path: Path, head: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) straight from the IHDR chunk."""
    if len(head) < 29 or head[12:16] != b"IHDR":
        raise bad_input(path, "is not a valid PNG: missing IHDR header")
    width, height, depth, ctype = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, ctype


def _png_mode(path: Path, depth: int, ctype: int, has_trns: bool) -> tuple[str, int]:
    """streamsr mode and bit depth of a PNG: palettes become RGB(A), <8-bit grey becomes 8-bit."""
    if ctype == 3:
        return ("RGBA" if has_trns else "RGB"), 8
    mode = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}.get(ctype)
    if mode is None:
        raise bad_input(path, f"is not a valid PNG: unknown colour type {ctype}")
    return mode, 16 if depth == 16 else 8


def open_pillow(path: Path, fmt: str) -> Image.Image:
    """Open lazily (header only) with the format's plugin; the pixel limit is checked by us."""
    cls = {"PNG": PngImagePlugin.PngImageFile, "WEBP": WebPImagePlugin.WebPImageFile}.get(
        fmt, JpegImagePlugin.JpegImageFile)
    try:
        return cls(os.fspath(path))
    except DECODE_ERRORS as e:
        raise bad_input(path, f"is not a valid {fmt}: {reason(e)}") from e


def _jpeg_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
        return 1


def over_pillow_limit(width: int, height: int) -> bool:
    """Above Pillow's decompression-bomb limit (`read_image` refuses such PNG and JPEG)."""
    limit = Image.MAX_IMAGE_PIXELS
    return bool(limit) and width * height > limit


def _probe_png(path: Path, head: bytes, stream: bool = False) -> ImageInfo:
    width, height, depth, ctype = png_header(path, head)
    check_dims(path, width, height)
    if not stream:
        _check_pillow_limit(path, "PNG", width, height)
    elif over_pillow_limit(width, height) and head[28] != 0:
        raise bad_input(path, f"is an interlaced PNG of {width}x{height} ({width * height / 1e6:.1f} MP), above "
                              f"Pillow's limit of {Image.MAX_IMAGE_PIXELS / 1e6:.1f} MP, which cannot be read by "
                              "rows; convert it to a tiled TIFF (e.g. vips tiffsave in.png in.tif --tile --bigtiff)")
    with open_pillow(path, "PNG") as im:  # reads the chunks before IDAT only, whatever the size
        mode, bits = _png_mode(path, depth, ctype, "transparency" in im.info)
        frames = getattr(im, "n_frames", 1)  # APNG: acTL, which comes before IDAT
    if frames > 1:
        raise bad_input(path, f"is an animated PNG (APNG) of {frames} frames; streamsr upscales one still "
                              f"image: save the frame you want as a PNG first (e.g. ffmpeg -i {path.name} "
                              "-frames:v 1 frame.png for the first one)")
    return ImageInfo(path, width, height, len(mode), mode, bits, "PNG")


def pyvips_or_none():
    """The pyvips module, or None where it (or libvips) cannot be loaded."""
    try:
        import pyvips  # noqa: PLC0415 - optional
    except Exception:  # noqa: BLE001 - ImportError, or OSError/ffi errors when libvips is missing
        return None
    return pyvips


def _probe_jpeg(path: Path, stream: bool = False) -> ImageInfo:
    with open_pillow(path, "JPEG") as im:
        width, height = im.size
        orientation = _jpeg_orientation(im)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        mode = im.mode
    if mode == "CMYK" and stream and over_pillow_limit(width, height):
        raise bad_input(path, "is a CMYK JPEG above Pillow's limit, which cannot be read by rows; convert it "
                              "to an RGB tiled TIFF (e.g. vips icc_transform in.jpg in.tif srgb)")
    if mode == "CMYK":  # converted to sRGB through its ICC profile when read (streamsr.io.read)
        mode = "RGB"
    if mode not in ("L", "RGB"):
        raise bad_input(path, f"is a JPEG in mode {mode}, which is not supported (only grey and RGB)")
    check_dims(path, width, height)
    if not stream or not over_pillow_limit(width, height):
        _check_pillow_limit(path, "JPEG", width, height)
    elif pyvips_or_none() is None:
        raise bad_input(path, f"JPEG image is {width}x{height} ({width * height / 1e6:.1f} MP), above Pillow's "
                              f"limit of {Image.MAX_IMAGE_PIXELS / 1e6:.1f} MP; reading it by rows needs pyvips "
                              '(pip install "pyvips[binary]"), or convert it to a tiled TIFF (e.g. vips tiffsave '
                              "in.jpg in.tif --tile --bigtiff) and pass that instead")
    elif orientation != 1:
        raise bad_input(path, f"JPEG image is {width}x{height}, above Pillow's limit, with EXIF orientation "
                              f"{orientation}, which cannot be applied by rows; convert it to a tiled TIFF "
                              "(e.g. vips tiffsave in.jpg in.tif --tile --bigtiff) and pass that instead")
    return ImageInfo(path, width, height, len(mode), mode, 8, "JPEG")


class _LogCollector(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(one_line(record.getMessage()))


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[_LogCollector]:
    """Collect, instead of printing, tifffile's log lines while a header is parsed."""
    log, collector = logging.getLogger("tifffile"), _LogCollector()
    propagate, log.propagate = log.propagate, False
    log.addHandler(collector)
    try:
        yield collector
    finally:
        log.removeHandler(collector)
        log.propagate = propagate


def open_tiff(path: Path) -> tifffile.TiffFile:
    """The TIFF, its first IFD parsed (quietly); BadInput naming `path` for what is not a valid TIFF."""
    with _quiet_tifffile() as log:
        try:
            tf = tifffile.TiffFile(path)
            try:
                tf.pages.first  # noqa: B018 - parse the first IFD now, quietly
            except BaseException:
                tf.close()
                raise
            return tf
        except DECODE_ERRORS as e:
            why = reason(e)
            if len(why) < 8 and log.messages:  # e.g. IndexError(0): the log says why
                why = log.messages[-1]
            raise bad_input(path, f"is not a valid TIFF: {why}") from e


_TIFF_MODES = {("MINISBLACK", 1): "L", ("MINISBLACK", 2): "LA", ("RGB", 3): "RGB",
               ("RGB", 4): "RGBA", ("YCBCR", 3): "RGB"}
_TIFF_KINDS = {"PALETTE": "palette", "SEPARATED": "CMYK", "MINISWHITE": "min-is-white",
               "CIELAB": "CIE L*a*b*", "MASK": "transparency mask"}


def _tiff_mode(path: Path, page: tifffile.TiffPage) -> tuple[str, int]:
    dtype, bits = page.dtype, page.bitspersample
    if page.sampleformat == 3:
        raise bad_input(path, f"is a {bits}-bit floating-point TIFF, which is not supported; "
                              "convert it to 8- or 16-bit unsigned integers")
    if dtype not in (np.uint8, np.uint16):
        raise bad_input(path, f"has {bits}-bit TIFF samples of sample format {page.sampleformat}; "
                              "only 8- and 16-bit unsigned integers are supported")
    photometric = getattr(page.photometric, "name", str(page.photometric))
    mode = _TIFF_MODES.get((photometric, page.samplesperpixel))
    if mode is None and photometric in _TIFF_KINDS:
        raise bad_input(path, f"is a {_TIFF_KINDS[photometric]} TIFF, which is not supported; "
                              "convert it to grey or RGB")
    if mode is None:
        raise bad_input(path, f"is a TIFF with photometric {photometric} and {page.samplesperpixel} "
                              "samples per pixel; supported: grey, grey+alpha, RGB, RGBA")
    return mode, 8 if dtype == np.uint8 else 16


def _tiff_page_info(path: Path, page: tifffile.TiffPage) -> ImageInfo:
    width, height = page.imagewidth, page.imagelength
    check_dims(path, width, height)
    if page.imagedepth > 1:
        raise bad_input(path, "is a volumetric (3-D) TIFF, which is not supported")
    mode, bits = _tiff_mode(path, page)
    try:
        tifffile.TIFF.DECOMPRESSORS[page.compression]
    except KeyError:
        name = getattr(page.compression, "name", page.compression)
        raise bad_input(path, f"uses TIFF compression {name}, which needs the 'imagecodecs' package "
                              "(pip install imagecodecs) or re-saving with zlib or no compression") from None
    return ImageInfo(path, width, height, len(mode), mode, bits, "TIFF")


def _probe_webp(path: Path) -> ImageInfo:
    with open_pillow(path, "WEBP") as im:
        width, height = im.size
        frames, mode = getattr(im, "n_frames", 1), im.mode
        orientation = _jpeg_orientation(im)
    if frames > 1:
        raise bad_input(path, f"is an animated WebP ({frames} frames), which is not supported")
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    check_dims(path, width, height)
    _check_pillow_limit(path, "WEBP", width, height)
    mode = "RGBA" if "A" in mode else "RGB"
    return ImageInfo(path, width, height, len(mode), mode, 8, "WEBP")


def full_pages(tf: tifffile.TiffFile) -> int:
    """The top-level pages of a TIFF that are images of their own: not reduced-resolution copies or masks
    (NewSubfileType bits 0 and 2; a pyramid stored as pages, or a thumbnail, is one image)."""
    return sum(1 for page in tf.pages if not int(getattr(page, "subfiletype", 0) or 0) & 0b101)


def _probe_tiff(path: Path) -> ImageInfo:
    """The first page's header. A TIFF of several images (pages, an ImageJ stack) is refused rather than
    silently reduced to its first page."""
    with open_tiff(path) as tf:
        info = _tiff_page_info(path, tf.pages.first)
        pages = full_pages(tf)
    if pages > 1:
        raise bad_input(path, f"is a multi-page TIFF of {pages} pages; streamsr upscales one image: save the "
                              f"page you want as a TIFF first (e.g. tiffcp {path.name},0 page.tif for page 0)")
    return info


def probe(path: os.PathLike | str, *, stream: bool = False) -> ImageInfo:
    """Read only the header of a PNG, JPEG, TIFF or zarr array; BadInput for what cannot be read.

    No pixels are decoded: PNG size from IHDR, JPEG from its SOF marker, TIFF from the first IFD's
    tags, zarr from the array metadata. By default a PNG or JPEG above Pillow's pixel limit is refused
    (what `read_image` cannot decode); with stream=True it is accepted whenever `iter_row_bands` can
    read it by rows (non-interlaced PNG of any size; JPEG when pyvips is importable).
    """
    path = Path(path)
    head = check_readable(path)
    if path.is_dir():
        return probe_zarr(path)
    fmt = _sniff(head)
    if fmt == "PNG":
        return _probe_png(path, head, stream)
    if fmt == "JPEG":
        return _probe_jpeg(path, stream)
    if fmt == "TIFF":
        return _probe_tiff(path)
    if fmt == "WEBP":
        return _probe_webp(path)
    raise _unsupported_format(path)


def input_sha256(path: os.PathLike | str) -> str:
    """SHA-256 identity of an input: a file's bytes; for a zarr store (a directory), the relative
    path and bytes of every file under it, in sorted order (hidden files such as .DS_Store are
    skipped, zarr v2's .zarray/.zattrs/.zgroup are not)."""
    import hashlib  # noqa: PLC0415

    path = Path(path)
    digest = hashlib.sha256()

    def feed(file: Path) -> None:
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)

    if not path.is_dir():
        feed(path)
        return digest.hexdigest()
    keep = {".zarray", ".zattrs", ".zgroup", ".zmetadata"}
    files = sorted(p for p in path.rglob("*") if p.is_file() and
                   not any(part.startswith(".") and part not in keep for part in p.relative_to(path).parts))
    for file in files:
        rel = file.relative_to(path).as_posix().encode()
        digest.update(len(rel).to_bytes(4, "big") + rel + file.stat().st_size.to_bytes(8, "big"))
        feed(file)
    return digest.hexdigest()


def pillow_pixels(im: Image.Image, info: ImageInfo) -> np.ndarray:
    """Integer (H, W, C) array in the mode and depth `probe` announced."""
    if info.bit_depth == 16:  # only 16-bit grey PNG comes here (mode I;16, I;16B or I)
        data = np.asarray(im).astype(np.uint16)
    else:
        if im.mode != info.mode:
            im = im.convert(info.mode)
        data = np.asarray(im)
    return data.reshape(data.shape[0], data.shape[1], info.channels)  # (H, W, C)

