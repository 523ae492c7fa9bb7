"""2D rotary position embedding (Inf-DiT / EVA "pix2struct" form), computed for the positions at hand.

The official model keeps a (table, table, head_dim) cos/sin table; we compute the same numbers for
just the tokens of the blocks being processed: per axis, theta_k = 10000^(-2k/(head_dim/2)),
k = 0..head_dim/4-1, each repeated twice (interleaved pairs); dims [0, head_dim/2) rotate by the patch
row, dims [head_dim/2, head_dim) by the patch column; positions wrap modulo the table size.
"""

from __future__ import annotations

import torch

ROPE_BASE = 10000.0


def axis_freqs(head_dim: int) -> torch.Tensor:
    """theta_k for one axis, each repeated twice: (head_dim/2,) float32."""
    dim = head_dim // 2
    theta = 1.0 / (ROPE_BASE ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))  # (head_dim/4,)
    return theta.repeat_interleave(2)  # (head_dim/2,)


def rope_angles(rows: torch.Tensor, cols: torch.Tensor, head_dim: int, table: int) -> torch.Tensor:
    """Angles for tokens at global patch positions (rows, cols): (..., head_dim) float32."""
    freqs = axis_freqs(head_dim).to(rows.device)  # (head_dim/2,)
    r = (rows % table).float()[..., None] * freqs  # (..., head_dim/2)
    c = (cols % table).float()[..., None] * freqs  # (..., head_dim/2)
    return torch.cat([r, c], dim=-1)  # (..., head_dim)


def block_angles(block_rows: torch.Tensor, block_cols: torch.Tensor, side: int, head_dim: int,
                 table: int, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Angles of every token of the given blocks, tokens row-major in a block: (N, side*side, head_dim).

    block_rows, block_cols: (N,) block coordinates; side: tokens per block side; origin: a token offset
    added to every position (0 at inference; random in training).
    """
    t = torch.arange(side, device=block_rows.device)
    rows = origin[0] + block_rows[:, None, None] * side + t[None, :, None]  # (N, side, 1)
    cols = origin[1] + block_cols[:, None, None] * side + t[None, None, :]  # (N, 1, side)
    rows, cols = torch.broadcast_tensors(rows, cols)  # (N, side, side)
    return rope_angles(rows.reshape(len(block_rows), -1), cols.reshape(len(block_rows), -1), head_dim, table)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x[2i], x[2i+1]) -> (-x[2i+1], x[2i]) on the last axis (GPT-J-style interleaved rotate_half)."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., D/2, 2)
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # (..., D)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_pairs(x) * sin; x (..., T, H, D), cos/sin (..., T, 1, D) broadcastable."""
    return x * cos + rotate_pairs(x) * sin
