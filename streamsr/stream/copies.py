"""How the K/V frontier moves entries between the compute device and host memory (frontier.py).

A copier hands out host buffers and copies K/V both ways; the frontier's bookkeeping is the same for every
copier and is tested on the CPU (also with a simulated asynchronous copier, tests/test_frontier.py).

`SyncCopier` (CPU, or no CUDA device): plain synchronous copies, events are None.
`CudaCopier` (CUDA): every copy runs on one side stream per device, ordered on that stream:
  to_host    the side stream waits for the compute stream (K/V are made there), copies device -> pinned
             host memory with non_blocking, records an event; the source tensors are `record_stream`ed
             on the side stream, so the caching allocator does not hand their memory to the compute
             stream before the copy has read it. The host may read the data only after `host_ready`.
  to_device  allocates the staged tensor on the side stream, copies pinned host -> device with
             non_blocking, records an event. The compute stream must `use` it before reading: it waits
             for the event and `record_stream`s the tensor on the compute stream, so freeing it after the
             batch does not let the side stream reuse the memory while the compute stream still reads it.
Host -> device copies of an entry follow its device -> host copy on the same stream, so they need no
event between them; a host slot freed and refilled is likewise only written after earlier reads of it.
Pinned buffers are plain host memory page-locked with cudaHostRegister at their exact size (torch's
pinned allocator rounds every allocation up to a power of two); `pin_memory=True` is the fallback.
"""

from __future__ import annotations

import ctypes
import functools

import torch

PAGE = 4096


class SyncCopier:
    """Synchronous copies on the CPU (or wherever no side stream is used); every event is None."""

    pinning = "none"
    asynchronous = False  # copies may still run after the call returns (events to wait for)

    def host_buffer(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(numel, dtype=dtype)  # (numel,)

    def release_host_buffer(self, buffer: torch.Tensor) -> None:
        pass

    def to_host(self, dst: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Copy k, v (B, T, H, D) into dst (2, B, T, H, D) host memory; returns the copy's event."""
        dst[0].copy_(k)
        dst[1].copy_(v)
        return None

    def to_device(self, src: torch.Tensor, device: torch.device | None):
        """src (2, B, T, H, D) on the device: (tensor, event); no copy where it already is."""
        if device is None or src.device == device:
            return src, None
        return src.to(device), None

    def use(self, tensor: torch.Tensor, event) -> None:
        """Before the compute stream reads `tensor` made by `to_device`."""

    def host_ready(self, event) -> None:
        """Before the host reads what `to_host` wrote."""


class CudaCopier(SyncCopier):
    """Asynchronous copies on one side stream of a CUDA device (module docstring)."""

    asynchronous = True

    def __init__(self, device: torch.device):
        self.device = device
        self.side = torch.cuda.Stream(device)
        self.pinning = "cudaHostRegister"
        self._registered: dict[int, torch.Tensor] = {}  # data_ptr -> the raw allocation it is carved from
        self._idle: torch.Tensor | None = None  # the last released buffer, kept for the next frontier

    def compute(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.device)

    # ---- pinned host buffers -------------------------------------------------------------------------
    def host_buffer(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        idle, self._idle = self._idle, None
        if idle is not None and idle.numel() == numel and idle.dtype == dtype:
            return idle  # the same stream orders the earlier frontier's copies before this one's
        if idle is not None:
            self._free(idle)
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        raw = torch.empty(nbytes + PAGE, dtype=torch.uint8)  # (nbytes + PAGE,) pageable
        offset = -raw.data_ptr() % PAGE
        view = raw[offset:offset + nbytes].view(dtype)  # (numel,) page-aligned
        err = int(torch.cuda.cudart().cudaHostRegister(view.data_ptr(), nbytes, 0))
        if err != 0:  # e.g. a sandbox that refuses to lock pages: torch's pinned allocator instead
            clear_cuda_error()
            self.pinning = f"pin_memory (cudaHostRegister failed: cudaError {err})"
            return torch.empty(numel, dtype=dtype, pin_memory=True)  # (numel,)
        self._registered[view.data_ptr()] = raw
        return view

    def release_host_buffer(self, buffer: torch.Tensor) -> None:
        if self._idle is not None:
            self._free(self._idle)
        self._idle = buffer

    def _free(self, buffer: torch.Tensor) -> None:
        self.side.synchronize()  # no copy may still read or write it
        if self._registered.pop(buffer.data_ptr(), None) is not None:
            torch.cuda.cudart().cudaHostUnregister(buffer.data_ptr())

    # ---- copies --------------------------------------------------------------------------------------
    def to_host(self, dst: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        side = self.side
        side.wait_stream(self.compute())  # k, v are written by the compute stream
        with torch.cuda.stream(side):
            dst[0].copy_(k, non_blocking=True)
            dst[1].copy_(v, non_blocking=True)
        k.record_stream(side)  # freed by the caller: not reused before this copy has read them
        v.record_stream(side)
        event = torch.cuda.Event()
        event.record(side)
        return event

    def to_device(self, src: torch.Tensor, device: torch.device | None):
        with torch.cuda.stream(self.side):
            out = torch.empty(src.shape, dtype=src.dtype, device=self.device)  # (2, B, T, H, D) on the side stream
            out.copy_(src, non_blocking=True)
        event = torch.cuda.Event()
        event.record(self.side)
        return out, event

    def use(self, tensor: torch.Tensor, event) -> None:
        if event is None:
            return
        compute = self.compute()
        compute.wait_event(event)
        tensor.record_stream(compute)  # its memory waits for the compute stream's reads when it is freed

    def host_ready(self, event) -> None:
        if event is not None:
            event.synchronize()


def clear_cuda_error() -> bool:
    """Reset the CUDA runtime's last error after a refused call (torch reads it with cudaGetLastError after
    its next kernel launch and would blame that kernel). Calls cudaGetLastError in the libcudart that this
    process has loaded; False where none is found."""
    try:
        with open("/proc/self/maps") as fh:
            paths = [line.split()[-1] for line in fh if "libcudart.so" in line]
        if not paths:
            return False
        ctypes.CDLL(paths[0]).cudaGetLastError()
        return True
    except (OSError, AttributeError):
        return False


@functools.lru_cache(maxsize=None)
def _cuda_copier(device: torch.device) -> CudaCopier:
    return CudaCopier(device)


def copier_for(device: torch.device | None) -> SyncCopier:
    """The copier of a compute device: one CudaCopier (one side stream) per CUDA device, else synchronous."""
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _cuda_copier(torch.device("cuda", index))
    return SyncCopier()
