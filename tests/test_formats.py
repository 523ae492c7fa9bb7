"""Formats and metadata: ICC/EXIF/DPI carried to PNG, TIFF, JPEG and WebP outputs (read back with Pillow or
tifffile), JPEG and WebP outputs equal the PNG's pixels (within their coding), WebP and CMYK JPEG inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms
from test_job import pixels, run_cli, work  # noqa: F401  (the tiny model and input fixture)

from streamsr.io.metadata import (EXIF_IFD, ORIENTATION, PIXEL_X, PIXEL_Y, RES_UNIT, X_RES, Y_RES, ImageMeta,
                                  read_meta, srgb_icc)
from streamsr.io.probe import probe
from streamsr.io.read import read_image

ARGS = ("--steps", 1, "--anchor", "none", "--batch", "1x1", "-q")
MAKE = 0x010F


def icc_bytes() -> bytes:
    """An ICC profile (littleCMS's sRGB; its bytes hold the time it was made)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def description(icc: bytes) -> str:
    return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()


@pytest.fixture(scope="module")
def tagged(work, tmp_path_factory):  # noqa: F811
    """A JPEG with an ICC profile, EXIF (orientation 6: stored sideways, Make) and 150 DPI."""
    root = tmp_path_factory.mktemp("formats")
    upright = np.asarray(Image.open(work / "in.png"))  # (20, 27, 3)
    exif = Image.Exif()
    exif[ORIENTATION], exif[MAKE] = 6, "streamsr-test"
    exif.get_ifd(EXIF_IFD)[PIXEL_X] = 20
    stored = Image.fromarray(np.rot90(upright, 1).copy())  # orientation 6 turns it back upright
    stored.save(root / "tagged.jpg", quality=95, icc_profile=icc_bytes(), exif=exif, dpi=(150, 150))
    return root


def check_exif(raw: bytes | Image.Exif, size: tuple[int, int]) -> None:
    """Orientation 1, the camera's tag kept, the output's dimensions and resolution (raw EXIF bytes, or the
    tags Pillow read from a TIFF)."""
    exif = raw
    if isinstance(raw, bytes):
        exif = Image.Exif()
        exif.load(raw[6:] if raw.startswith(b"Exif\0\0") else raw)
    assert exif[ORIENTATION] == 1 and exif[MAKE] == "streamsr-test"
    ifd = exif.get_ifd(EXIF_IFD)
    assert (ifd[PIXEL_X], ifd[PIXEL_Y]) == size
    assert (float(exif[X_RES]), float(exif[Y_RES]), exif[RES_UNIT]) == (600.0, 600.0, 2)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg", ".webp"])
def test_icc_exif_dpi_are_carried(work, tagged, tmp_path, suffix):  # noqa: F811
    out = tmp_path / f"out{suffix}"
    assert run_cli("upscale", tagged / "tagged.jpg", "-o", out, "--model", work / "model", *ARGS) == 0
    size = (108, 80)  # the upright 27x20 input, x4
    icc = Image.open(tagged / "tagged.jpg").info["icc_profile"]
    if suffix == ".tif":
        with tifffile.TiffFile(out) as tf:
            tags = tf.pages.first.tags
            assert bytes(tags[34675].value) == icc
            x, y = tags[282].value, tags[283].value
            assert x[0] / x[1] == pytest.approx(600) and y[0] / y[1] == pytest.approx(600)
            assert tf.pages.first.shape[:2] == (80, 108)
        with Image.open(out) as im:  # EXIF as TIFF tags and an Exif sub-IFD (streamsr.io.tiff_exif)
            assert im.size == size
            check_exif(im.getexif(), size)
        return
    with Image.open(out) as im:
        assert im.size == size
        assert im.info.get("icc_profile") == icc
        if suffix != ".webp":  # WebP has no DPI field: the EXIF resolution carries it
            assert tuple(round(v) for v in im.info["dpi"]) == (600, 600)
        check_exif(im.info["exif"], size)


def test_jpeg_and_webp_outputs_match_the_png(work, tmp_path):  # noqa: F811
    job = tmp_path / "job"
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "o.png", "--model", work / "model", *ARGS,
                   "--job", job) == 0
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "o.jpg", "--model", work / "model", *ARGS) == 0
    png = pixels(tmp_path / "o.png").astype(float)
    assert np.abs(pixels(tmp_path / "o.jpg") - png).mean() < 10  # random-noise pixels: lossy coding's worst case
    assert run_cli("export", job, "-o", tmp_path / "o.webp", "--quality", 100) == 0  # lossless
    np.testing.assert_array_equal(pixels(tmp_path / "o.webp"), png)


