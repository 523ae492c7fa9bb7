"""Tests of streamsr.core.resample: region-wise antialiased bicubic upsampling equals the whole-image resize."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from streamsr.core.resample import axis_weights, upsample_full, upsample_region

KIT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "infdit"


def reference(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The whole-image resize that `concat_lr` is defined by."""
    h, w = lr.shape[-2:]
    out = F.interpolate(lr, size=(h * scale, w * scale), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(-1, 1)  # (B, C, h*scale, w*scale)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (9, 1), (5, 5), (7, 13), (16, 16), (24, 17), (33, 20)])
def test_full_matches_interpolate(hw, scale):
    torch.manual_seed(hw[0] * 100 + hw[1])
    lr = 1.5 * torch.randn(2, 3, *hw)  # (2, 3, h, w), values beyond [-1, 1] so the clamp matters
    out = upsample_full(lr, scale)
    ref = reference(lr, scale)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max().item() < 1e-5
    unclamped = upsample_full(lr, scale, clamp=False)
    assert unclamped.abs().max() > 1  # the clamp did something
    assert torch.equal(unclamped.clamp(-1, 1), out)


def test_axis_weights_float64_exact():
    for n, m in [(1, 4), (3, 12), (7, 28), (16, 64), (64, 256), (5, 13), (64, 31)]:  # includes non-x4 sizes
        x = torch.randn(1, 1, n, 2, dtype=torch.float64)
        ref = F.interpolate(x, size=(m, 2), mode="bicubic", align_corners=False, antialias=True)[0, 0]  # (m, 2)
        a, b, W = axis_weights(n, m, 0, m)
        assert W.shape == (m, b - a) and W.dtype == torch.float64
        assert torch.allclose(W.sum(1), torch.ones(m, dtype=torch.float64))
        assert (W @ x[0, 0, a:b] - ref).abs().max().item() < 1e-12


def test_numpy_and_dtypes():
    lr = 1.2 * torch.randn(1, 2, 6, 5)  # (1, 2, 6, 5)
    ref = upsample_full(lr)
    from_np = upsample_region(lr.numpy(), (3, 17, 2, 20))
    assert from_np.dtype == torch.float32
    assert torch.equal(from_np, ref[..., 3:17, 2:20])
    assert upsample_full(lr.double()).dtype == torch.float64
    assert upsample_full(lr.half()).dtype == torch.float16
    assert upsample_full((lr * 10).to(torch.int32)).dtype == torch.float32


def tiles(size: int, cuts: list[int]) -> list[tuple[int, int]]:
    edges = sorted({0, size, *[c for c in cuts if 0 < c < size]})
    return list(zip(edges[:-1], edges[1:]))


@pytest.mark.parametrize("hw", [(16, 16), (13, 21)])
def test_tiling_equals_full(hw):
    torch.manual_seed(1)
    lr = 1.5 * torch.randn(1, 3, *hw)  # (1, 3, h, w)
    full = upsample_full(lr)  # (1, 3, 4h, 4w)
    H, W = full.shape[-2:]
    rng = np.random.default_rng(0)
    tilings = [
        (tiles(H, list(range(32, H, 32))), tiles(W, list(range(32, W, 32)))),  # regular 32x32 tiles
        (tiles(H, [1, 7, 30, 31, 45]), tiles(W, [3, 50, 51, 77])),  # irregular tiles
    ]
    for rows, cols in tilings:
        out = torch.cat([torch.cat([upsample_region(lr, (y0, y1, x0, x1)) for x0, x1 in cols], dim=-1)
                         for y0, y1 in rows], dim=-2)  # (1, 3, H, W)
        assert (out - full).abs().max().item() < 1e-6
    for _ in range(30):  # random boxes
        y0, y1 = sorted(rng.choice(H + 1, 2, replace=False))
        x0, x1 = sorted(rng.choice(W + 1, 2, replace=False))
        part = upsample_region(lr, (y0, y1, x0, x1))
        assert (part - full[..., y0:y1, x0:x1]).abs().max().item() < 1e-6


class RecordingArray:
    """Wraps a tensor and records every index it is sliced with."""

    def __init__(self, data: torch.Tensor):
        self.data, self.shape, self.keys = data, data.shape, []

    def __getitem__(self, key):
        self.keys.append(key)
        return self.data[key]


@pytest.mark.parametrize("scale", [2, 4])
def test_reads_only_the_halo(scale):
    lr = torch.randn(1, 3, 20, 24)  # (1, 3, 20, 24)
    full = upsample_full(lr, scale)
    rng = np.random.default_rng(scale)
    for _ in range(20):
        y0, y1 = sorted(rng.choice(20 * scale + 1, 2, replace=False))
        x0, x1 = sorted(rng.choice(24 * scale + 1, 2, replace=False))
        rec = RecordingArray(lr)
        part = upsample_region(rec, (y0, y1, x0, x1), scale=scale)
        assert torch.equal(part, full[..., y0:y1, x0:x1])
        assert len(rec.keys) == 1
        ys, xs = rec.keys[0][-2:]
        assert math.floor(y0 / scale) - 2 <= ys.start < ys.stop <= math.ceil(y1 / scale) + 2
        assert math.floor(x0 / scale) - 2 <= xs.start < xs.stop <= math.ceil(x1 / scale) + 2


@pytest.mark.parametrize("kit", ["kit_2x2", "kit_2x3"])
def test_matches_reference_kit(kit):
    path = KIT_ROOT / kit / "inputs.safetensors"
    assert path.is_file(), f"reference kit missing: {path}"
    data = load_file(str(path))
    lr, concat = data["lr"], data["concat_lr"]  # (1, 3, h, w), (1, 3, 4h, 4w)
    out = upsample_full(lr, 4)
    assert out.shape == concat.shape
    assert (out - concat).abs().max().item() < 1e-5
    h, w = lr.shape[-2:]
    box = (4 * h // 2 - 40, 4 * h // 2 + 24, 100, 4 * w - 3)  # a block-crossing region
    part = upsample_region(lr, box)
    assert (part - concat[..., box[0]:box[1], box[2]:box[3]]).abs().max().item() < 1e-5


@pytest.mark.parametrize("box", [(0, 0, 0, 4), (4, 2, 0, 4), (-1, 4, 0, 4), (0, 4, 0, 41), (0, 41, 0, 4)])
def test_bad_box_raises(box):
    lr = torch.zeros(1, 1, 10, 10)
    with pytest.raises(ValueError, match="box"):
        upsample_region(lr, box)


@pytest.mark.parametrize("scale", [0, -2])
def test_bad_scale_raises(scale):
    with pytest.raises(ValueError, match="scale"):
        upsample_full(torch.zeros(1, 1, 4, 4), scale)
