"""Block I/O of a job's tasks: reads and writes of block regions of the store, timed per category and
moved to the compute device; every write is a fault-injection point of the crash tests (`mid-write`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.resample import upsample_region
from .faults import kill_point
from .progress import Timers
from .store import JobStore

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1) in HR pixels


class BlockIO:
    """Timed block reads and writes of one job's store, on `device`."""

    def __init__(self, store: JobStore, *, device: torch.device, timers: Timers):
        self.store = store
        self.device = device
        self.timers = timers
        self.lr = store.array("lr")

    def read(self, name: str, box: Box) -> torch.Tensor:
        """Region of a (1, C, H, W) array: (1, C, h, w) float32 on the device."""
        with self.timers("read"):
            return self.store.read(name, box).to(self.device)

    def up(self, box: Box) -> torch.Tensor:
        """The upsampled LR over the box (antialiased bicubic x4): (1, 3, h, w) on the device."""
        with self.timers("read"):
            return upsample_region(self.lr, box).to(self.device)  # (1, 3, h, w)

    def write(self, name: str, box: Box, value: torch.Tensor, *, task: int) -> None:
        """Write value (1, C, h, w) into a (1, C, H, W) array for task index `task`."""
        with self.timers("write"):
            self.store.write(name, box, value)
        kill_point(task, "mid-write")

    def write_output(self, box: Box, pixels: np.ndarray, *, task: int) -> None:
        """Write quantised pixels (h, w, C) into the (H, W, C) output array for task index `task`."""
        y0, y1, x0, x1 = box
        with self.timers("write"):
            self.store.array("output")[y0:y1, x0:x1, :] = pixels
        kill_point(task, "mid-write")
