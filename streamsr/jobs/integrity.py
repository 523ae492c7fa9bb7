"""Proof that job data is present and intact when it is read (issue 14): never a silently wrong pixel.

New job dirs store every block chunk with a crc32c checksum (zarr's `crc32c` codec, inside the shards'
chunk codecs) and give the float arrays a NaN fill value, so a chunk that is missing reads as NaN, not as
data. Reads of those arrays go through zarr-python's codec pipeline, which checks the checksum of every
chunk it decodes (the `zarrs` pipeline skips it on partial shard reads); the job's reads then check that
the blocks they return hold no NaN. Either failure is a `DamagedData` error, one line naming the array and
the block. Job dirs of earlier versions (no checksums, zero fill) are read as before, unverified.
"""

from __future__ import annotations

import math
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ShardingCodec

from ..errors import StreamsrError
from .zarrio import os_error_of


class DamagedData(StreamsrError):
    """A chunk of a job's arrays is missing or corrupt; the job dir is left as it was."""


def has_checksums(array: zarr.Array) -> bool:
    """Whether the array's chunks carry a crc32c (job dirs made since issue 14)."""
    codecs = array.metadata.codecs
    inner = codecs[0].codecs if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) else codecs
    return any(isinstance(codec, Crc32cCodec) for codec in inner)


def python_pipeline():
    """A context in which opened arrays use zarr-python's own codec pipeline (checksums checked on every
    decode; `zarrs` checks them only when it decodes a whole shard)."""
    return zarr.config.set({"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"})


def chunk_of(array: zarr.Array, name: str, y: int, x: int) -> str:
    """`name block (row r, col c)` of the chunk holding pixel (y, x) of a (1, C, H, W) array, the
    (H, W, C) output or the (1, V) vector."""
    if name == "vector":
        return "vector"
    ch, cw = array.chunks[:2] if name == "output" else array.chunks[2:]
    return f"{name} block (row {y // ch}, col {x // cw})"


def read_checked(array: zarr.Array, name: str, key, *, origin: tuple[int, int] = (0, 0), job: str = "") -> np.ndarray:
    """array[key] as numpy; a chunk that fails its checksum or cannot be decoded is DamagedData naming the
    array and the block at `origin` (the read's top-left pixel). OSError (disk) passes through."""
    try:
        return np.asarray(array[key])
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - zarr raises ValueError/RuntimeError/... for damaged chunks
        disk = os_error_of(exc, path=getattr(array.store, "root", None))
        if disk is not None:  # zarrs: EACCES, EIO, ... are RuntimeErrors; a disk error, not damaged data
            raise disk from None
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        if "checksum" in text.lower():
            text = "its checksum does not match"  # zarr's text quotes the raw checksum bytes
        raise DamagedData(f"job {job}: {chunk_of(array, name, *origin)} (or a block after it in the same shard) is "
                          f"corrupt ({text}); "
                          f"check the job with: streamsr verify {job}") from None


def check_present(data: np.ndarray, array: zarr.Array, name: str, *, origin: tuple[int, int], job: str) -> None:
    """DamagedData if a (1, C, h, w) float read starting at pixel `origin` holds NaN: a missing chunk of an
    array whose fill value is NaN (or a NaN that was computed, just as wrong)."""
    if not data.dtype.kind == "f" or not math.isnan(float(array.metadata.fill_value)):
        return
    if not np.isnan(data.sum(dtype=np.float64)):  # one pass; NaN propagates (inf - inf too)
        return
    bad = np.argwhere(np.isnan(data.reshape(-1, *data.shape[-2:])).any(axis=0))
    if not len(bad):
        return
    y, x = int(bad[0][0]) + origin[0], int(bad[0][1]) + origin[1]
    raise DamagedData(f"job {job}: {chunk_of(array, name, y, x)} is missing (reads as the NaN fill value); "
                      f"check the job with: streamsr verify {job}")



class CheckedArray:
    """A job array sliced like the zarr array (array[:, :, ys, xs], or output[ys, xs]) whose reads are
    `read_checked` and, for (1, C, H, W) float arrays, `check_present`."""

    def __init__(self, array: zarr.Array, name: str, *, job: str):
        self.array, self.name, self.job = array, name, job
        self.shape, self.dtype, self.chunks = array.shape, array.dtype, array.chunks

    def __getitem__(self, key) -> np.ndarray:
        parts = key if isinstance(key, tuple) else (key,)
        spatial = parts[:2] if self.name == "output" else parts[2:4]
        origin = tuple(int(s.start or 0) if isinstance(s, slice) else 0 for s in spatial) + (0, 0)
        data = read_checked(self.array, self.name, key, origin=origin[:2], job=self.job)
        if data.ndim == 4:
            check_present(data, self.array, self.name, origin=origin[:2], job=self.job)
        return data


