"""Image input and output for streamsr: probe, read and stream-write PNG, JPEG and TIFF; read zarr.

Inputs (the low-resolution image) are PNG, JPEG or TIFF files, recognised by their first bytes, not
their suffix, or zarr arrays (a directory). PNG and JPEG are decoded with Pillow (16-bit colour PNG
with pypng, because Pillow truncates it to 8 bits). `read_image` decodes whole and keeps PNG and
JPEG within Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, which this module
honours but never changes). TIFFs are read with tifffile (8/16-bit unsigned, gray/gray+alpha/RGB/
RGBA, tiled or stripped, BigTIFF) and have no pixel limit.

Huge inputs are read by `iter_row_bands` band by band, never whole: TIFFs strip/tile row by strip/
tile row, zarr arrays chunk row by chunk row, PNGs beyond Pillow's limit row by row (non-interlaced
only: the zlib stream is inflated incrementally and each band is un-filtered by Pillow's C decoder,
or by pypng for 16-bit colour and sub-byte depths), and JPEGs beyond Pillow's limit with libvips
(`pyvips`) when it is importable (else BadInput suggesting a tiled TIFF). `probe(path)` reads only
headers and accepts what `read_image` can decode; `probe(path, stream=True)` accepts what
`iter_row_bands` can stream (the size of any supported file, however large).

Zarr input (format "ZARR"): the path of a zarr v3 or v2 array, or of a group that holds either an
OME-Zarr multiscale image (its first, full-resolution dataset is read) or exactly one array. The
array is uint8 or uint16 and 2-D (H, W) or 3-D with 1-4 channels. Its channel axis is found from
the array's dimension names (v3) or the OME axes ("c" or "channel" first or last); without names a
3-D array is (H, W, C) when its last axis has 1-4 entries, else (C, H, W) when its first has. Leading
axes of length 1 (OME "t"/"z") are dropped.

Outputs (the upsampled image, possibly gigapixel) are never held whole in memory: a `RowWriter`
takes rows top to bottom and streams them into `<stem>.partial<suffix>` beside the target, which
is renamed over the target only once every row has arrived. PNG is written with pypng's chunk
helpers (Paeth-filtered, zlib); TIFF is a tiled (256 x 256) zlib BigTIFF written by tifffile from
a tile generator that holds one row of tiles. (Pyramidal TIFF, OME-Zarr and DeepZoom outputs are
in `streamsr.export`.)

Every problem with a user's file raises `BadInput` (exit 2), a failure while writing the output
raises `OutputError` (exit 1); both carry one line that names the file.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import queue
import struct
import tempfile
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import png
import tifffile
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin

from ..errors import BadInput, StreamsrError

MAX_SIDE = 2**31  # pixels per side; more is refused as absurd
MAX_PIXELS = 2**40  # pixels in all; more is refused as absurd
TILE = 256  # TIFF output tile size
ZLIB_LEVEL = 6  # PNG and TIFF output compression level
OUTPUT_SUFFIXES = (".png", ".tif", ".tiff")
INPUT_FORMATS = ("PNG", "JPEG", "TIFF", "ZARR")
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_FILTER_BYTES = 1 << 20  # raw bytes Paeth-filtered per numpy pass (bounds the int16 temporaries)
_IDAT_BYTES = 1 << 20  # compressed bytes gathered into one IDAT chunk
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error, zlib.error,
    png.Error, Image.DecompressionBombError, tifffile.TiffFileError,
)

# Pillow's default, stated here because a truncated input must fail, never decode as grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class OutputError(StreamsrError):
    """Writing the output failed (disk full, I/O error); nothing was left at the target."""

    exit_code = 1


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


# ----------------------------------------------------------------------------- small helpers


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    """The OS reason of an OSError ("No space left on device"), else the exception's text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _one_line(exc) or type(exc).__name__


def _bad(path: os.PathLike | str, problem: str) -> BadInput:
    return BadInput(_one_line(f"{path}: {problem}"))


def _output_error(path: Path, exc: BaseException) -> OutputError:
    return OutputError(_one_line(f"{path}: cannot write output: {_reason(exc)}"))


def _max_value(bit_depth: int) -> int:
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, not {bit_depth!r}")
    return 255 if bit_depth == 8 else 65535


def _uint_dtype(bit_depth: int) -> type[np.unsignedinteger]:
    return np.uint8 if _max_value(bit_depth) == 255 else np.uint16


