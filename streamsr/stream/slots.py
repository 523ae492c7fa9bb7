"""Fixed-size slots carved out of one flat buffer: the bookkeeping of the host K/V frontier.

The host frontier (frontier.py) holds entries of one size (K and V of one block at one layer). Instead of
one pinned tensor per entry (the CUDA pinned allocator rounds each up to a power of two: 2.5 MiB tensors
take 4 MiB), it allocates one buffer of `capacity` slots once and hands out slots by index. `SlotAllocator`
is the plain bookkeeping (no torch: tested on its own); `SlotBuffer` pairs it with a flat tensor and gives
the (2, *shape) view of a slot.
"""

from __future__ import annotations

import heapq
import math

import torch


class SlotsExhausted(RuntimeError):
    """Every slot is in use: more entries than the buffer was sized for (a bug in the plan or the caller)."""


class SlotAllocator:
    """Slots 0..capacity-1; `alloc` gives the lowest free one (deterministic), `free` returns it."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"a slot allocator needs at least one slot, got {capacity}")
        self.capacity = capacity
        self._free = list(range(capacity))  # a heap: the lowest free slot first
        self._used: set[int] = set()
        self.peak_used = 0

    def __len__(self) -> int:
        """Slots in use."""
        return len(self._used)

    @property
    def full(self) -> bool:
        return not self._free

    def alloc(self) -> int:
        if not self._free:
            raise SlotsExhausted(f"all {self.capacity} slots are in use")
        slot = heapq.heappop(self._free)
        self._used.add(slot)
        self.peak_used = max(self.peak_used, len(self._used))
        return slot

    def free(self, slot: int) -> None:
        if slot not in self._used:
            raise ValueError(f"slot {slot} is not in use")
        self._used.remove(slot)
        heapq.heappush(self._free, slot)


class SlotBuffer:
    """`capacity` slots of K and V (each `shape`, `dtype`) in one flat tensor made by `make(numel, dtype)`."""

    def __init__(self, capacity: int, shape: tuple[int, ...], dtype: torch.dtype, make):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.slot_numel = 2 * math.prod(self.shape)  # K then V
        self.slots = SlotAllocator(capacity)
        self.buffer = make(capacity * self.slot_numel, dtype)  # (capacity * 2 * prod(shape),) flat

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    def fits(self, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
        return tuple(shape) == self.shape and dtype == self.dtype

    def view(self, slot: int) -> torch.Tensor:
        """The slot's K and V: (2, *shape), a view into the buffer."""
        start = slot * self.slot_numel
        return self.buffer[start:start + self.slot_numel].view(2, *self.shape)  # (2, B, T, H, D)
