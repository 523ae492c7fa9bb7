"""Block I/O of a job's tasks: timed reads of block regions of the store on the compute device, and the
`BlockWrite`s that tasks hand to the store's writer (shards.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.resample import upsample_region
from .integrity import CheckedArray
from .progress import Timers
from .store import JobStore

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1) in HR pixels


@dataclass(frozen=True)
class BlockWrite:
    """One write of a task: `value` over `box` of array `name`.

    value: (1, C, h, w) float tensor (any device) for the (1, C, H, W) state arrays, or (h, w, C) uint
    pixels for the (H, W, C) output array.
    """

    name: str
    box: Box
    value: torch.Tensor | np.ndarray

    def array_value(self) -> np.ndarray:
        """The value as the array stores it (float32 state on the host, or the output's pixels)."""
        if isinstance(self.value, np.ndarray):
            return self.value
        return self.value.detach().to("cpu", torch.float32).numpy()


class BlockIO:
    """Timed block reads of one job's store, on `device`."""

    def __init__(self, store: JobStore, *, device: torch.device, timers: Timers):
        self.store = store
        self.device = device
        self.timers = timers
        self.lr = CheckedArray(store.reading("lr"), "lr", job=str(store.dir.root))  # checked reads

    def read(self, name: str, box: Box) -> torch.Tensor:
        """Region of a (1, C, H, W) array: (1, C, h, w) float32 on the device."""
        with self.timers("read"):
            return self.store.read(name, box).to(self.device)

    def up(self, box: Box) -> torch.Tensor:
        """The upsampled LR over the box (antialiased bicubic x4): (1, 3, h, w) on the device."""
        with self.timers("lr"):
            return upsample_region(self.lr, box).to(self.device)  # (1, 3, h, w)