def to_uint(x: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float samples in [0, 1] to uint8/uint16: clipped, rounded to nearest, NaN as 0."""
    top = _max_value(bit_depth)
    y = np.multiply(x, top, dtype=np.float32)
    np.nan_to_num(y, copy=False, nan=0.0)
    np.clip(y, 0, top, out=y)
    np.rint(y, out=y)
    return y.astype(_uint_dtype(bit_depth))


def _to_float(data: np.ndarray, bit_depth: int) -> np.ndarray:
    out = data.astype(np.float32)
    out /= np.float32(_max_value(bit_depth))
    return out


def _as_hwc(data: np.ndarray, channels: int) -> np.ndarray:
    return data.reshape(data.shape[0], data.shape[1], channels)


# ----------------------------------------------------------------------------- probing


def _check_readable(path: Path) -> bytes:
    """The file's first 64 bytes, after refusing a missing, empty, unreadable or non-file path."""
    if not path.exists():
        raise _bad(path, "no such file")
    if path.is_dir():
        if _is_zarr_dir(path):
            return b""
        raise _bad(path, "is a directory, not an image")
    try:
        if path.stat().st_size == 0:
            raise _bad(path, "is empty (0 bytes)")
        with open(path, "rb") as f:
            return f.read(64)
    except OSError as e:
        raise _bad(path, f"cannot read: {_reason(e)}") from e


def _sniff(head: bytes) -> str:
    if head.startswith(_PNG_MAGIC):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in _TIFF_MAGICS:
        return "TIFF"
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
        return _bad(path, f"is a {fmt} image; supported input formats: {supported}")
    return _bad(path, f"is not an image (supported input formats: {supported})")


def _check_dims(path: Path, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise _bad(path, f"has an empty size ({width}x{height} pixels)")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise _bad(path, f"has absurd dimensions {width}x{height} "
                         f"(limits: {MAX_SIDE} pixels per side, {MAX_PIXELS} pixels in all)")


def _check_pillow_limit(path: Path, fmt: str, width: int, height: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise _bad(path, f"{fmt} image is {width}x{height} ({width * height / 1e6:.1f} MP), above "
                         f"Pillow's limit of {limit / 1e6:.1f} MP (PIL.Image.MAX_IMAGE_PIXELS); "
                         f"convert it to a tiled TIFF (e.g. vips tiffsave in.{fmt.lower()} in.tif "
                         f"--tile --bigtiff) and pass that instead")


def _png_ihdr(path: Path, head: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) straight from the IHDR chunk."""
    if len(head) < 29 or head[12:16] != b"IHDR":
        raise _bad(path, "is not a valid PNG: missing IHDR header")
    width, height, depth, ctype = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, ctype


def _png_mode(path: Path, depth: int, ctype: int, has_trns: bool) -> tuple[str, int]:
    """streamsr mode and bit depth of a PNG: palettes become RGB(A), <8-bit grey becomes 8-bit."""
    if ctype == 3:
        return ("RGBA" if has_trns else "RGB"), 8
    mode = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}.get(ctype)
    if mode is None:
        raise _bad(path, f"is not a valid PNG: unknown colour type {ctype}")
    return mode, 16 if depth == 16 else 8


def _open_pillow(path: Path, fmt: str) -> Image.Image:
    """Open lazily (header only) with the format's plugin; the pixel limit is checked by us."""
    cls = PngImagePlugin.PngImageFile if fmt == "PNG" else JpegImagePlugin.JpegImageFile
    try:
        return cls(os.fspath(path))
    except _DECODE_ERRORS as e:
        raise _bad(path, f"is not a valid {fmt}: {_reason(e)}") from e


def _jpeg_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
        return 1


def _over_pillow_limit(width: int, height: int) -> bool:
    limit = Image.MAX_IMAGE_PIXELS
    return bool(limit) and width * height > limit


def _probe_png(path: Path, head: bytes, stream: bool = False) -> ImageInfo:
    width, height, depth, ctype = _png_ihdr(path, head)
    _check_dims(path, width, height)
    if not stream:
        _check_pillow_limit(path, "PNG", width, height)
    elif _over_pillow_limit(width, height) and head[28] != 0:
        raise _bad(path, f"is an interlaced PNG of {width}x{height} ({width * height / 1e6:.1f} MP), above "
                         f"Pillow's limit of {Image.MAX_IMAGE_PIXELS / 1e6:.1f} MP, which cannot be read by "
                         "rows; convert it to a tiled TIFF (e.g. vips tiffsave in.png in.tif --tile --bigtiff)")
    with _open_pillow(path, "PNG") as im:  # reads the chunks before IDAT only, whatever the size
        mode, bits = _png_mode(path, depth, ctype, "transparency" in im.info)
    return ImageInfo(path, width, height, len(mode), mode, bits, "PNG")


def _pyvips():
    """The pyvips module, or None where it (or libvips) cannot be loaded."""
    try:
        import pyvips  # noqa: PLC0415 - optional
    except Exception:  # noqa: BLE001 - ImportError, or OSError/ffi errors when libvips is missing
        return None
    return pyvips


def _probe_jpeg(path: Path, stream: bool = False) -> ImageInfo:
    with _open_pillow(path, "JPEG") as im:
        width, height = im.size
        orientation = _jpeg_orientation(im)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        mode = im.mode
    if mode == "CMYK":
        raise _bad(path, "is a CMYK JPEG, which is not supported; convert it to RGB first")
    if mode not in ("L", "RGB"):
        raise _bad(path, f"is a JPEG in mode {mode}, which is not supported (only grey and RGB)")
    _check_dims(path, width, height)
    if not stream or not _over_pillow_limit(width, height):
        _check_pillow_limit(path, "JPEG", width, height)
    elif _pyvips() is None:
        raise _bad(path, f"JPEG image is {width}x{height} ({width * height / 1e6:.1f} MP), above Pillow's "
                         f"limit of {Image.MAX_IMAGE_PIXELS / 1e6:.1f} MP; reading it by rows needs pyvips "
                         '(pip install "pyvips[binary]"), or convert it to a tiled TIFF (e.g. vips tiffsave '
                         "in.jpg in.tif --tile --bigtiff) and pass that instead")
    elif orientation != 1:
        raise _bad(path, f"JPEG image is {width}x{height}, above Pillow's limit, with EXIF orientation "
                         f"{orientation}, which cannot be applied by rows; convert it to a tiled TIFF "
                         "(e.g. vips tiffsave in.jpg in.tif --tile --bigtiff) and pass that instead")
    return ImageInfo(path, width, height, len(mode), mode, 8, "JPEG")


class _LogCollector(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(_one_line(record.getMessage()))


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


def _open_tiff(path: Path) -> tifffile.TiffFile:
    with _quiet_tifffile() as log:
        try:
            tf = tifffile.TiffFile(path)
            try:
                tf.pages.first  # noqa: B018 - parse the first IFD now, quietly
            except BaseException:
                tf.close()
                raise
            return tf
        except _DECODE_ERRORS as e:
            reason = _reason(e)
            if len(reason) < 8 and log.messages:  # e.g. IndexError(0): the log says why
                reason = log.messages[-1]
            raise _bad(path, f"is not a valid TIFF: {reason}") from e


_TIFF_MODES = {("MINISBLACK", 1): "L", ("MINISBLACK", 2): "LA", ("RGB", 3): "RGB",
               ("RGB", 4): "RGBA", ("YCBCR", 3): "RGB"}
_TIFF_KINDS = {"PALETTE": "palette", "SEPARATED": "CMYK", "MINISWHITE": "min-is-white",
               "CIELAB": "CIE L*a*b*", "MASK": "transparency mask"}


def _tiff_mode(path: Path, page: tifffile.TiffPage) -> tuple[str, int]:
    dtype, bits = page.dtype, page.bitspersample
    if page.sampleformat == 3:
        raise _bad(path, f"is a {bits}-bit floating-point TIFF, which is not supported; "
                         "convert it to 8- or 16-bit unsigned integers")
    if dtype not in (np.uint8, np.uint16):
        raise _bad(path, f"has {bits}-bit TIFF samples of sample format {page.sampleformat}; "
                         "only 8- and 16-bit unsigned integers are supported")
    photometric = getattr(page.photometric, "name", str(page.photometric))
    mode = _TIFF_MODES.get((photometric, page.samplesperpixel))
    if mode is None and photometric in _TIFF_KINDS:
        raise _bad(path, f"is a {_TIFF_KINDS[photometric]} TIFF, which is not supported; "
                         "convert it to grey or RGB")
    if mode is None:
        raise _bad(path, f"is a TIFF with photometric {photometric} and {page.samplesperpixel} "
                         "samples per pixel; supported: grey, grey+alpha, RGB, RGBA")
    return mode, 8 if dtype == np.uint8 else 16


def _tiff_page_info(path: Path, page: tifffile.TiffPage) -> ImageInfo:
    width, height = page.imagewidth, page.imagelength
    _check_dims(path, width, height)
    if page.imagedepth > 1:
        raise _bad(path, "is a volumetric (3-D) TIFF, which is not supported")
    mode, bits = _tiff_mode(path, page)
    try:
        tifffile.TIFF.DECOMPRESSORS[page.compression]
    except KeyError:
        name = getattr(page.compression, "name", page.compression)
        raise _bad(path, f"uses TIFF compression {name}, which needs the 'imagecodecs' package "
                         "(pip install imagecodecs) or re-saving with zlib or no compression") from None
    return ImageInfo(path, width, height, len(mode), mode, bits, "TIFF")


def _probe_tiff(path: Path) -> ImageInfo:
    with _open_tiff(path) as tf:
        return _tiff_page_info(path, tf.pages.first)


def probe(path: os.PathLike | str, *, stream: bool = False) -> ImageInfo:
    """Read only the header of a PNG, JPEG, TIFF or zarr array; BadInput for what cannot be read.

    No pixels are decoded: PNG size from IHDR, JPEG from its SOF marker, TIFF from the first IFD's
    tags, zarr from the array metadata. By default a PNG or JPEG above Pillow's pixel limit is refused
    (what `read_image` cannot decode); with stream=True it is accepted whenever `iter_row_bands` can
    read it by rows (non-interlaced PNG of any size; JPEG when pyvips is importable).
    """
    path = Path(path)
    head = _check_readable(path)
    if path.is_dir():
        return _probe_zarr(path)
    fmt = _sniff(head)
    if fmt == "PNG":
        return _probe_png(path, head, stream)
    if fmt == "JPEG":
        return _probe_jpeg(path, stream)
    if fmt == "TIFF":
        return _probe_tiff(path)
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


# ----------------------------------------------------------------------------- zarr input

_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
_CHANNEL_NAMES = ("c", "channel", "channels", "band", "bands", "s", "sample", "samples")


def _is_zarr_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in _ZARR_MARKERS)


def _ome_multiscales(attrs: dict) -> list | None:
    ome = attrs.get("ome")
    ms = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")  # NGFF 0.5 / 0.4
    return ms if isinstance(ms, list) and ms and isinstance(ms[0], dict) else None


def _zarr_member(path: Path, node):
    """(array, axis names or None) of a zarr node given as input, by the rule in the module doc."""
    import zarr  # noqa: PLC0415 - only zarr inputs need it here

    if isinstance(node, zarr.Array):
        return node, None
    multiscales = _ome_multiscales(dict(node.attrs))
    if multiscales:
        ms = multiscales[0]
        try:
            sub = ms["datasets"][0]["path"]
            array = node[sub]
        except Exception as e:  # noqa: BLE001 - broken OME metadata
            raise _bad(path, f"has OME-Zarr metadata whose first dataset cannot be opened: {_reason(e)}") from e
        axes = ms.get("axes")
        names = None
        if isinstance(axes, list):
            names = [a.get("name") if isinstance(a, dict) else a for a in axes]
        return array, names
    arrays = sorted(node.arrays(), key=lambda item: item[0])
    if len(arrays) != 1:
        listed = ", ".join(name for name, _ in arrays[:5]) or "none"
        raise _bad(path, f"is a zarr group holding {len(arrays)} arrays ({listed}) and no OME-Zarr "
                         "multiscale metadata; pass the path of one image array (e.g. "
                         f"{path / (arrays[0][0] if arrays else 'image')})")
    return arrays[0][1], None


def _zarr_layout(path: Path, shape: tuple[int, ...], names) -> tuple[tuple[int, ...], str]:
    """(axes of length 1 to drop, "hw" | "hwc" | "chw") for a zarr image array."""
    names = [str(n).lower() if n is not None else "" for n in names] if names else None
    if names is not None and len(names) != len(shape):
        names = None
    if names:  # OME "t" and "z" of length 1, wherever they are
        drop = [i for i, n in enumerate(names) if n in ("t", "z", "time") and shape[i] == 1]
    else:  # leading axes of length 1 beyond three
        drop = []
        while len(shape) - len(drop) > 3 and shape[len(drop)] == 1:
            drop.append(len(drop))
    kept = [n for i, n in enumerate(shape) if i not in drop]
    kept_names = [n for i, n in enumerate(names) if i not in drop] if names else None
    dims = "x".join(str(n) for n in shape)
    if len(kept) == 2:
        return tuple(drop), "hw"
    if len(kept) != 3:
        raise _bad(path, f"is a zarr array of shape ({dims}); expected (H, W), (H, W, C) or (C, H, W)")
    if kept_names and kept_names[-1] in _CHANNEL_NAMES:
        layout = "hwc"
    elif kept_names and kept_names[0] in _CHANNEL_NAMES:
        layout = "chw"
    elif 1 <= kept[-1] <= 4:
        layout = "hwc"
    elif 1 <= kept[0] <= 4:
        layout = "chw"
    else:
        raise _bad(path, f"is a zarr array of shape ({dims}) with no channel axis of 1-4 entries "
                         "first or last; expected (H, W), (H, W, C) or (C, H, W)")
    channels = kept[-1] if layout == "hwc" else kept[0]
    if not 1 <= channels <= 4:
        raise _bad(path, f"is a zarr array of shape ({dims}) with {channels} channels; "
                         "supported: 1-4 (grey, grey+alpha, RGB, RGBA)")
    return tuple(drop), layout


@dataclass(frozen=True)
class _ZarrImage:
    array: object  # zarr.Array
    drop: tuple[int, ...]  # axes of length 1 that are indexed away
    layout: str  # of the other axes: "hw", "hwc", "chw"

    def _key(self, rows: slice) -> tuple:
        kept = iter([slice(None), rows] if self.layout == "chw" else [rows])
        return tuple(0 if i in self.drop else next(kept, slice(None)) for i in range(len(self.array.shape)))

    def read(self, y0: int, y1: int) -> np.ndarray:
        """Integer (rows, W, C) of rows y0:y1."""
        data = np.asarray(self.array[self._key(slice(y0, y1))])
        if self.layout == "chw":
            return np.moveaxis(data, 0, -1)
        return data[:, :, None] if self.layout == "hw" else data

    @property
    def chunk_rows(self) -> int:
        chunks = getattr(self.array, "chunks", None)
        if not chunks:
            return 256
        kept = [c for i, c in enumerate(chunks) if i not in self.drop]
        return int(kept[1] if self.layout == "chw" else kept[0])


def _open_zarr_image(path: Path) -> tuple[_ZarrImage, ImageInfo]:
    import zarr  # noqa: PLC0415

    try:
        node = zarr.open(store=os.fspath(path), mode="r")
    except Exception as e:  # noqa: BLE001 - zarr raises many types for a damaged store
        raise _bad(path, f"is not a readable zarr array or group: {type(e).__name__}: {_reason(e)}") from e
    array, names = _zarr_member(path, node)
    if names is None:
        dim_names = getattr(getattr(array, "metadata", None), "dimension_names", None)
        names = list(dim_names) if dim_names else None
    shape = tuple(int(n) for n in array.shape)
    drop, layout = _zarr_layout(path, shape, names)
    kept = [n for i, n in enumerate(shape) if i not in drop]
    height, width = (kept[1], kept[2]) if layout == "chw" else (kept[0], kept[1])
    channels = 1 if layout == "hw" else (kept[0] if layout == "chw" else kept[2])
    dtype = np.dtype(array.dtype)
    if dtype not in (np.uint8, np.uint16):
        raise _bad(path, f"is a zarr array of dtype {dtype}; only uint8 and uint16 are supported")
    _check_dims(path, width, height)
    mode = MODES[channels]
    info = ImageInfo(path, width, height, channels, mode, 8 if dtype == np.uint8 else 16, "ZARR")
    return _ZarrImage(array, drop, layout), info


def _probe_zarr(path: Path) -> ImageInfo:
    return _open_zarr_image(path)[1]


def _zarr_decode(path: Path, read) -> np.ndarray:
    try:
        return read()
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a missing or corrupt chunk
        raise _bad(path, f"is a corrupt zarr array: {type(e).__name__}: {_reason(e)}") from e


# ----------------------------------------------------------------------------- reading


def _pillow_pixels(im: Image.Image, info: ImageInfo) -> np.ndarray:
    """Integer (H, W, C) array in the mode and depth `probe` announced."""
    if info.bit_depth == 16:  # only 16-bit grey PNG comes here (mode I;16, I;16B or I)
        data = np.asarray(im).astype(np.uint16)
    else:
        if im.mode != info.mode:
            im = im.convert(info.mode)
        data = np.asarray(im)
    return _as_hwc(data, info.channels)


def _read_pillow(info: ImageInfo) -> np.ndarray:
    with _open_pillow(info.path, info.format) as im:
        try:
            im.load()
            if info.format == "JPEG":
                im = ImageOps.exif_transpose(im)
            return _pillow_pixels(im, info)
        except _DECODE_ERRORS as e:
            raise _bad(info.path, f"is a corrupt or truncated {info.format}: {_reason(e)}") from e


def _read_png16(info: ImageInfo) -> np.ndarray:
    """16-bit colour PNG through pypng (Pillow would drop to 8 bits)."""
    try:
        width, height, rows, meta = png.Reader(filename=os.fspath(info.path)).asDirect()
        planes = meta["planes"]
        data = np.empty((height, width * planes), np.uint16)
        for y, row in enumerate(rows):
            data[y] = row
    except _DECODE_ERRORS as e:
        raise _bad(info.path, f"is a corrupt or truncated PNG: {_reason(e)}") from e
    return data.reshape(height, width, planes)[:, :, : info.channels]


def _tiff_decode(path: Path, read) -> np.ndarray:
    """`read()` (a tifffile or zarr decode) with any decoder failure reported as BadInput."""
    try:
        return np.asarray(read())
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure means a broken input file
        raise _bad(path, f"is a corrupt TIFF: {type(e).__name__}: {_reason(e)}") from e


def _tiff_hwc(data: np.ndarray, page: tifffile.TiffPage, channels: int) -> np.ndarray:
    """Decoded TIFF rows as (rows, W, C); planar-separate pages come as (S, rows, W)."""
    if page.planarconfig == 2 and page.samplesperpixel > 1:
        data = np.moveaxis(data, 0, -1)
    return _as_hwc(data, channels)


def _read_tiff(info: ImageInfo) -> np.ndarray:
    with _open_tiff(info.path) as tf:
        page = tf.pages.first
        return _tiff_hwc(_tiff_decode(info.path, page.asarray), page, info.channels)


def _read_zarr(info: ImageInfo) -> np.ndarray:
    image, _ = _open_zarr_image(info.path)
    return _zarr_decode(info.path, lambda: image.read(0, info.height))


def _decode(info: ImageInfo) -> np.ndarray:
    if info.format == "TIFF":
        return _read_tiff(info)
    if info.format == "ZARR":
        return _read_zarr(info)
    if info.format == "PNG" and info.bit_depth == 16 and info.mode != "L":
        return _read_png16(info)
    return _read_pillow(info)


def read_image(path: os.PathLike | str) -> tuple[np.ndarray, ImageInfo]:
    """The whole image as float32 (H, W, C) in [0, 1] (8-bit / 255, 16-bit / 65535) and its info."""
    info = probe(path)
    return _to_float(_decode(info), info.bit_depth), info


def _tiff_row_reader(path: Path, page: tifffile.TiffPage, channels: int):
    """read(y0, y1) -> integer (rows, W, C), decoding only the strips/tiles of those rows."""
    import zarr  # imported here: only band reading of TIFFs needs it

    arr = zarr.open_array(page.aszarr(), mode="r")
    separate = page.planarconfig == 2 and page.samplesperpixel > 1
    key = (lambda y0, y1: (slice(None), slice(y0, y1))) if separate else (lambda y0, y1: slice(y0, y1))

    def read(y0: int, y1: int) -> np.ndarray:
        return _tiff_hwc(_tiff_decode(path, lambda: arr[key(y0, y1)]), page, channels)

    return read


def _cached_bands(read, step: int, info: ImageInfo, dtype, band_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Bands from `read(y0, y1)` (integer rows) called on whole runs of `step` rows (strips, tiles
    or chunks), so that each is decoded once; at most one run plus one band is kept."""
    step = max(1, min(step, info.height))
    cache, cache_y0 = np.empty((0, info.width, info.channels), dtype), 0
    for y0 in range(0, info.height, band_rows):
        y1 = min(info.height, y0 + band_rows)
        cache_end = cache_y0 + len(cache)
        if y1 > cache_end:
            new = read(cache_end, min(info.height, -(-y1 // step) * step))
            cache, cache_y0 = np.concatenate([cache[y0 - cache_y0:], new]), y0
        yield y0, _to_float(cache[y0 - cache_y0: y1 - cache_y0], info.bit_depth)


def _tiff_bands(info: ImageInfo, band_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Bands of a TIFF; each strip/tile row is decoded once and at most one is kept."""
    with _open_tiff(info.path) as tf:
        page = tf.pages.first
        read = _tiff_row_reader(info.path, page, info.channels)
        yield from _cached_bands(read, int(page.chunks[0]), info, page.dtype, band_rows)


def _zarr_bands(info: ImageInfo, band_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Bands of a zarr array; each chunk row is decoded once and at most one is kept."""
    image, _ = _open_zarr_image(info.path)

    def read(y0: int, y1: int) -> np.ndarray:
        return _zarr_decode(info.path, lambda: image.read(y0, y1))

    dtype = np.uint8 if info.bit_depth == 8 else np.uint16
    yield from _cached_bands(read, image.chunk_rows, info, dtype, band_rows)


def _sliced_bands(info: ImageInfo, band_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    image = _decode(info)  # integers; each band is converted to float32 on its own
    for y0 in range(0, info.height, band_rows):
        yield y0, _to_float(image[y0: y0 + band_rows], info.bit_depth)


# ----------------------------------------------------------------------------- PNG by rows

_PNG_PLANES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_PIECE = 1 << 20  # compressed bytes read at a time
_PNG_DECODE_PIXELS = 1 << 22  # pixels un-filtered per Pillow call
# 16-bit types whose scanlines are byte-for-byte an 8-bit type with the same bytes per pixel, which
# Pillow un-filters in C: grey (2 bytes/pixel) as 8-bit grey+alpha, grey+alpha (4) as 8-bit RGBA.
_PNG_AS_8BIT = {(8, 0): 0, (8, 2): 2, (8, 3): 3, (8, 4): 4, (8, 6): 6, (16, 0): 4, (16, 4): 6}


def _png_corrupt(path: Path, problem: str) -> BadInput:
    return _bad(path, f"is a corrupt or truncated PNG: {problem}")


def _png_chunks(path: Path, f) -> Iterator[tuple[bytes, bytes]]:
    """(type, data) of the chunks after the signature, up to IEND, CRCs checked; IDAT data comes
    in pieces of at most _PNG_PIECE bytes (its CRC is checked after the last piece)."""
    f.seek(len(_PNG_MAGIC))
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
            raise _png_corrupt(self.path, f"zlib: {_reason(e)}") from e
        raise _png_corrupt(self.path, f"the image data ends after {done} of {self.height} rows")


def _png_mini(width: int, rows: int, ctype: int, pre: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A small 8-bit PNG holding already filtered scanlines (stored, not compressed)."""
    out = io.BytesIO()
    out.write(_PNG_MAGIC)
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
    with open(info.path, "rb") as f:
        lines = _PngScanlines(info.path, f, info.height, 1 + row_bytes)
        pre = lines.pre if ctype == 3 else []
        previous: bytes | None = None
        band, fill, y0 = None, 0, 0
        for block in lines.blocks(step):
            n = len(block) // (1 + row_bytes)
            body = block if previous is None else b"\x00" + previous + block
            try:
                mini = _png_mini(info.width, n + (previous is not None), as_ctype, pre, body)
                with PngImagePlugin.PngImageFile(io.BytesIO(mini)) as im:
                    im.load()
                    raw = np.asarray(im)
                    if depth == 16:
                        pixels = raw.reshape(len(raw), -1).view(">u2").reshape(len(raw), info.width, planes)
                    else:
                        pixels = _pillow_pixels(im, info)
            except _DECODE_ERRORS as e:
                raise _png_corrupt(info.path, _reason(e)) from e
            previous = raw[-1].tobytes()
            if len(pixels) > n:
                pixels = pixels[1:]
            pixels = pixels[:, :, : info.channels]
            if band is None:
                band = np.empty((min(band_rows, info.height - y0), info.width, info.channels), pixels.dtype)
            i = 0
            while i < n:
                k = min(n - i, len(band) - fill)
                band[fill: fill + k] = pixels[i: i + k]
                fill, i = fill + k, i + k
                if fill == len(band):
                    yield y0, _to_float(band, info.bit_depth)
                    y0 += len(band)
                    fill = 0
                    band = np.empty((min(band_rows, info.height - y0), info.width, info.channels),
                                    pixels.dtype) if y0 < info.height else None


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
        else:  # 16-bit colour: as `read_image` does (_read_png16)
            _, _, rows, meta = reader.asDirect()
            lut = None
        planes = 1 if lut is not None else meta["planes"]
        dtype = np.uint8 if lut is not None else np.uint16
        for y0 in range(0, info.height, band_rows):
            n = min(band_rows, info.height - y0)
            raw = np.empty((n, info.width * planes), dtype)
            for i in range(n):
                raw[i] = next(rows)
            raw = raw.reshape(n, info.width, planes)
            pixels = lut[raw[:, :, 0]] if lut is not None else raw[:, :, : info.channels]
            yield y0, _to_float(pixels, info.bit_depth)
    except StopIteration:
        raise _png_corrupt(info.path, "the image data ends early") from None
    except _DECODE_ERRORS as e:
        raise _png_corrupt(info.path, _reason(e)) from e


def _png_stream_bands(info: ImageInfo, band_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Bands of a non-interlaced PNG of any size; no more than a band is decoded at a time."""
    with open(info.path, "rb") as f:
        head = f.read(64)
    _, _, depth, ctype = _png_ihdr(info.path, head)
    if (depth, ctype) in _PNG_AS_8BIT:
        return _png_stream_pillow(info, depth, ctype, band_rows)
    return _png_stream_pypng(info, depth, ctype, band_rows)


# ----------------------------------------------------------------------------- JPEG by rows


def _vips_bands(info: ImageInfo, band_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Bands of a JPEG beyond Pillow's limit, decoded top to bottom by libvips (sequential)."""
    pyvips = _pyvips()
    try:
        try:  # a truncated or corrupt JPEG must fail, not decode as grey (libvips >= 8.12)
            image = pyvips.Image.new_from_file(os.fspath(info.path), access="sequential", fail_on="error")
        except pyvips.Error:
            image = pyvips.Image.new_from_file(os.fspath(info.path), access="sequential", fail=True)
        if (image.width, image.height) != (info.width, info.height):
            raise _bad(info.path, f"libvips reads it as {image.width}x{image.height}, not "
                                  f"{info.width}x{info.height}")
        if image.format != "uchar":
            image = image.cast("uchar")
        region = pyvips.Region.new(image)
        for y0 in range(0, info.height, band_rows):
            n = min(band_rows, info.height - y0)
            data = np.frombuffer(region.fetch(0, y0, info.width, n), np.uint8)
            pixels = data.reshape(n, info.width, image.bands)[:, :, : info.channels]
            yield y0, _to_float(pixels, 8)
    except pyvips.Error as e:
        raise _bad(info.path, f"is a corrupt or truncated JPEG: {_one_line(e)}") from e


def iter_row_bands(path: os.PathLike | str, band_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(y0, float32 (rows, W, C) in [0, 1]) bands top to bottom; the last may be shorter.

    The header is probed now (so a bad file fails here, not at the first band). TIFFs and zarr
    arrays are decoded band by band, and so are PNGs (non-interlaced) and JPEGs (with pyvips) beyond
    Pillow's limit; smaller PNG/JPEG are decoded whole and sliced.
    """
    if band_rows < 1:
        raise ValueError(f"band_rows must be >= 1, not {band_rows}")
    info = probe(path, stream=True)
    if info.format == "TIFF":
        return _tiff_bands(info, band_rows)
    if info.format == "ZARR":
        return _zarr_bands(info, band_rows)
    if _over_pillow_limit(info.width, info.height):
        return _png_stream_bands(info, band_rows) if info.format == "PNG" else _vips_bands(info, band_rows)
    return _sliced_bands(info, band_rows)


# ----------------------------------------------------------------------------- writing


def partial_path(path: os.PathLike | str) -> Path:
    """The temporary file beside `path` that a writer fills: out.png -> out.partial.png."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        shown = f"'{path.suffix}'" if path.suffix else "(no suffix)"
        raise _bad(path, f"unsupported output format {shown}; supported: {', '.join(OUTPUT_SUFFIXES)}")
    return suffix


def check_output_path(path: os.PathLike | str) -> Path:
    """Fail early (BadInput) unless `path` can receive an output image; returns it as a Path."""
    path = Path(path)
    _suffix(path)
    if path.is_dir():
        raise _bad(path, "is a directory; give a file name such as "
                         f"{path / ('out' + OUTPUT_SUFFIXES[0])}")
    parent = path.parent
    if not parent.exists():
        raise _bad(path, f"output directory {parent} does not exist")
    if not parent.is_dir():
        raise _bad(path, f"{parent} is not a directory")
    check_writable_dir(path, parent)
    return path


def check_writable_dir(path: Path, parent: Path) -> None:
    """BadInput naming `path` unless a file can be created (and removed) in `parent`."""
    try:
        fd, probe_name = tempfile.mkstemp(prefix=".streamsr-write-test-", dir=parent)
        os.close(fd)
        os.unlink(probe_name)
    except OSError as e:
        raise _bad(path, f"cannot write to directory {parent}: {_reason(e)}") from e


def _open_temp(path: Path):
    """Open the temporary output file (a seam for tests that simulate a full disk)."""
    return open(path, "wb")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class RowWriter:
    """Streams rows (top to bottom) into `<stem>.partial<suffix>`, renamed onto `path` by close().

    Use as a context manager: an exception inside the block aborts (the target is untouched).
    `write_rows` takes uint8 (8-bit) or uint16 (16-bit) arrays of shape (n, width, channels),
    any n. OSError while writing becomes OutputError and aborts.
    """

    def __init__(self, path: Path, width: int, height: int, channels: int, bit_depth: int,
                 compress: bool = True):
        self.path, self.tmp_path = path, partial_path(path)
        self.width, self.height, self.channels = width, height, channels
        self.bit_depth, self.compress = bit_depth, compress
        self.dtype = np.dtype(_uint_dtype(bit_depth))
        self.rows_written = 0
        self._state = "open"
        try:
            self._file = _open_temp(self.tmp_path)
        except OSError as e:
            self._state = "aborted"
            raise _output_error(path, e) from e

    # subclasses implement these three
    def _write(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _cancel(self) -> None:
        """Stop background work before the temporary file is closed and removed."""

    def _check_rows(self, rows: np.ndarray) -> np.ndarray:
        if self._state != "open":
            raise ValueError(f"{self.path}: writer is already {self._state}")
        rows = np.asarray(rows)
        if rows.ndim == 2 and self.channels == 1:
            rows = rows[:, :, None]
        if rows.ndim != 3 or rows.shape[1:] != (self.width, self.channels):
            raise ValueError(f"rows must be (n, {self.width}, {self.channels}), not {rows.shape}")
        if rows.dtype != self.dtype:
            raise TypeError(f"rows must be {self.dtype} for {self.bit_depth}-bit output, not {rows.dtype}")
        if self.rows_written + len(rows) > self.height:
            raise ValueError(f"{self.rows_written} + {len(rows)} rows exceed the height {self.height}")
        return rows

    def _guarded(self, func, *args) -> None:
        """Run a write step; on any failure abort, and report OSError as OutputError."""
        try:
            func(*args)
        except OSError as e:
            self.abort()
            raise _output_error(self.path, e) from e
        except BaseException:
            self.abort()
            raise

    def write_rows(self, rows: np.ndarray) -> None:
        """Append rows (n, width, channels) below those already written."""
        rows = self._check_rows(rows)
        if len(rows):
            self._guarded(self._write, np.ascontiguousarray(rows))
            self.rows_written += len(rows)

    def _commit(self) -> None:
        self._finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.path)
        _fsync_dir(self.path.parent)

    def close(self) -> None:
        """Finish the file and rename it onto the target; an incomplete image is discarded."""
        if self._state != "open":
            return
        if self.rows_written < self.height:
            self.abort()
            raise OutputError(_one_line(
                f"{self.path}: only {self.rows_written} of {self.height} rows were written; "
                "the output was discarded"))
        self._guarded(self._commit)
        self._state = "closed"

    def abort(self) -> None:
        """Drop the temporary file; an existing target is left as it was. Safe to call twice."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._cancel()
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.tmp_path.unlink()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _paeth_filter(raw: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """PNG filter type 4 for raw scanlines (n, L) uint8 below `prev` (L,); returns (n, 1 + L)."""
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


class _PngWriter(RowWriter):
    """PNG through pypng's header and chunk writers, Paeth-filtered rows fed to one zlib stream."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._bpp = self.channels * self.dtype.itemsize
        self._prev = np.zeros(self.width * self._bpp, np.uint8)
        self._zip = zlib.compressobj(ZLIB_LEVEL if self.compress else 0)
        self._pending = bytearray()
        header = png.Writer(self.width, self.height, greyscale=self.channels <= 2,
                            alpha=self.channels in (2, 4), bitdepth=self.bit_depth)
        self._guarded(header.write_preamble, self._file)

    def _emit(self, data: bytes, final: bool = False) -> None:
        self._pending += data
        if self._pending and (final or len(self._pending) >= _IDAT_BYTES):
            png.write_chunk(self._file, b"IDAT", bytes(self._pending))
            self._pending.clear()

    def _write(self, rows: np.ndarray) -> None:
        raw = rows.astype(">u2", copy=False) if self.bit_depth == 16 else rows
        raw = raw.view(np.uint8).reshape(len(rows), -1)
        step = max(1, _FILTER_BYTES // raw.shape[1])
        for i in range(0, len(raw), step):
            block = raw[i: i + step]
            self._emit(self._zip.compress(_paeth_filter(block, self._prev, self._bpp)))
            self._prev = block[-1].copy()

    def _finish(self) -> None:
        self._emit(self._zip.flush(), final=True)
        png.write_chunk(self._file, b"IEND")


class _Cancelled(Exception):
    """Raised inside the tile generator to stop tifffile when the writer is aborted."""


class _TiffWriter(RowWriter):
    """Tiled zlib BigTIFF: rows gather into one tile row, which a tifffile thread consumes.

    tifffile pulls tiles from a generator, so it runs in a worker thread; `write_rows` hands each
    complete tile row over and waits until tifffile has taken all of its tiles, so one tile row
    (plus the tiles being compressed) is all that is ever held.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._inbox: queue.Queue = queue.Queue(maxsize=1)
        self._band: np.ndarray | None = None
        self._band_y0 = self._band_fill = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="streamsr-tiff-writer", daemon=True)
        self._thread.start()

    def _tiff_options(self) -> dict:
        alpha = self.channels in (2, 4)
        opts = dict(
            shape=(self.height, self.width) + ((self.channels,) if self.channels > 1 else ()),
            dtype=self.dtype, tile=(TILE, TILE), photometric="rgb" if self.channels >= 3 else "minisblack",
            planarconfig="contig" if self.channels > 1 else None,
            extrasamples=("unassalpha",) if alpha else None, metadata=None,
            buffersize=-(-self.width // TILE) * TILE * TILE * self.channels * self.dtype.itemsize,
        )
        if self.compress:
            opts.update(compression="zlib", compressionargs={"level": ZLIB_LEVEL}, predictor=True)
        return opts

    def _run(self) -> None:
        try:
            with tifffile.TiffWriter(self._file, bigtiff=True) as tw:
                tw.write(self._tiles(), **self._tiff_options())
        except BaseException as e:  # noqa: BLE001 - handed to the producer thread
            self._error = e

    def _tiles(self) -> Iterator[np.ndarray]:
        for _ in range(-(-self.height // TILE)):
            band = self._inbox.get()
            try:
                if band is None:
                    raise _Cancelled
                for x0 in range(0, self.width, TILE):
                    yield band[:, x0: x0 + TILE]  # tifffile pads edge tiles
            finally:
                self._inbox.task_done()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._thread.is_alive():
            raise OSError("the TIFF writer thread stopped early")

    def _handoff(self, band: np.ndarray) -> None:
        self._raise_failure()
        self._inbox.put(band)  # empty: the previous band was taken before the last handoff returned
        with self._inbox.all_tasks_done:
            while self._inbox.unfinished_tasks and self._thread.is_alive():
                self._inbox.all_tasks_done.wait(0.05)
        if self._error is not None:
            raise self._error
        # (the last band is never marked done: tifffile stops pulling, the thread simply ends)

    def _write(self, rows: np.ndarray) -> None:
        if self.channels == 1:
            rows = rows[:, :, 0]
        i = 0
        while i < len(rows):
            if self._band is None:
                n = min(TILE, self.height - self._band_y0)
                self._band = np.empty((n,) + rows.shape[1:], self.dtype)
                self._band_fill = 0
            k = min(len(rows) - i, len(self._band) - self._band_fill)
            self._band[self._band_fill: self._band_fill + k] = rows[i: i + k]
            self._band_fill += k
            i += k
            if self._band_fill == len(self._band):
                band, self._band = self._band, None
                self._handoff(band)
                self._band_y0 += len(band)

    def _finish(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _cancel(self) -> None:
        while self._thread.is_alive():
            try:
                self._inbox.put(None, timeout=0.05)
                break
            except queue.Full:
                continue
        self._thread.join()


def open_writer(path: os.PathLike | str, width: int, height: int, channels: int, bit_depth: int,
                *, compress: bool = True) -> RowWriter:
    """A RowWriter for `path`, chosen by suffix (.png, .tif, .tiff); compress=False stores raw."""
    path = Path(path)
    suffix = _suffix(path)
    if channels not in MODES:
        raise ValueError(f"channels must be 1-4, not {channels!r}")
    _max_value(bit_depth)
    if not (0 < width < MAX_SIDE and 0 < height < MAX_SIDE and width * height <= MAX_PIXELS):
        raise ValueError(f"bad output size {width}x{height}")
    cls = _PngWriter if suffix == ".png" else _TiffWriter
    return cls(path, width, height, channels, bit_depth, compress)
