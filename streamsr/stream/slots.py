"""Fixed-size slots carved out of one flat buffer: the bookkeeping of the host K/V frontier.

The host frontier (frontier.py) holds entries of one size (K and V of one block at one layer). Instead of
one pinned tensor per entry (the CUDA pinned allocator rounds each up to a power of two: 2.5 MiB tensors
take 4 MiB), it allocates one buffer of `capacity` slots once and hands out slots by index. `SlotAllocator`
is the plain bookkeeping (no torch: tested on its own); `SlotBuffer` pairs it with a flat tensor and gives
the (2, *shape) view of a slot. `DeviceSlots` holds the device frontier the same way, as two tensors (K and
V) with the slot axis second, so that a batch's entries go in and out with one indexed copy per layer
(index_copy_ / index_select) instead of one small tensor op per block.
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


class DeviceSlots:
    """`capacity` K/V entries of one shape (B, T, H, D) in two tensors K, V of shape (B, capacity, T, H, D),
    allocated at the first `put`; slots are handed out by a SlotAllocator."""

    def __init__(self, capacity: int):
        self.slots = SlotAllocator(capacity)
        self.k: torch.Tensor | None = None  # (B, capacity, T, H, D)
        self.v: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()

    def put(self, k: torch.Tensor, v: torch.Tensor) -> list[int]:
        """Copy entries k, v (B, E, T, H, D) into E free slots; returns the slots."""
        b, e, *rest = k.shape
        if self.k is None:
            shape = (b, self.slots.capacity, *rest)
            self.k = k.new_empty(shape)  # (B, capacity, T, H, D)
            self.v = v.new_empty(shape)
        elif (b, *rest) != (self.k.shape[0], *self.k.shape[2:]) or k.dtype != self.k.dtype:
            raise ValueError(f"K/V of shape {tuple(k.shape)} {k.dtype} in a frontier of "
                             f"{(self.k.shape[0], *self.k.shape[2:])} {self.k.dtype} entries")
        slots = [self.slots.alloc() for _ in range(e)]
        if e == 0:
            return slots
        if e == 1:
            self.k[:, slots[0]].copy_(k[:, 0])
            self.v[:, slots[0]].copy_(v[:, 0])
        else:
            index = torch.tensor(slots, dtype=torch.long).to(self.k.device, non_blocking=True)  # (E,)
            self.k.index_copy_(1, index, k)
            self.v.index_copy_(1, index, v)
        return slots

    def view(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One entry's K and V, (B, T, H, D) views into the buffers."""
        return self.k[:, slot], self.v[:, slot]

    def gather(self, slots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The entries in `slots`, stacked on dim 1: K, V (B, len(slots), T, H, D), new tensors."""
        index = torch.tensor(slots, dtype=torch.long).to(self.k.device, non_blocking=True)  # (R,)
        return self.k.index_select(1, index), self.v.index_select(1, index)

    def release(self) -> None:
        self.k = self.v = None