def test_webp_input_equals_the_png_input(work, tmp_path):  # noqa: F811
    Image.open(work / "in.png").save(tmp_path / "in.webp", lossless=True)
    assert probe(tmp_path / "in.webp").format == "WEBP"
    for name in ("in.webp",):
        assert run_cli("upscale", tmp_path / name, "-o", tmp_path / "w.png", "--model", work / "model", *ARGS) == 0
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "p.png", "--model", work / "model", *ARGS) == 0
    np.testing.assert_array_equal(pixels(tmp_path / "w.png"), pixels(tmp_path / "p.png"))


def test_cmyk_jpeg_input_is_converted_to_rgb(work, tmp_path):  # noqa: F811
    rgb = Image.open(work / "in.png")
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    info = probe(tmp_path / "cmyk.jpg")
    assert (info.mode, info.channels) == ("RGB", 3)
    got, _ = read_image(tmp_path / "cmyk.jpg")
    expect = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(got, expect, atol=1e-6)
    assert np.abs(got - np.asarray(rgb, dtype=np.float32) / 255).mean() < 0.03
    assert description(read_meta(tmp_path / "cmyk.jpg").icc) == description(srgb_icc())  # the output is sRGB
    assert run_cli("upscale", tmp_path / "cmyk.jpg", "-o", tmp_path / "o.png", "--model", work / "model", *ARGS) == 0
    assert Image.open(tmp_path / "o.png").mode == "RGB"


def test_metadata_for_the_output():
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    meta = ImageMeta(b"icc", exif.tobytes(), (72.0, 96.0)).for_output(scale=4, size=(400, 300))
    assert meta.dpi == (288.0, 384.0) and meta.icc == b"icc"
    back = Image.Exif()
    back.load(meta.exif)
    assert back[ORIENTATION] == 1
    assert ImageMeta().for_output(scale=4, size=(1, 1)) == ImageMeta()
    assert read_meta("/nonexistent.png") == ImageMeta()


def test_a_webp_too_large_for_the_format_is_refused_before_any_work(work, tmp_path, capsys):  # noqa: F811
    Image.new("RGB", (4100, 2)).save(tmp_path / "wide.png")  # x4: 16400 px > WebP's 16383
    assert run_cli("upscale", tmp_path / "wide.png", "-o", tmp_path / "o.webp", "--model", work / "model", *ARGS) == 2
    assert "holds at most 16383 px" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.png"]


