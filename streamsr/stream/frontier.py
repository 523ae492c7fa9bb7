"""The K/V frontier: per-layer K and V of the blocks that later block batches still read.

Entries are keyed by (block, layer) and hold K and V as they leave qk-LN and RoPE, before the per-slot
block position embedding is added. The engine (engine.py) drops an entry once its last reader has used
it and puts the new batch's entries layer by layer, as the batch's plan says, so the frontier never
holds more than `capacity` blocks' worth of K/V; `put` enforces that bound.

Where the entries live is the plan's placement (memory.py):
  device  on the compute device;
  host    in host memory (pinned on CUDA), copied to the device for the batch that reads them;
  disk    in raw files under a spill dir, read back for the batch that reads them.
`prefetch(blocks)` stages the entries of the given blocks on the device ahead of use (on CUDA the host
copies run on a side stream, overlapping the current batch's compute); `release_staged()` frees them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.grid import Block
from .memory import PLACEMENTS


class FrontierOverflow(RuntimeError):
    """More K/V entries than the planned bound: a bug in the plan or the engine."""


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Frontier:
    """Per-layer K/V entries of blocks, bounded by `capacity_blocks`, placed on device, host or disk."""

    def __init__(self, capacity_blocks: int, layers: int, placement: str = "device",
                 device: torch.device | str | None = None, spill_dir: Path | None = None):
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
        cuda = self.device is not None and self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if cuda and placement != "device" else None
        self._entries: dict[tuple[Block, int], object] = {}  # value: (k, v) tensors, or spill meta
        self._staged: dict[tuple[Block, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._events: dict[tuple[Block, int], torch.cuda.Event] = {}
        self.held_bytes = 0  # wherever the entries live
        self.peak_bytes = 0
        self.peak_entries = 0
        self.staged_bytes = 0  # device copies of host/disk entries
        self.peak_staged_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def peak_blocks(self) -> float:
        """Peak held K/V in units of whole blocks (all layers)."""
        return self.peak_entries / self.layers

    def blocks(self) -> set[Block]:
        return {block for block, _ in self._entries}

    # ---- storing ------------------------------------------------------------------------------------
    def put(self, block: Block, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one block's K, V (B, T, H, D) at one layer."""
        key = (block, layer)
        if key in self._entries:
            raise FrontierOverflow(f"frontier already holds block {block} at layer {layer}")
        if len(self._entries) + 1 > self.capacity_entries:
            raise FrontierOverflow(f"frontier bound exceeded: {len(self._entries) + 1} entries > "
                                   f"{self.capacity_entries} ({self.capacity_entries // self.layers} blocks "
                                   f"x {self.layers} layers)")
        size = _nbytes(k) + _nbytes(v)
        if self.placement == "device":
            self._entries[key] = (k, v)
        elif self.placement == "host":
            self._entries[key] = (self._to_host(k), self._to_host(v))
        else:
            self._entries[key] = self._spill(key, k, v)
        self.held_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        self.peak_entries = max(self.peak_entries, len(self._entries))

    def _to_host(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu":
            return t.clone()
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        out.copy_(t, non_blocking=False)
        return out

    def _path(self, key: tuple[Block, int]) -> Path:
        (r, c), layer = key
        return self.spill_dir / f"kv_{r}_{c}_{layer}.bin"

    def _spill(self, key, k: torch.Tensor, v: torch.Tensor) -> tuple:
        """Write K then V as raw bytes; remember shape and dtype (never pickled)."""
        path = self._path(key)
        with open(path, "wb") as fh:
            for t in (k, v):
                fh.write(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return ("disk", path, tuple(k.shape), k.dtype)

    def _load(self, meta: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        _, path, shape, dtype = meta
        raw = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        k, v = raw.view(dtype).reshape(2, *shape).unbind(0)
        return k, v

    # ---- reading ------------------------------------------------------------------------------------
    def _fetch(self, key, non_blocking: bool) -> tuple[torch.Tensor, torch.Tensor]:
        stored = self._entries[key]
        k, v = self._load(stored) if self.placement == "disk" else stored
        if self.device is None or k.device == self.device:
            return k, v
        return k.to(self.device, non_blocking=non_blocking), v.to(self.device, non_blocking=non_blocking)

    def prefetch(self, blocks) -> None:
        """Stage every layer of these blocks on the device (side stream on CUDA); device placement: no-op."""
        if self.placement == "device":
            return
        for block in blocks:
            for layer in range(self.layers):
                key = (block, layer)
                if key in self._staged or key not in self._entries:
                    continue
                if self._stream is not None:
                    with torch.cuda.stream(self._stream):
                        staged = self._fetch(key, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(self._stream)
                    self._events[key] = event
                else:
                    staged = self._fetch(key, non_blocking=False)
                self._staged[key] = staged
                self.staged_bytes += _nbytes(staged[0]) + _nbytes(staged[1])
                self.peak_staged_bytes = max(self.peak_staged_bytes, self.staged_bytes)

    def get(self, block: Block, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (block, layer)
        if key not in self._entries:
            raise KeyError(f"frontier has no K/V for block {block} at layer {layer}")
        if key in self._staged:
            event = self._events.pop(key, None)
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
            return self._staged[key]
        return self._fetch(key, non_blocking=False)

    def drop(self, block: Block, layer: int) -> None:
        key = (block, layer)
        stored = self._entries.pop(key)
        if self.placement == "disk":
            _, path, shape, dtype = stored
            self.held_bytes -= 2 * int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
            path.unlink(missing_ok=True)
        else:
            self.held_bytes -= _nbytes(stored[0]) + _nbytes(stored[1])
        self._unstage(key)

    def _unstage(self, key) -> None:
        staged = self._staged.pop(key, None)
        self._events.pop(key, None)
        if staged is not None:
            self.staged_bytes -= _nbytes(staged[0]) + _nbytes(staged[1])

    def release_staged(self) -> None:
        """Free the device copies staged for the batch that just finished."""
        for key in list(self._staged):
            self._unstage(key)
