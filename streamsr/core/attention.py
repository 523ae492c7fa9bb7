"""Attention kernels: a readable reference, torch SDPA (the default) and xformers (optional).

Every backend takes q (Z, Tq, H, D), k and v (Z, Tk, H, D) and returns (Z, Tq, H, D): plain softmax
attention with scale 1/sqrt(D) and no mask, which is what UniBA and the LR cross-attention need.
xformers counts as available only after one real call succeeds on the device (an import is not enough:
its kernels are CUDA-only and its wheels are tied to one torch build).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

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
def _xformers_works(device_type: str, dtype: torch.dtype) -> bool:
    try:
        q = torch.zeros(1, 8, 1, 8, device=device_type, dtype=dtype)
        attend_xformers(q, q, q)
        return True
    except Exception:  # ImportError, NotImplementedError on CPU, a wheel built for another torch, ...
        return False


def backend_available(name: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether `name` runs on this device and dtype (xformers: by one real call)."""
    if name not in _KERNELS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "xformers":
        return _xformers_works(torch.device(device).type, dtype)
    return True


def get_kernel(name: str):
    """The attention function for a backend name; raises a clear error if it cannot run here."""
    if name not in _KERNELS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return _KERNELS[name]
