"""The K/V frontier: per-layer K and V of the blocks that later block batches still read.

Entries are keyed by (block, layer) and hold K and V as they leave qk-LN and RoPE, before the per-slot
block position embedding is added. The engine (engine.py) drops an entry once its last reader has used
it and puts the new batch's entries layer by layer, as the batch's plan says, so the frontier never
holds more than `capacity` blocks' worth of K/V; `put` enforces that bound.

Where the entries live is the plan's placement (memory.py):
  device  on the compute device, in two tensors (K, V) of `capacity` slots allocated at the first put
          (slots.DeviceSlots): a batch's entries go in with one indexed copy per layer (`put_many`) and its
          reads come out with one (`gather`);
  host    in one host buffer of `capacity` slots allocated at the first put (pinned on CUDA, carved into
          views: slots.py), copied to the device for the batch that reads them;
  disk    in raw files under a spill dir, read back for the batch that reads them.
`prefetch(blocks)` stages the entries of the given blocks on the device ahead of use; `get` (one entry) and
`gather` (a batch's reads at one layer, stacked) hand them to the compute stream; `release_staged()`
frees them after the batch. The copies go through a copier
(copies.py): synchronous on the CPU, on a side stream with events on CUDA. With an asynchronous copier:
  - `put` copies device -> host without waiting (host: into the entry's slot; disk: into a small pinned
    bounce buffer, written to its file once the copy is done, `_flush_spills`) and keeps the device
    tensors until the next `prefetch`, the batch boundary: the entries the next batch reads (the
    batch's right column) are staged from them, with no copy back; the others are freed then;
  - `get` makes the compute stream wait for a staged entry's copy and marks its memory as used there.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.grid import Block
from .copies import SyncCopier, copier_for
from .memory import BOUNCE_BLOCKS, PLACEMENTS
from .slots import DeviceSlots, SlotBuffer


class FrontierOverflow(RuntimeError):
    """More K/V entries than the planned bound: a bug in the plan or the engine."""


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class _Entry:
    """One stored entry: a device slot (device), a host slot (host), or a spill file (disk)."""

    nbytes: int
    slot: int | None = None  # device or host slot; disk: bounce slot while the spill write is pending
    event: object = None  # the device -> host copy into the slot (None: done, or synchronous)
    path: Path | None = None  # disk placement


@dataclass
class _Staged:
    """A device copy of an entry for the current batch: K, V (B, T, H, D) and how it was made."""

    k: torch.Tensor
    v: torch.Tensor
    nbytes: int
    base: torch.Tensor | None = None  # (2, B, T, H, D) made by copier.to_device (None: the put's own tensors)
    event: object = None  # its host -> device copy, until the compute stream has waited for it


def _release(copier: SyncCopier, buffers: list[SlotBuffer]) -> None:
    for buf in buffers:
        copier.release_host_buffer(buf.buffer)
    buffers.clear()


class Frontier:
    """Per-layer K/V entries of blocks, bounded by `capacity_blocks`, placed on device, host or disk."""

    def __init__(self, capacity_blocks: int, layers: int, placement: str = "device",
                 device: torch.device | str | None = None, spill_dir: Path | None = None,
                 copier: SyncCopier | None = None):
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        if placement == "disk" and spill_dir is None:
            raise ValueError("a disk frontier needs a spill dir")
        self.capacity_entries = capacity_blocks * layers  # one entry = one block at one layer
        self.layers = layers
        self.placement = placement
        self.device = torch.device(device) if device is not None else None
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
        self.copier = copier if copier is not None else copier_for(self.device)
        self.asynchronous = placement != "device" and getattr(self.copier, "asynchronous", False)
        self._entries: dict[tuple[Block, int], _Entry] = {}
        self._staged: dict[tuple[Block, int], _Staged] = {}
        self._recent: dict[tuple[Block, int], _Staged] = {}  # put since the last prefetch, still on the device
        self._pending: list[tuple[Block, int]] = []  # disk entries whose spill write waits for its copy
        self._shape: tuple[int, ...] | None = None  # every entry's K shape (B, T, H, D) and dtype
        self._dtype: torch.dtype | None = None
        self._host: SlotBuffer | None = None  # host placement: every entry's slot; disk: the bounce slots
        self._device = DeviceSlots(self.capacity_entries) if placement == "device" else None
        self._buffers: list[SlotBuffer] = []
        self._finalizer = weakref.finalize(self, _release, self.copier, self._buffers)
        self.held_bytes = 0  # wherever the entries live
        self.peak_bytes = 0
        self.peak_entries = 0
        self.staged_bytes = 0  # device copies of host/disk entries (and the last batch's entries kept there)
        self.peak_staged_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def peak_blocks(self) -> float:
        """Peak held K/V in units of whole blocks (all layers)."""
        return self.peak_entries / self.layers

    @property
    def host_buffer_bytes(self) -> int:
        """Bytes of the host buffer (host placement: all `capacity` slots; disk: the bounce slots)."""
        return sum(buf.nbytes for buf in self._buffers)

    def blocks(self) -> set[Block]:
        return {block for block, _ in self._entries}

    def close(self) -> None:
        """Hand the host buffer back to the copier now (also done when the frontier is collected)."""
        self._recent.clear()
        self._staged.clear()
        self.staged_bytes = 0
        if self._device is not None:
            self._device.release()
        self._finalizer()

    # ---- storing ------------------------------------------------------------------------------------
    def put(self, block: Block, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one block's K, V (B, T, H, D) at one layer (copied, except by an asynchronous copier)."""
        self.put_many((block,), layer, k[:, None], v[:, None])

    def put_many(self, blocks, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the K, V (B, E, T, H, D) of E blocks at one layer; entry i is k[:, i], v[:, i]."""
        keys = [(block, layer) for block in blocks]
        seen: set[tuple[Block, int]] = set()
        for key in keys:
            if key in self._entries or key in seen:
                raise FrontierOverflow(f"frontier already holds block {key[0]} at layer {layer}")
            seen.add(key)
        if len(self._entries) + len(keys) > self.capacity_entries:
            raise FrontierOverflow(f"frontier bound exceeded: {len(self._entries) + len(keys)} entries > "
                                   f"{self.capacity_entries} ({self.capacity_entries // self.layers} blocks "
                                   f"x {self.layers} layers)")
        if self.placement == "device":
            nbytes = (_nbytes(k) + _nbytes(v)) // max(len(keys), 1)
            for key, slot in zip(keys, self._device.put(k, v)):
                self._add(key, _Entry(nbytes, slot=slot))
            return
        for i, key in enumerate(keys):
            self._put_one(key, k[:, i], v[:, i])

    def _put_one(self, key: tuple[Block, int], k: torch.Tensor, v: torch.Tensor) -> None:
        entry = _Entry(_nbytes(k) + _nbytes(v))
        if self.placement == "host":
            buf = self._buffer(k, self.capacity_entries)
            entry.slot = buf.slots.alloc()
            entry.event = self.copier.to_host(buf.view(entry.slot), k, v)
        else:
            entry.path = self._path(key)
            if self.asynchronous:
                buf = self._buffer(k, BOUNCE_BLOCKS * self.layers)
                if buf.slots.full:
                    self._flush_spills(-(-buf.slots.capacity // 2))
                entry.slot = buf.slots.alloc()
                entry.event = self.copier.to_host(buf.view(entry.slot), k, v)
                self._pending.append(key)
            else:
                self._write(entry.path, k, v)
        if self.asynchronous:  # kept on the device until the batch boundary (`prefetch`)
            self._recent[key] = _Staged(k, v, entry.nbytes)
            self._count_staged(entry.nbytes)
        self._add(key, entry)

    def _add(self, key: tuple[Block, int], entry: _Entry) -> None:
        self._entries[key] = entry
        self.held_bytes += entry.nbytes
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        self.peak_entries = max(self.peak_entries, len(self._entries))

    def _buffer(self, k: torch.Tensor, capacity: int) -> SlotBuffer:
        """The frontier's host buffer, allocated at `capacity` slots by the first put."""
        if self._host is None:
            self._shape, self._dtype = tuple(k.shape), k.dtype
            self._host = SlotBuffer(capacity, self._shape, self._dtype, self.copier.host_buffer)
            self._buffers.append(self._host)
        if not self._host.fits(tuple(k.shape), k.dtype):
            raise ValueError(f"K/V of shape {tuple(k.shape)} {k.dtype} in a frontier of {self._host.shape} "
                             f"{self._host.dtype} entries")
        return self._host

    def _path(self, key: tuple[Block, int]) -> Path:
        (r, c), layer = key
        return self.spill_dir / f"kv_{r}_{c}_{layer}.bin"

    def _write(self, path: Path, *tensors: torch.Tensor) -> None:
        """Write K then V as raw bytes (never pickled); shape and dtype are the frontier's."""
        if self._shape is None:
            self._shape, self._dtype = tuple(tensors[0].shape), tensors[0].dtype
        with open(path, "wb") as fh:
            for t in tensors:
                fh.write(memoryview(t.detach().cpu().contiguous().view(torch.uint8).numpy()))

    def _flush_spills(self, count: int | None = None) -> None:
        """Write the oldest `count` (None: all) pending spills once their copies are done; free their slots."""
        done, self._pending = (self._pending, []) if count is None else (self._pending[:count], self._pending[count:])
        for key in done:
            entry = self._entries[key]
            self.copier.host_ready(entry.event)
            self._write(entry.path, self._host.view(entry.slot))
            self._host.slots.free(entry.slot)
            entry.slot, entry.event = None, None

    def _load(self, path: Path) -> torch.Tensor:
        """A spilled entry: (2, B, T, H, D) in host memory."""
        raw = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        return raw.view(self._dtype).reshape(2, *self._shape)  # (2, B, T, H, D)

    def _source(self, key: tuple[Block, int]) -> torch.Tensor:
        """Where an entry's K and V are read from: its host slot or its spill file, (2, B, T, H, D)."""
        entry = self._entries[key]
        if self.placement == "host":
            return self._host.view(entry.slot)
        if entry.slot is not None:  # its spill write is still pending
            self._flush_spills()
        return self._load(entry.path)

    # ---- reading ------------------------------------------------------------------------------------
    def prefetch(self, blocks) -> None:
        """Stage every layer of these blocks on the device (side stream on CUDA); device placement: no-op.

        With an asynchronous copier this is the batch boundary: the entries put since the last prefetch
        are staged from their device tensors if they are among `blocks`, and freed otherwise."""
        if self.placement == "device":
            return
        for block in blocks:
            for layer in range(self.layers):
                key = (block, layer)
                if key in self._staged or key not in self._entries:
                    continue
                recent = self._recent.pop(key, None)
                if recent is not None:
                    self._staged[key] = recent
                    continue
                base, event = self.copier.to_device(self._source(key), self.device)  # (2, B, T, H, D)
                self._staged[key] = _Staged(base[0], base[1], self._entries[key].nbytes, base, event)
                self._count_staged(self._entries[key].nbytes)
        for key in list(self._recent):  # the batch's entries that the next batch does not read
            self._count_staged(-self._recent.pop(key).nbytes)

    def get(self, block: Block, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (block, layer)
        entry = self._entries.get(key)
        if entry is None:
            raise KeyError(f"frontier has no K/V for block {block} at layer {layer}")
        if self.placement == "device":
            return self._device.view(entry.slot)
        staged = self._staged.get(key) or self._recent.get(key)
        if staged is None:  # not prefetched: copy it now
            base, event = self.copier.to_device(self._source(key), self.device)  # (2, B, T, H, D)
            self.copier.use(base, event)
            return base[0], base[1]
        if staged.event is not None:
            self.copier.use(staged.base, staged.event)
            staged.event = None
        return staged.k, staged.v

    def gather(self, blocks, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The K, V of `blocks` at one layer stacked on dim 1: (B, R, T, H, D) each, new tensors."""
        if self.placement == "device":
            missing = [block for block in blocks if (block, layer) not in self._entries]
            if missing:
                raise KeyError(f"frontier has no K/V for block {missing[0]} at layer {layer}")
            return self._device.gather([self._entries[(block, layer)].slot for block in blocks])
        pairs = [self.get(block, layer) for block in blocks]
        return torch.stack([k for k, _ in pairs], dim=1), torch.stack([v for _, v in pairs], dim=1)

    def drop(self, block: Block, layer: int) -> None:
        key = (block, layer)
        entry = self._entries.pop(key)
        self.held_bytes -= entry.nbytes
        if key in self._pending:
            self._pending.remove(key)
        if entry.slot is not None:  # a later copy into the slot runs after this entry's copies (one stream)
            (self._device or self._host).slots.free(entry.slot)
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)
        for staged in (self._staged.pop(key, None), self._recent.pop(key, None)):
            if staged is not None:
                self._count_staged(-staged.nbytes)

    # ---- snapshots (bounded resume, jobs/snapshots.py) ----------------------------------------------
    def export(self) -> dict[str, torch.Tensor]:
        """Every entry's K and V in host memory, named "R_C_LAYER" -> (2, B, T, H, D): what `restore` turns
        back into the same frontier (a resume then replays only the batches after it)."""
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # every device -> host copy into a slot is done
        out = {}
        for key, entry in self._entries.items():
            (r, c), layer = key
            if self.placement == "device":
                out[f"{r}_{c}_{layer}"] = torch.stack(self._device.view(entry.slot)).cpu()  # (2, B, T, H, D)
            else:
                out[f"{r}_{c}_{layer}"] = self._source(key).clone()  # (2, B, T, H, D)
        return out

    def restore(self, entries: dict[str, torch.Tensor]) -> None:
        """Put the entries of an `export` (of the same sweep, at the same batch) into this empty frontier."""
        if self._entries:
            raise ValueError("restore needs an empty frontier")
        for name, kv in entries.items():  # kv: (2, B, T, H, D)
            r, c, layer = (int(part) for part in name.split("_"))
            k, v = (kv[0], kv[1]) if self.device is None else (kv[0].to(self.device), kv[1].to(self.device))
            self.put((r, c), layer, k, v)

    def _count_staged(self, nbytes: int) -> None:
        self.staged_bytes += nbytes
        self.peak_staged_bytes = max(self.peak_staged_bytes, self.staged_bytes)

    def release_staged(self) -> None:
        """Free the device copies staged for the batch that just finished."""
        for key in list(self._staged):
            self._count_staged(-self._staged.pop(key).nbytes)
