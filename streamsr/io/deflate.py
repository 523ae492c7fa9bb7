"""One zlib stream (RFC 1950) deflated on several threads, for the PNG writer: pigz's technique.

A PNG's pixels are a single zlib stream across its IDAT chunks, and zlib at level 6 on one core was the PNG
writer's bottleneck (~75% of its time). The stream is cut into pieces of `piece_bytes`; each piece is
deflated on a worker thread as raw deflate, primed with the 32 KiB that precede it (so matches reach back
across the cut and almost nothing is lost), and ended by a sync flush (an empty stored block: byte-aligned
and not final); the last piece ends with the final block. Those pieces, behind a zlib header and followed
by the Adler-32 of all the data, concatenate into one valid zlib stream.

The bytes depend only on the data, the level and the piece size, never on the number of threads or their
timing. Memory is bounded: at most `workers + 1` pieces are in flight (about 100 MiB above the
image rows for 8 threads on a 16384-px-wide RGB image, whatever its height). The compressor is zlib-ng (the
`zlib-ng` package, about twice zlib's speed for the same ratio) when it is importable, else Python's zlib;
both release the GIL while they deflate.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

try:
    from zlib_ng import zlib_ng as zlib_impl
except ImportError:  # a platform without a zlib-ng wheel: the same API, slower
    import zlib as zlib_impl

WINDOW = 1 << 15  # deflate's window: the dictionary each piece is primed with
PIECE_BYTES = 1 << 21  # uncompressed bytes per piece (a sync flush costs ~5 bytes each)


def cpu_workers(cap: int = 8) -> int:
    """Threads worth using here: the CPUs this process may run on, at most `cap`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cap, cpus))


def zlib_header(level: int) -> bytes:
    """The 2-byte zlib header: deflate with a 32 KiB window, FLEVEL from `level`, FCHECK making it a
    multiple of 31 (RFC 1950 section 2.2)."""
    cmf = 0x78
    flevel = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    flg = flevel << 6
    flg |= 31 - ((cmf << 8) | flg) % 31
    return bytes((cmf, flg))


def _deflate_piece(data: bytes, primer: bytes, level: int, last: bool) -> bytes:
    """Raw deflate of one piece, primed with the bytes before it; sync-flushed unless `last`."""
    zip_ = zlib_impl.compressobj(level, zlib_impl.DEFLATED, -15, **({"zdict": primer} if primer else {}))
    return zip_.compress(data) + zip_.flush(zlib_impl.Z_FINISH if last else zlib_impl.Z_SYNC_FLUSH)


class ParallelDeflate:
    """Feed bytes in order (`feed`), then `finish`; both return the compressed bytes that are ready, in
    order; together they make one zlib stream. `close` drops the work in flight (after a failure)."""

    def __init__(self, level: int, *, workers: int = 1, piece_bytes: int | None = None):
        if not 0 <= level <= 9:
            raise ValueError(f"zlib level must be 0..9, not {level}")
        self.level, self.piece_bytes = level, max(WINDOW, int(piece_bytes or PIECE_BYTES))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="deflate") if workers > 1 else None
        self._inflight = workers + 1
        self._pending: deque[Future | bytes] = deque()
        self._buffer = bytearray()
        self._primer = b""
        self._adler = zlib_impl.adler32(b"")
        self._head = zlib_header(level)

    def _submit(self, piece: bytes, *, last: bool) -> None:
        args = (piece, self._primer, self.level, last)
        self._pending.append(self._pool.submit(_deflate_piece, *args) if self._pool else _deflate_piece(*args))
        self._primer = piece[-WINDOW:]

    def _ready(self, *, wait: bool) -> list[bytes]:
        """Compressed pieces done, in order; with `wait`, all of them."""
        out = [self._head] if self._head else []
        self._head = b""
        while self._pending:
            first = self._pending[0]
            if isinstance(first, Future):
                if not (wait or len(self._pending) > self._inflight or first.done()):
                    break
                first = first.result()
            out.append(first)
            self._pending.popleft()
        return out

    def feed(self, data) -> list[bytes]:
        """Take the next bytes of the stream; returns the compressed bytes ready so far."""
        data = memoryview(data).cast("B")  # any C-contiguous buffer (bytes, a numpy array) as bytes
        self._adler = zlib_impl.adler32(data, self._adler)
        self._buffer += data
        step = self.piece_bytes
        cut, out = len(self._buffer) // step * step, []
        for i in range(0, cut, step):
            self._submit(bytes(self._buffer[i: i + step]), last=False)
            out += self._ready(wait=False)  # waits for the oldest piece when too many are in flight
        del self._buffer[:cut]
        return out + self._ready(wait=False)

    def finish(self) -> list[bytes]:
        """The rest of the stream: the final piece (possibly empty: a final empty block) and the Adler-32."""
        self._submit(bytes(self._buffer), last=True)
        self._buffer.clear()
        out = self._ready(wait=True) + [struct.pack(">I", self._adler & 0xFFFFFFFF)]
        self.close()
        return out

    def close(self) -> None:
        """Stop the workers; pieces not yet compressed are dropped."""
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
