"""Bit depths: float samples in [0, 1] to and from uint8/uint16, and uint8 <-> uint16 by value scaling.

The one 16 -> 8 bit conversion is round(x / 257), half up: (x * 255 + 32767) // 65535, which equals
(x + 128) // 257 for every 16-bit value. 8 -> 16 bit is x * 257 (exact inverse on 8-bit values).
"""

from __future__ import annotations

import numpy as np


def max_value(bit_depth: int) -> int:
    """255 or 65535; ValueError for a depth other than 8 or 16."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, not {bit_depth!r}")
    return 255 if bit_depth == 8 else 65535


def uint_dtype(bit_depth: int) -> type[np.unsignedinteger]:
    """np.uint8 or np.uint16."""
    return np.uint8 if max_value(bit_depth) == 255 else np.uint16


def depth_of(dtype) -> int:
    """8 for uint8, 16 for uint16."""
    return 8 if np.dtype(dtype) == np.uint8 else 16


def to_uint(x: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float samples in [0, 1] to uint8/uint16: clipped, rounded to nearest, NaN as 0."""
    top = max_value(bit_depth)
    y = np.multiply(x, top, dtype=np.float32)  # same shape as x
    np.nan_to_num(y, copy=False, nan=0.0)
    np.clip(y, 0, top, out=y)
    np.rint(y, out=y)
    return y.astype(uint_dtype(bit_depth))


def to_float(data: np.ndarray, bit_depth: int) -> np.ndarray:
    """uint8/uint16 samples to float32 in [0, 1] (/ 255 or / 65535)."""
    out = data.astype(np.float32)  # same shape as data
    out /= np.float32(max_value(bit_depth))
    return out


def convert_depth(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """uint8 <-> uint16 by value scaling (x 257, or / 257 rounded half up); the same depth: unchanged."""
    if bit_depth == 8 and pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if bit_depth == 16 and pixels.dtype == np.uint8:
        return pixels.astype(np.uint16) * np.uint16(257)
    return pixels