def absent_chunks(array: zarr.Array, folder, *, inner: bool = True) -> list[tuple[int, ...]]:
    """Chunk coordinates inside the array that no shard stores (the shard file is gone, or, with `inner`,
    its index marks the chunk empty), for a sharded array of a local store at `folder` (the array's own
    dir). Arrays without shards: chunk files that do not exist. The `zarrs` pipeline stores no chunk that
    equals the fill value: `inner` only where that never happens (NaN fill), not for the output array."""
    from pathlib import Path  # noqa: PLC0415

    folder = Path(folder)
    chunks = array.chunks
    grid = tuple(-(-n // c) for n, c in zip(array.shape, chunks))
    absent = []
    if array.shards is None:
        for coords in np.ndindex(*grid):
            if not (folder / array.metadata.encode_chunk_key(coords)).is_file():
                absent.append(tuple(int(i) for i in coords))
        return absent
    per = tuple(s // c for s, c in zip(array.shards, chunks))
    count = math.prod(per)
    for shard in np.ndindex(*(-(-n // s) for n, s in zip(array.shape, array.shards))):
        path = folder / array.metadata.encode_chunk_key(shard)
        entries = None
        if inner and path.is_file() and path.stat().st_size >= count * 16 + 4:
            with open(path, "rb") as fh:
                fh.seek(-(count * 16 + 4), 2)
                entries = np.frombuffer(fh.read(count * 16), "<u8").reshape(count, 2)
        for n, local in enumerate(np.ndindex(*per)):
            coords = tuple(int(s * p + i) for s, p, i in zip(shard, per, local))
            stored = path.is_file() if entries is None else entries[n, 0] != 2 ** 64 - 1
            if all(c < g for c, g in zip(coords, grid)) and not stored:
                absent.append(coords)
    return absent


def checked_output(array: zarr.Array, *, folder, job: str) -> CheckedArray:
    """The output array of a job whose anchor tasks all ran, for export: DamagedData if a shard of it is
    missing, else a CheckedArray (checksums checked as it is read). Arrays without checksums (earlier
    versions) cannot be checked and are taken as they are."""
    if has_checksums(array):
        absent = absent_chunks(array, folder, inner=False)
        if absent:
            r, c = absent[0][:2]
            raise DamagedData(f"job {job}: output block (row {r}, col {c}) is missing"
                              f"{f' (and {len(absent) - 1} more)' if len(absent) > 1 else ''}; "
                              f"check the job with: streamsr verify {job}")
    return CheckedArray(array, "output", job=job)


def data_has_nan_fill(array: zarr.Array) -> bool:
    """A float array whose fill value is NaN (its stored chunks are never all fill)."""
    return array.dtype.kind == "f" and math.isnan(float(array.metadata.fill_value))


def check_chunks(array: zarr.Array, name: str, *, job: str) -> None:
    """Read a (1, C, H, W) array shard by shard (chunk by chunk without shards) through `array`'s pipeline:
    with zarr-python's, every stored chunk's checksum is checked; DamagedData names the first bad one."""
    step = array.shards or array.chunks
    for start in np.ndindex(*(-(-n // s) for n, s in zip(array.shape, step))):
        key = tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(start, step, array.shape))
        read_checked(array, name, key, origin=(key[-2].start, key[-1].start), job=job)


def check_shard_files(array: zarr.Array, root: Path, name: str, *, job: str) -> bool:
    """Check every stored chunk's crc32c of a sharded (1, C, H, W) array by reading each shard file once
    (the zarr v3 sharding layout: chunks, then an index of (offset, nbytes) pairs with its own crc32c at
    the end). About 50x faster than decoding chunk by chunk through zarr-python. Returns False when the
    array is not laid out that way (the caller checks it the slow way); DamagedData names a bad chunk."""
    codecs = array.metadata.codecs
    if array.shards is None or len(codecs) != 1 or not has_checksums(array):
        return False
    sharding = codecs[0]
    inner = [type(c).__name__ for c in sharding.codecs]
    index = [type(c).__name__ for c in sharding.index_codecs]
    if inner != ["BytesCodec", "Crc32cCodec"] or index != ["BytesCodec", "Crc32cCodec"] \
            or str(sharding.index_location.value) != "end":
        return False
    per = [s // c for s, c in zip(array.shards, array.chunks)]  # chunks per shard along each axis
    count = int(np.prod(per))
    grid = [-(-n // s) for n, s in zip(array.shape, array.shards)]
    for start in np.ndindex(*grid):
        path = root.joinpath("c", *map(str, start))
        if not path.is_file():
            continue  # an absent shard: check_present finds what it should have held
        data = path.read_bytes()
        table, crc = data[-(16 * count + 4):-4], data[-4:]
        origin = (start[-2] * array.shards[-2], start[-1] * array.shards[-1])
        if len(data) < 16 * count + 4 or _crc(table) != crc:
            raise DamagedData(f"job {job}: {chunk_of(array, name, *origin)} (or a block after it in the same shard) "
                              f"is corrupt (the shard's index fails its checksum); check the job with: "
                              f"streamsr verify {job}")
        entries = np.frombuffer(table, dtype="<u8").reshape(count, 2)  # (offset, nbytes) per chunk
        for number, (offset, nbytes) in enumerate(entries):
            if offset == 2 ** 64 - 1:
                continue  # not stored (the fill value)
            chunk = data[int(offset):int(offset + nbytes)]
            if len(chunk) != nbytes or _crc(chunk[:-4]) != chunk[-4:]:
                within = np.unravel_index(number, per)
                y = origin[0] + int(within[-2]) * array.chunks[-2]
                x = origin[1] + int(within[-1]) * array.chunks[-1]
                raise DamagedData(f"job {job}: {chunk_of(array, name, y, x)} is corrupt (its checksum does not "
                                  f"match); check the job with: streamsr verify {job}")
    return True


def _crc(data: bytes) -> bytes:
    return np.uint32(google_crc32c.value(data)).tobytes()  # little-endian, as zarr's Crc32cCodec stores it
