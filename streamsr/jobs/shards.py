"""The one writer of a job's arrays during a run: whole zarr v3 shards from in-memory buffers.

A job's block arrays are sharded (store.shard_grid: one file per shard of blocks, aligned to the job's
block batches), so an 8192^2 job makes a few hundred files instead of tens of thousands. zarr-python rewrites a whole shard on every partial write
(read-modify-write) and is not safe for concurrent partial writes to one shard, so `ShardWriter` keeps
each shard being filled in a buffer and writes it whole, once, when its last block arrives (a write that
is exactly one whole shard, the usual case when batches and shards are aligned, goes out at once).

Durability: a task's writes are on disk once every shard it wrote into has been written. `durable(next)`
is the first task whose writes may still be in a buffer: the cursor may be committed up to it, never past
it. `flush()` writes the open shards as they are (a partial shard by its written boxes, which zarr merges
into the stored shard); the runner flushes at every sweep end, before the next sweep writes anything.
Arrays without shards (job dirs of earlier versions) are written at once, block by block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .blockio import BlockWrite, Box
from .zarrio import disk_errors
from .faults import kill_point
from .integrity import check_present, read_checked
from .progress import Timers
from .store import JobStore

@dataclass
class _Shard:
    """A shard being filled: its buffer, the boxes written into it, and the first task that wrote."""

    origin: tuple[int, int]  # (y, x) of the shard in array pixels
    size: tuple[int, int]  # (h, w) inside the array
    buffer: np.ndarray
    first_task: int
    boxes: list[Box] = field(default_factory=list)
    filled: int = 0  # pixels written

    @property
    def complete(self) -> bool:
        return self.filled == self.size[0] * self.size[1]


class ShardWriter:
    """Buffers BlockWrites into whole shards and writes each shard once (see the module docstring)."""

    def __init__(self, store: JobStore, *, timers: Timers):
        self.store = store
        self.timers = timers
        self._open: dict[tuple[str, int, int], _Shard] = {}

    def write(self, task: int, writes: list[BlockWrite]) -> None:
        """Take the writes of task index `task`; shards that become complete are written."""
        for number, item in enumerate(writes):
            with self.timers("write"):
                self._take(task, item)
            if number == 0:
                kill_point(task, "mid-write")

    def _take(self, task: int, item: BlockWrite) -> None:
        array = self.store.array(item.name)
        value = item.array_value()  # (1, C, h, w) or (h, w, C)
        shards = array.shards
        if shards is None:
            with disk_errors(self.store.dir.store / item.name):
                self.store.write(item.name, item.box, value)
            return
        spatial = item.name == "output"  # (H, W, C) rather than (1, C, H, W)
        sh, sw = (shards[0], shards[1]) if spatial else (shards[2], shards[3])
        height, width = (array.shape[0], array.shape[1]) if spatial else (array.shape[2], array.shape[3])
        y0, y1, x0, x1 = item.box
        for sy in range(y0 // sh, (y1 - 1) // sh + 1):
            for sx in range(x0 // sw, (x1 - 1) // sw + 1):
                key = (item.name, sy, sx)
                shard = self._open.get(key)
                size = (min(sh, height - sy * sh), min(sw, width - sx * sw))
                if shard is None and tuple(item.box) == (sy * sh, sy * sh + size[0], sx * sw, sx * sw + size[1]):
                    with disk_errors(self.store.dir.store / item.name):  # exactly one whole shard: no buffer
                        self.store.write(item.name, item.box, value)
                    continue
                if shard is None:
                    shape = (*size, array.shape[2]) if spatial else (*array.shape[:2], *size)
                    shard = self._open[key] = _Shard((sy * sh, sx * sw), size, np.empty(shape, array.dtype), task)
                oy, ox = shard.origin
                a, b = max(y0, oy), min(y1, oy + shard.size[0])
                c, d = max(x0, ox), min(x1, ox + shard.size[1])
                part = (value[a - y0:b - y0, c - x0:d - x0] if spatial
                        else value[:, :, a - y0:b - y0, c - x0:d - x0])
                if spatial:
                    shard.buffer[a - oy:b - oy, c - ox:d - ox] = part
                else:
                    shard.buffer[:, :, a - oy:b - oy, c - ox:d - ox] = part
                shard.boxes.append((a, b, c, d))
                shard.filled += (b - a) * (d - c)
                if shard.complete:
                    self._write_shard(key)

    def _write_shard(self, key: tuple[str, int, int], *, partial: bool = False) -> None:
        """Write a buffered shard: whole, or (partial) each written box, then forget it."""
        name = key[0]
        shard = self._open.pop(key)
        oy, ox = shard.origin
        boxes = shard.boxes if partial else [(oy, oy + shard.size[0], ox, ox + shard.size[1])]
        for a, b, c, d in boxes:
            part = (shard.buffer[a - oy:b - oy, c - ox:d - ox] if name == "output"
                    else shard.buffer[:, :, a - oy:b - oy, c - ox:d - ox])
            with disk_errors(self.store.dir.store / name):  # zarrs: a full disk is a RuntimeError
                self.store.write(name, (a, b, c, d), part)

    def flush(self) -> None:
        """Write every open shard (partial ones by their written boxes): all taken writes are on disk."""
        with self.timers("write"):
            for key in list(self._open):
                self._write_shard(key, partial=not self._open[key].complete)

    def durable(self, next_task: int) -> int:
        """The cursor that may be committed once the writes of tasks before `next_task` were taken."""
        return min([next_task, *(shard.first_task for shard in self._open.values())])

    def buffered_bytes(self) -> int:
        return sum(shard.buffer.nbytes for shard in self._open.values())


class ShardReader:
    """Reads block regions of a job's arrays through whole cached shards (one file read per shard, not
    one per block; tasks walk the shards in raster order). Only for arrays that nothing writes while they
    are cached: the runner calls `forget()` at every sweep end, and the writer's arrays of a sweep are never
    its reads (executor.py). Arrays without shards are read directly."""

    def __init__(self, store: JobStore, *, keep: int = 1, keep_lr: int = 4):
        self.store = store
        self.keep = keep  # shards kept per state array (batches are shard-aligned: a task reads one)
        self.keep_lr = keep_lr  # shards kept of the lr and alpha arrays (a batch's LR halo spans up to 4)
        self._cache: dict[str, dict[tuple[int, int], tuple[tuple[int, int], np.ndarray]]] = {}

    def forget(self) -> None:
        self._cache.clear()

    def region(self, name: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """array[..., y0:y1, x0:x1] of a (1, C, H, W) array as float32 (1, C, y1-y0, x1-x0)."""
        array = self.store.reading(name)
        if array.shards is None:
            return self.store.read_region(name, (slice(None), slice(None), slice(y0, y1), slice(x0, x1)), origin=(y0, x0))
        sh, sw = array.shards[2], array.shards[3]
        out = np.empty((*array.shape[:2], y1 - y0, x1 - x0), dtype=array.dtype)
        for sy in range(y0 // sh, (y1 - 1) // sh + 1):
            for sx in range(x0 // sw, (x1 - 1) // sw + 1):
                (oy, ox), data = self._shard(name, array, sy, sx, sh, sw)
                a, b = max(y0, oy), min(y1, oy + data.shape[2])
                c, d = max(x0, ox), min(x1, ox + data.shape[3])
                out[:, :, a - y0:b - y0, c - x0:d - x0] = data[:, :, a - oy:b - oy, c - ox:d - ox]
        check_present(out, array, name, origin=(y0, x0), job=str(self.store.dir.root))  # no missing block
        return out

    def _shard(self, name, array, sy, sx, sh, sw) -> tuple[tuple[int, int], np.ndarray]:
        cache = self._cache.setdefault(name, {})
        hit = cache.pop((sy, sx), None)
        if hit is None:
            oy, ox = sy * sh, sx * sw
            whole = oy + sh <= array.shape[2] and ox + sw <= array.shape[3]  # zarrs checks a whole shard's checksums
            static = name in ("lr", "alpha")  # written once, at creation: their checksums are checked once per run
            if static:
                self.store.check_once(name)
            source = self.store.array(name) if whole or static else array
            hit = ((oy, ox), read_checked(source, name, (slice(None), slice(None), slice(oy, oy + sh), slice(ox, ox + sw)),
                                          origin=(oy, ox), job=str(self.store.dir.root)))
            while len(cache) >= (self.keep_lr if name in ("lr", "alpha") else self.keep):
                cache.pop(next(iter(cache)))
        cache[(sy, sx)] = hit  # most recent last
        return hit


class CachedArray:
    """A (1, C, H, W) array read through a ShardReader, sliceable as array[..., ys, xs] (LRRegion's use)."""

    def __init__(self, reader: ShardReader, name: str):
        self.reader = reader
        self.name = name
        self.shape = tuple(reader.store.array(name).shape)

    def __getitem__(self, key):
        _, ys, xs = key
        return self.reader.region(self.name, ys.start, ys.stop, xs.start, xs.stop)
