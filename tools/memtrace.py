"""Measure the bytes held in tensors on the CPU (where torch keeps no allocator statistics).

`TensorBytes` is a TorchDispatchMode that sees every tensor an op creates, counts its storage once
(views share it), and subtracts it when the last Python tensor on that storage is freed; `peak` is the
high-water mark since the mode was entered. Used by tests and tools/bench_memory.py to check the
memory plan's predictions (CUDA has torch.cuda.max_memory_allocated for that).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.held = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage data_ptr -> [live tensor objects, bytes]

    def _release(self, ptr: int) -> None:
        entry = self._refs.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.held -= entry[1]
            del self._refs[ptr]

    def _track(self, t: torch.Tensor) -> None:
        if t.device.type != "cpu" or t.is_sparse:
            return
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if size == 0:
            return
        entry = self._refs.get(ptr)
        if entry is None:
            self._refs[ptr] = [1, size]
            self.held += size
            self.peak = max(self.peak, self.held)
        else:
            entry[0] += 1
        weakref.finalize(t, self._release, ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs or {}))[0]
                  if isinstance(t, torch.Tensor) and t.device.type == "cpu"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and (t.device.type != "cpu" or t.untyped_storage().data_ptr() not in inputs
                                                or t.untyped_storage().data_ptr() in self._refs):
                self._track(t)  # views of tensors made before the mode was entered hold no new bytes
        return out

    def reset_peak(self) -> None:
        self.peak = self.held