def test_upscale_quality_sets_the_jpeg_and_webp_coding(work, tmp_path, capsys):  # noqa: F811
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "o.png", "--model", work / "model", *ARGS) == 0
    reference = Image.open(tmp_path / "o.png")
    for quality in (40, 90):
        out = tmp_path / f"q{quality}.jpg"
        assert run_cli("upscale", work / "in.png", "-o", out, "--model", work / "model", *ARGS,
                       "--quality", quality, "--job", tmp_path / f"job{quality}") == 0
        expected = io.BytesIO()  # the exporter's JPEG settings at that quality, on the PNG's pixels
        reference.save(expected, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, optimize=True)
        np.testing.assert_array_equal(pixels(out), np.asarray(Image.open(expected)))
    assert (tmp_path / "q40.jpg").stat().st_size < (tmp_path / "q90.jpg").stat().st_size
    assert run_cli("export", tmp_path / "job40", "-o", tmp_path / "again.jpg") == 0  # the job's quality
    np.testing.assert_array_equal(pixels(tmp_path / "again.jpg"), pixels(tmp_path / "q40.jpg"))
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "o.webp", "--model", work / "model", *ARGS,
                   "--quality", 100) == 0  # WebP at 100 is lossless
    np.testing.assert_array_equal(pixels(tmp_path / "o.webp"), np.asarray(reference))
    capsys.readouterr()
    for bad in (0, 101, -5):
        out = tmp_path / f"bad{bad}.jpg"
        assert run_cli("upscale", work / "in.png", "-o", out, "--model", work / "model", *ARGS,
                       "--quality", bad) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "quality must be an integer in 1..100" in err
        assert run_cli("export", tmp_path / "job40", "-o", out, "--quality", bad) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "quality must be an integer in 1..100" in err
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".streamsr-job")]  # nothing left behind


@pytest.mark.parametrize("endian", ["<", ">"])
def test_tiff_output_carries_exif_sub_ifds_of_either_byte_order(tmp_path, endian):
    from PIL import TiffImagePlugin

    from streamsr.io.export import export_array

    exif = Image.Exif()
    exif.endian = endian  # a big-endian camera block is re-packed into the little-endian TIFF
    exif[ORIENTATION], exif[MAKE] = 8, "streamsr-test"
    sub = exif.get_ifd(EXIF_IFD)
    sub[PIXEL_X], sub[0x829A], sub[0x927C] = 5, TiffImagePlugin.IFDRational(1, 250), b"maker note bytes"
    exif.get_ifd(0x8825)[1] = "N"  # GPS sub-IFD
    meta = ImageMeta(None, exif.tobytes(), (150.0, 150.0)).for_output(scale=4, size=(70, 60))
    arr = np.random.default_rng(3).integers(0, 255, (64, 72, 3), dtype=np.uint8)
    out = export_array(arr, (60, 70), tmp_path / "o.tif", meta=meta)
    with Image.open(out) as im:
        back = im.getexif()
        check_exif(back, (70, 60))
        assert float(back.get_ifd(EXIF_IFD)[0x829A]) == 1 / 250
        assert back.get_ifd(EXIF_IFD)[0x927C] == b"maker note bytes" and back.get_ifd(0x8825)[1] == "N"
        np.testing.assert_array_equal(np.asarray(im), arr[:60, :70])  # the pixels are untouched


def test_cmyk_jpeg_with_an_embedded_profile_is_converted_through_it(tmp_path):
    from cmyk_icc import cmyk_profile, corner_lab
    from skimage.color import rgb2lab

    inks = [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 0)]  # cyan, magenta, yellow, paper
    cmyk = np.zeros((16, 16 * len(inks), 4), np.uint8)  # flat 16x16 patches: JPEG keeps them
    for i, ink in enumerate(inks):
        cmyk[:, 16 * i: 16 * i + 16] = np.array(ink) * 255
    path = tmp_path / "cmyk-icc.jpg"
    Image.fromarray(cmyk, "CMYK").save(path, quality=100, icc_profile=cmyk_profile())
    got, _ = read_image(path)  # (16, 64, 3) float in [0, 1]
    with Image.open(path) as im:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        through = ImageCms.profileToProfile(im, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
        naive = np.asarray(im.convert("RGB"), np.float32) / 255
    np.testing.assert_allclose(got, np.asarray(through, np.float32) / 255, atol=1e-6)
    for i, ink in enumerate(inks[:3]):  # the profile's inks (dark grey-blue cyan...), not the naive ones
        want = np.array(corner_lab(ink))
        assert np.linalg.norm(rgb2lab(got[8, 16 * i + 8]) - want) < 10
        assert np.linalg.norm(rgb2lab(naive[8, 16 * i + 8]) - want) > 50
    assert description(read_meta(path).icc) == description(srgb_icc())  # the pixels are sRGB now
