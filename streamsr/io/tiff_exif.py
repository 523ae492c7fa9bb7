"""EXIF into a TIFF output: the tags of the EXIF block moved into the TIFF's own first IFD, and its Exif
and GPS sub-IFDs linked after the file is written.

In a TIFF, EXIF is not a blob: its IFD0 tags (Make, Model, Orientation, DateTime...) are tags of the
image's first IFD, and the Exif and GPS tags live in sub-IFDs that IFD0 points to (tags 34665, 34853).
tifffile writes the IFD0 tags (`extratags`) but no sub-IFD and refuses the pointer tags themselves, so
`ifd0_tags` reserves each pointer's entry under a stand-in code one below it (so that the entries stay in
ascending order once renamed), and `link_sub_ifds` appends the sub-IFDs to the finished BigTIFF and turns
each stand-in into the pointer to its sub-IFD. Values are moved as raw bytes, re-packed from the EXIF's
byte order to the TIFF's ("<").
Tags that describe the pixels (sizes, compression, offsets, resolution: tifffile writes its own) are not
copied; nor are pointers inside a sub-IFD (Interoperability), which would dangle.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

EXIF_POINTER, GPS_POINTER, INTEROP_POINTER = 34665, 34853, 40965
SUB_IFDS = (EXIF_POINTER, GPS_POINTER)
STAND_IN = {tag: tag - 1 for tag in SUB_IFDS}  # written in place of a pointer tag, renamed afterwards
SOFTWARE = 305
# IFD0 tags that describe the pixels or the file layout, or that the TIFF writer sets itself
LAYOUT_TAGS = frozenset({254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 282, 283, 284,
                         296, 317, 320, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 513, 514, 530, 531, 532,
                         34675, INTEROP_POINTER, *STAND_IN.values()})
# TIFF field type -> struct code of one value (rationals are 2 values)
TYPE_FORMATS = {1: "B", 2: "B", 3: "H", 4: "I", 5: "II", 6: "b", 7: "B", 8: "h", 9: "i", 10: "ii", 11: "f",
                12: "d", 13: "I", 16: "Q", 17: "q", 18: "Q"}
LONG8 = 16  # the pointers' type: BigTIFF readers take it for an offset (Pillow reads no IFD8, 18)


@dataclass(frozen=True)
class Field:
    """One tag of an IFD: its type, count and value bytes in little-endian order."""

    tag: int
    type: int
    count: int
    data: bytes


def _fields(blob: bytes, offset: int, order: str) -> list[Field]:
    """The fields of the classic (32-bit) IFD at `offset` of the TIFF `blob`; unknown types are skipped."""
    (n,) = struct.unpack_from(order + "H", blob, offset)
    fields = []
    for i in range(n):
        tag, kind, count, value = struct.unpack_from(order + "HHI4s", blob, offset + 2 + 12 * i)
        fmt = TYPE_FORMATS.get(kind)
        if fmt is None:
            continue
        size = struct.calcsize(fmt) * count
        if size <= 4:
            raw = value[:size]
        else:
            (at,) = struct.unpack(order + "I", value)
            raw = blob[at: at + size]
            if len(raw) < size:
                continue
        values = struct.unpack(order + fmt * count, raw)
        fields.append(Field(tag, kind, count, struct.pack("<" + fmt * count, *values)))
    return fields


def parse_exif(exif: bytes) -> tuple[list[Field], dict[int, list[Field]]]:
    """(IFD0 fields, {34665: Exif fields, 34853: GPS fields}) of an EXIF block: a TIFF header first,
    after the "Exif\\0\\0" marker or without it."""
    if exif.startswith(b"Exif\0\0"):
        exif = exif[6:]
    order = {b"II": "<", b"MM": ">"}[exif[:2]]
    (first,) = struct.unpack_from(order + "I", exif, 4)
    ifd0, subs = [], {}
    for f in _fields(exif, first, order):
        if f.tag in SUB_IFDS:
            (at,) = struct.unpack("<" + TYPE_FORMATS[f.type], f.data[:struct.calcsize(TYPE_FORMATS[f.type])])
            subs[f.tag] = [g for g in _fields(exif, at, order) if g.tag != INTEROP_POINTER]
        elif f.tag not in LAYOUT_TAGS:
            ifd0.append(f)
    return ifd0, subs


def ifd0_tags(exif: bytes | None) -> tuple[list[tuple], dict[int, list[Field]], str | None]:
    """For tifffile's TiffWriter.write: (extratags, the sub-IFDs to link afterwards, the Software text or
    None). The extratags hold one zero pointer per sub-IFD; an EXIF block that cannot be parsed gives
    nothing (metadata never fails an export)."""
    if not exif:
        return [], {}, None
    try:
        ifd0, subs = parse_exif(exif)
    except (struct.error, KeyError, ValueError):
        return [], {}, None
    software = next((f.data.rstrip(b"\0").decode("ascii", "replace") for f in ifd0 if f.tag == SOFTWARE), None)
    tags = [(f.tag, f.type, None, f.data, True) for f in ifd0 if f.tag != SOFTWARE]
    tags += [(STAND_IN[tag], LONG8, 1, 0, True) for tag in sorted(subs)]
    return tags, subs, software


def _bigtiff_ifd(fields: list[Field], at: int) -> bytes:
    """A BigTIFF IFD placed at file offset `at` (8-aligned): count, 20-byte entries, next 0, then the values
    longer than 8 bytes."""
    fields = sorted(fields, key=lambda f: f.tag)
    tail_at = at + 8 + 20 * len(fields) + 8
    head, tail = [struct.pack("<Q", len(fields))], bytearray()
    for f in fields:
        if len(f.data) <= 8:
            value = f.data.ljust(8, b"\0")
        else:
            value = struct.pack("<Q", tail_at + len(tail))
            tail += f.data + b"\0" * (len(f.data) % 2)
        head.append(struct.pack("<HHQ", f.tag, f.type, f.count) + value)  # a rational counts once
    head.append(struct.pack("<Q", 0))
    return b"".join(head) + bytes(tail)


def link_sub_ifds(fh, subs: dict[int, list[Field]]) -> None:
    """Append each sub-IFD to the BigTIFF open in `fh` (read/write); its stand-in entry in IFD0 becomes
    the pointer tag, with the sub-IFD's offset."""
    if not subs:
        return
    fh.seek(0)
    header = fh.read(16)
    if header[:4] != b"II+\0":
        raise ValueError("link_sub_ifds expects a little-endian BigTIFF")
    (first,) = struct.unpack_from("<Q", header, 8)
    fh.seek(first)
    (n,) = struct.unpack("<Q", fh.read(8))
    entries = fh.read(20 * n)
    slots = {struct.unpack_from("<H", entries, 20 * i)[0]: first + 8 + 20 * i for i in range(n)}
    for tag, fields in subs.items():
        slot = slots.get(STAND_IN[tag])
        if slot is None:  # the writer dropped the stand-in: the sub-IFD is not carried
            continue
        end = fh.seek(0, 2)
        at = end + (-end % 8)
        fh.write(b"\0" * (at - end) + _bigtiff_ifd(fields, at))
        fh.seek(slot)
        fh.write(struct.pack("<HHQQ", tag, LONG8, 1, at))
    fh.seek(0, 2)
