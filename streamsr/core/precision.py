"""What fp32 means on CUDA: IEEE fp32. PyTorch lets cuDNN convolutions (and, when asked, matmuls) run in
TF32, a 10-bit mantissa, by default; the kits' 1e-4 tolerances and streamed == full need IEEE fp32.

`use_ieee_fp32` sets torch's process-wide flags (they only change fp32 work on CUDA, so calling it on
the CPU is harmless); weights.load_model calls it when a model is loaded in fp32 on a CUDA device.
`fp32_is_ieee` reads them back.
"""

from __future__ import annotations

import torch


def _new_api() -> bool:
    """torch >= 2.9 has per-backend fp32_precision; mixing it with the legacy allow_tf32 flags is an error."""
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def use_ieee_fp32() -> None:
    """TF32 off for fp32 matmuls (cuBLAS) and cuDNN convolutions."""
    if _new_api():
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def fp32_is_ieee() -> bool:
    """Whether fp32 matmuls and cuDNN convolutions run in IEEE fp32 (no TF32)."""
    if _new_api():
        return (torch.backends.cuda.matmul.fp32_precision == "ieee"
                and torch.backends.cudnn.conv.fp32_precision == "ieee")
    return not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def needs_ieee_fp32(device: torch.device | str, dtype: torch.dtype) -> bool:
    """A run in fp32 on CUDA (where TF32 would otherwise be used)."""
    return torch.device(device).type == "cuda" and dtype == torch.float32
