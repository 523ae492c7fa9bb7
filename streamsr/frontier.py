"""The K/V frontier: per-layer K and V of the blocks that later block batches still read.

Entries are keyed by (block, layer) and hold K and V as they leave qk-LN and RoPE, before the per-slot
block position embedding is added. The engine drops an entry once its last reader has used it and puts
the new batch's entries layer by layer, so the frontier never holds more than `capacity` blocks' worth
of K/V; `put` enforces that bound and `peak_bytes` records the high-water mark.
"""

from __future__ import annotations

import torch

from .planner import Block


class FrontierOverflow(RuntimeError):
    """More K/V entries than the planned bound: a bug in the plan or the engine."""


class Frontier:
    def __init__(self, capacity_blocks: int, layers: int, device: torch.device | str | None = None):
        self.capacity_entries = capacity_blocks * layers  # one entry = one block at one layer
        self.layers = layers
        self.device = device  # None: keep tensors where they are made
        self._entries: dict[tuple[Block, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.held_bytes = 0
        self.peak_bytes = 0
        self.peak_entries = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def peak_blocks(self) -> float:
        """Peak held K/V in units of whole blocks (all layers)."""
        return self.peak_entries / self.layers

    def blocks(self) -> set[Block]:
        return {block for block, _ in self._entries}

    def put(self, block: Block, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one block's K, V (B, T, H, D) at one layer."""
        key = (block, layer)
        if key in self._entries:
            raise FrontierOverflow(f"frontier already holds block {block} at layer {layer}")
        if len(self._entries) + 1 > self.capacity_entries:
            raise FrontierOverflow(f"frontier bound exceeded: {len(self._entries) + 1} entries > "
                                   f"{self.capacity_entries} ({self.capacity_entries // self.layers} blocks "
                                   f"x {self.layers} layers)")
        if self.device is not None:
            k, v = k.to(self.device), v.to(self.device)
        self._entries[key] = (k, v)
        self.held_bytes += _nbytes(k) + _nbytes(v)
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        self.peak_entries = max(self.peak_entries, len(self._entries))

    def get(self, block: Block, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return self._entries[(block, layer)]
        except KeyError:
            raise KeyError(f"frontier has no K/V for block {block} at layer {layer}") from None

    def drop(self, block: Block, layer: int) -> None:
        k, v = self._entries.pop((block, layer))
        self.held_bytes -= _nbytes(k) + _nbytes(v)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
