"""Attention kernels: a readable reference, torch SDPA (the default) and xformers (optional).

Every backend takes q (Z, Tq, H, D), k and v (Z, Tk, H, D) and returns (Z, Tq, H, D): plain softmax
attention with scale 1/sqrt(D) and no mask, which is what UniBA and the LR cross-attention need.
xformers counts as available only after one real call succeeds on the device (an import is not enough:
its kernels are CUDA-only and its wheels are tied to one torch build). Asking for it where it cannot run
is a one-line BadInput: `check_backend` before a job starts, and the xformers kernel itself checks on its
first call on each device and dtype.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch
import torch.nn.functional as F

from ..errors import BadInput

BACKENDS = ("reference", "sdpa", "xformers")


def attend_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Explicit softmax(q k^T / sqrt(D)) v, computed in float32."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("zqhd,zkhd->zhqk", q.float(), k.float()) * scale  # (Z, H, Tq, Tk)
    weights = scores.softmax(dim=-1)  # (Z, H, Tq, Tk)
    return torch.einsum("zhqk,zkhd->zqhd", weights, v.float()).to(q.dtype)  # (Z, Tq, H, D)


def attend_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (Z, H, Tq, D)
    return out.transpose(1, 2)  # (Z, Tq, H, D)


def attend_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """xformers.ops.memory_efficient_attention; same (Z, T, H, D) layout."""
    import xformers.ops  # optional extra: pip install streamsr[xformers]

    return xformers.ops.memory_efficient_attention(q.contiguous(), k.contiguous(), v.contiguous())


_KERNELS = {"reference": attend_reference, "sdpa": attend_sdpa, "xformers": attend_xformers}


@functools.lru_cache(maxsize=None)
def xformers_problem(device_type: str, dtype: torch.dtype) -> str | None:
    """Why xformers cannot run on this device type and dtype (None: one real call worked)."""
    if importlib.util.find_spec("xformers") is None:
        return "xformers is not installed (pip install streamsr[xformers])"
    try:
        q = torch.zeros(1, 8, 1, 8, device=device_type, dtype=dtype)
        attend_xformers(q, q, q)
        return None
    except Exception as exc:  # ImportError, NotImplementedError on CPU, a wheel built for another torch, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"its kernels do not run on {device_type} {str(dtype).removeprefix('torch.')} ({first[:160]})"


def _xformers_works(device_type: str, dtype: torch.dtype) -> bool:
    return xformers_problem(device_type, dtype) is None


def check_backend(name: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> None:
    """BadInput (one line) if attention backend `name` cannot run on this device and dtype."""
    if name not in _KERNELS:
        raise BadInput(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "xformers":
        problem = xformers_problem(torch.device(device).type, dtype)
        if problem is not None:
            raise BadInput(f"attention backend xformers cannot run here: {problem}; use --backend sdpa")


def attend_xformers_checked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """attend_xformers after `check_backend` on q's device and dtype (cached: one check per pair)."""
    check_backend("xformers", q.device, q.dtype)
    return attend_xformers(q, k, v)


def backend_available(name: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether `name` runs on this device and dtype (xformers: by one real call)."""
    if name not in _KERNELS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "xformers":
        return _xformers_works(torch.device(device).type, dtype)
    return True


def get_kernel(name: str, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
    """The attention function for a backend name. xformers: BadInput now if it is not installed (or, given
    a device, cannot run there), else at its first call on a device where it cannot run."""
    if name not in _KERNELS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name != "xformers":
        return _KERNELS[name]
    if device is not None:
        check_backend(name, device, dtype)
    elif importlib.util.find_spec("xformers") is None:
        raise BadInput(f"attention backend xformers cannot run here: {xformers_problem('cpu', dtype)}; "
                       "use --backend sdpa")
    return attend_xformers_checked
