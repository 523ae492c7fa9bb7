"""Image metadata carried from an input to its upscaled output: the ICC profile, EXIF and DPI.

`read_meta(path)` takes them from a PNG, JPEG, WebP (Pillow, header only) or TIFF (tifffile tags) input;
a CMYK JPEG gets the sRGB profile instead of its own, since its pixels are converted to sRGB when read.
`ImageMeta.for_output(scale=, size=)` is what the output carries: the EXIF orientation normalised to 1
(the pixels were already turned upright when read), the EXIF pixel dimensions set to the output's, and the
DPI multiplied by the scale (the same physical size). Writers use `png_chunks`, `tiff_tags` (plus
streamsr.io.tiff_exif for the EXIF of a TIFF) and `pillow_args`. Metadata never fails a job: an
unreadable block is simply not carried.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

ORIENTATION, EXIF_IFD, PIXEL_X, PIXEL_Y = 0x0112, 0x8769, 0xA002, 0xA003
X_RES, Y_RES, RES_UNIT = 0x011A, 0x011B, 0x0128
TIFF_ICC, TIFF_XRES, TIFF_YRES = 34675, 282, 283


@dataclass(frozen=True)
class ImageMeta:
    """What travels from input to output: ICC profile bytes, EXIF bytes (TIFF header first), DPI (x, y)."""

    icc: bytes | None = None
    exif: bytes | None = None
    dpi: tuple[float, float] | None = None

    def for_output(self, *, scale: int, size: tuple[int, int]) -> "ImageMeta":
        """The output's metadata: orientation 1, EXIF dimensions = size (W, H), DPI x scale."""
        dpi = (self.dpi[0] * scale, self.dpi[1] * scale) if self.dpi else None
        return replace(self, exif=_normalised_exif(self.exif, size, dpi), dpi=dpi)

    def png_chunks(self) -> list[tuple[bytes, bytes]]:
        """iCCP, pHYs and eXIf chunks (type, data), written before the first IDAT."""
        import struct
        import zlib

        chunks = []
        if self.icc:
            chunks.append((b"iCCP", b"ICC Profile\0\0" + zlib.compress(self.icc)))
        if self.dpi:
            ppm = [max(1, round(d / 0.0254)) for d in self.dpi]  # dots per metre
            chunks.append((b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
        if self.exif:
            chunks.append((b"eXIf", self.exif))
        return chunks

    def tiff_tags(self) -> dict:
        """tifffile TiffWriter.write keyword arguments: the ICC profile tag and the resolution."""
        opts: dict = {}
        if self.icc:
            opts["extratags"] = [(TIFF_ICC, 7, len(self.icc), self.icc, True)]
        if self.dpi:
            opts.update(resolution=(float(self.dpi[0]), float(self.dpi[1])), resolutionunit="INCH")
        return opts

    def pillow_args(self) -> dict:
        """Image.save keyword arguments (JPEG, WebP)."""
        opts: dict = {}
        if self.icc:
            opts["icc_profile"] = self.icc
        if self.exif:
            opts["exif"] = self.exif
        if self.dpi:
            opts["dpi"] = self.dpi
        return opts


def _normalised_exif(exif: bytes | None, size: tuple[int, int], dpi: tuple[float, float] | None) -> bytes | None:
    """EXIF with orientation 1, the output's pixel dimensions and resolution (WebP keeps DPI only here)."""
    if not exif:
        return None
    from PIL import Image, TiffImagePlugin

    try:
        data = Image.Exif()
        data.load(exif)
        data[ORIENTATION] = 1
        if dpi:
            data[X_RES], data[Y_RES] = (TiffImagePlugin.IFDRational(round(v * 1000), 1000) for v in dpi)
            data[RES_UNIT] = 2  # inch
        ifd = data.get_ifd(EXIF_IFD)
        if ifd is not None:
            ifd[PIXEL_X], ifd[PIXEL_Y] = int(size[0]), int(size[1])
        return data.tobytes()
    except Exception:  # noqa: BLE001 - a broken EXIF block is not carried
        return None


def srgb_icc() -> bytes:
    """The sRGB profile (littleCMS's built-in one), for pixels converted to sRGB."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _pillow_meta(path: Path) -> ImageMeta:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            info = im.info
            icc, exif, dpi = info.get("icc_profile"), info.get("exif"), info.get("dpi")
            if exif and exif.startswith(b"Exif\0\0"):
                exif = exif[6:]
            if im.mode == "CMYK":
                icc = srgb_icc()
    dpi = (float(dpi[0]), float(dpi[1])) if dpi and dpi[0] and dpi[1] else None
    return ImageMeta(icc or None, exif or None, dpi)


def _tiff_meta(path: Path) -> ImageMeta:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        tags = tf.pages.first.tags
        icc = tags.get(TIFF_ICC)
        xres, yres, unit = tags.get(TIFF_XRES), tags.get(TIFF_YRES), tags.get(296)
        dpi = None
        if xres is not None and yres is not None:
            per = {2: 1.0, 3: 2.54}.get(int(getattr(unit, "value", 2) or 2))
            x, y = (v.value[0] / v.value[1] if v.value[1] else 0 for v in (xres, yres))
            if per and x > 0 and y > 0:
                dpi = (x * per, y * per)
        return ImageMeta(bytes(icc.value) if icc is not None else None, None, dpi)


def read_meta(path: os.PathLike | str) -> ImageMeta:
    """The ICC profile, EXIF and DPI of an input file; empty for a zarr store or an unreadable header."""
    path = Path(path)
    if not path.is_file():
        return ImageMeta()
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_meta(path)
        return _pillow_meta(path)
    except Exception:  # noqa: BLE001 - metadata never fails a job
        return ImageMeta()
