"""A small CMYK ICC profile made from scratch, for tests of CMYK inputs converted through their profile.

No CMYK profile ships with Pillow, and the ones in Debian packages are AGPL (Ghostscript) or large, so the
tests build their own: an ICC v2 output profile whose A2B0 (CMYK -> Lab, a lut16 with a 2-point grid)
maps each corner of the CMYK cube to a chosen Lab colour. The inks are deliberately unlike the naive ones
(cyan is a dark grey-blue, yellow a pink), so an image read through the profile differs plainly from
Pillow's profile-less CMYK -> RGB conversion. No ink is white (littleCMS maps device white to PCS white
whatever the profile says).
"""

from __future__ import annotations

import itertools
import struct

PAPER = (100.0, 0.0, 0.0)  # Lab of CMYK (0, 0, 0, 0)
INKS = {  # Lab shift each colorant at 100% adds to the paper (summed, then clipped)
    "C": (-60.0, -10.0, -10.0), "M": (-50.0, 20.0, 30.0), "Y": (-30.0, 30.0, 10.0), "K": (-80.0, 0.0, 0.0)}


def corner_lab(cmyk: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """The Lab colour of a corner of the CMYK cube (each of C, M, Y, K is 0 or 1)."""
    lab = list(PAPER)
    for on, shift in zip(cmyk, INKS.values()):
        lab = [v + on * s for v, s in zip(lab, shift)]
    return max(0.0, min(100.0, lab[0])), max(-128.0, min(127.0, lab[1])), max(-128.0, min(127.0, lab[2]))


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _tag_desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return b"desc" + b"\0" * 4 + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 8 + b"\0" * 3 + b"\0" * 67


def _tag_a2b0() -> bytes:
    """lut16Type: 4 inputs, 3 outputs (Lab, ICC v2 16-bit encoding), identity curves, 2-point grid."""
    head = b"mft2" + b"\0" * 4 + bytes((4, 3, 2, 0))
    matrix = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    curves_in = struct.pack(">HH", 2, 2) + struct.pack(">HH", 0, 65535) * 4
    clut = b""
    for cmyk in itertools.product((0, 1), repeat=4):  # the first channel varies slowest
        L, a, b = corner_lab(cmyk)
        clut += struct.pack(">HHH", round(L * 652.8), round((a + 128) * 256), round((b + 128) * 256))
    curves_out = struct.pack(">HH", 0, 65535) * 3
    return head + matrix + curves_in + clut + curves_out


def cmyk_profile() -> bytes:
    """The bytes of the profile (class 'prtr', colour space CMYK, PCS Lab, D50)."""
    tags = [(b"desc", _tag_desc("streamsr test CMYK")), (b"cprt", b"text\0\0\0\0public domain\0"),
            (b"wtpt", b"XYZ \0\0\0\0" + _s15(0.9642) + _s15(1.0) + _s15(0.8249)), (b"A2B0", _tag_a2b0())]
    table_size = 4 + 12 * len(tags)
    offset, entries, body = 128 + table_size, b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        entries += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = 128 + table_size + len(body)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"prtrCMYKLab "
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + entries + body
