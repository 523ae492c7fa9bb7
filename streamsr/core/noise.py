"""Per-block Gaussian noise as a pure function of (seed, block[, step]).

Each block gets its own torch.Generator seeded from a 64-bit mix of (seed, row, col, step), so the
noise of a block never depends on the batch shape, the traversal order or a resume.
"""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def block_seed(seed: int, block: tuple[int, int], step: int | None = None) -> int:
    """A 63-bit generator seed for one block (and optionally one sampler step)."""
    h = _splitmix64(seed & _MASK)
    for part in (block[0], block[1], -1 if step is None else step):
        h = _splitmix64(h ^ (part & _MASK))
    return h >> 1


def block_noise(seed: int, block: tuple[int, int], shape: tuple[int, ...], step: int | None = None) -> torch.Tensor:
    """Standard normal noise of `shape` (e.g. (B, 3, bs, bs)) for one block, float32 on the CPU."""
    gen = torch.Generator().manual_seed(block_seed(seed, block, step))
    return torch.randn(shape, generator=gen, dtype=torch.float32)


def image_noise(seed: int, rows: int, cols: int, block_size: int, batch: int = 1,
                channels: int = 3) -> torch.Tensor:
    """Noise of a whole grid assembled from per-block noise: (batch, channels, rows*bs, cols*bs)."""
    out = torch.empty(batch, channels, rows * block_size, cols * block_size)
    for r in range(rows):
        for c in range(cols):
            out[..., r * block_size:(r + 1) * block_size, c * block_size:(c + 1) * block_size] = block_noise(
                seed, (r, c), (batch, channels, block_size, block_size))
    return out
