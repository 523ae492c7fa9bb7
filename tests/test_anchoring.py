"""Tests of streamsr.core.anchoring: streamed moments == whole-image moments, per-block low-pass == whole-image."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from streamsr.core.anchoring import (
    ANCHOR_MODES,
    LOCAL_SIGMA,
    Moments,
    apply_affine,
    block_moments,
    gaussian_kernel1d,
    gaussian_radius,
    global_affine,
    local_anchor_full,
    local_anchor_region,
    lowpass_full,
    lowpass_region,
    merge,
)
from streamsr.core.resample import upsample_full, upsample_region

# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def spans(n: int, step: int) -> list[tuple[int, int]]:
    """[0, n) cut into pieces of `step` (the last one shorter when step does not divide n)."""
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def tiling(hw: tuple[int, int], th: int, tw: int) -> list[tuple[int, int, int, int]]:
    """Raster-ordered boxes (y0, y1, x0, x1) of th x tw tiles covering an H x W image."""
    return [(y0, y1, x0, x1) for y0, y1 in spans(hw[0], th) for x0, x1 in spans(hw[1], tw)]


def rel_close(a, b, tol):
    return all(abs(x - y) <= tol * max(abs(x), abs(y), 1e-300) for x, y in zip(a, b))


class RecordingReader:
    """read(y0, y1, x0, x1) over a tensor that records every region and checks it stays in box +- r."""

    def __init__(self, img: torch.Tensor, r: int):
        self.img, self.r, self.box, self.reads = img, r, None, []

    def __call__(self, y0, y1, x0, x1):
        H, W = self.img.shape[-2:]
        assert 0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W, f"read outside the image: {(y0, y1, x0, x1)}"
        by0, by1, bx0, bx1 = self.box
        r = self.r
        assert by0 - r <= y0 and y1 <= by1 + r and bx0 - r <= x0 and x1 <= bx1 + r, (
            f"read {(y0, y1, x0, x1)} leaves box {self.box} +- {r}"
        )
        self.reads.append((y0, y1, x0, x1))
        return self.img[..., y0:y1, x0:x1].clone()


def axis_matrix(n: int, sigma: float) -> np.ndarray:
    """Independent oracle: (n, n) matrix of the 1D blur with the documented border rule.

    Index map: reflect (i < 0 -> -i, i >= n -> 2(n-1) - i) when r < n, else clamp to [0, n-1].
    """
    r = math.ceil(3 * sigma)
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    k /= k.sum()
    M = np.zeros((n, n))
    for y in range(n):
        for j in range(2 * r + 1):
            i = y + j - r
            if r < n:
                i = -i if i < 0 else (2 * (n - 1) - i if i >= n else i)
            else:
                i = min(max(i, 0), n - 1)
            M[y, i] += k[j]
    return M


def oracle_lowpass(img: torch.Tensor, sigma: float) -> torch.Tensor:
    My = torch.from_numpy(axis_matrix(img.shape[-2], sigma))  # (H, H)
    Mx = torch.from_numpy(axis_matrix(img.shape[-1], sigma))  # (W, W)
    return My @ img.double() @ Mx.T  # (B, C, H, W)


# ----------------------------------------------------------------------------------------------------
# constants
# ----------------------------------------------------------------------------------------------------


def test_constants():
    assert ANCHOR_MODES == ("none", "global", "local")
    assert LOCAL_SIGMA == 4.0


# ----------------------------------------------------------------------------------------------------
# global anchoring: Moments
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile", [(8, 8), (13, 7), (1, 56), (40, 1), (5, 11)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_block_moments_tiling_equals_whole(tile, dtype):
    g = torch.Generator().manual_seed(0)
    offs = torch.tensor([0.3, -0.5, 0.1]).view(1, 3, 1, 1)
    img = (torch.randn(2, 3, 40, 56, generator=g) * torch.tensor([0.2, 0.7, 1.3]).view(1, 3, 1, 1) + offs).to(dtype)
    acc = Moments.empty(3)
    for y0, y1, x0, x1 in tiling((40, 56), *tile):  # raster order, as the runner does
        acc = merge(acc, block_moments(img[..., y0:y1, x0:x1]))
    whole = img.double()
    ref_mean = whole.mean(dim=(0, 2, 3)).tolist()
    ref_std = whole.std(dim=(0, 2, 3), unbiased=False).tolist()
    assert acc.count == 2 * 40 * 56
    assert rel_close(acc.mean, ref_mean, 1e-12)
    assert rel_close(acc.std, ref_std, 1e-12)
    assert rel_close(acc.mean, block_moments(img).mean, 1e-12)


def test_merge_any_grouping_same_stats():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(1, 3, 37, 29, generator=g, dtype=torch.float64) * 0.4 + 0.2
    blocks = [block_moments(img[..., a:b, c:d]) for a, b, c, d in tiling((37, 29), 6, 5)]
    raster = Moments.empty(3)
    for m in blocks:
        raster = merge(raster, m)
    rng = random.Random(0)
    for _ in range(5):  # shuffled order, random binary-tree grouping
        pool = blocks[:]
        rng.shuffle(pool)
        while len(pool) > 1:
            i = rng.randrange(len(pool) - 1)
            pool[i:i + 2] = [merge(pool[i], pool[i + 1])]
        assert pool[0].count == raster.count
        assert rel_close(pool[0].mean, raster.mean, 1e-12)
        assert rel_close(pool[0].std, raster.std, 1e-12)
    # the fixed raster order is bit-reproducible
    again = Moments.empty(3)
    for m in blocks:
        again = merge(again, m)
    assert again == raster


def test_block_moments_3d_and_4d():
    x = torch.randn(3, 6, 7, dtype=torch.float64)
    assert block_moments(x) == block_moments(x[None])
    m = block_moments(torch.randn(2, 4, 5, 5))
    assert m.channels == 4 and m.count == 50
    with pytest.raises(ValueError):
        block_moments(torch.randn(5, 5))


def test_moments_json_round_trip_exact():
    g = torch.Generator().manual_seed(2)
    m = block_moments(torch.randn(2, 3, 17, 9, generator=g, dtype=torch.float64) / 3.0)
    back = Moments.from_json(json.loads(json.dumps(m.to_json())))
    assert back == m
    assert [v.hex() for v in back.sum + back.sumsq] == [v.hex() for v in m.sum + m.sumsq]
    assert isinstance(back.count, int) and back.count == m.count
    with pytest.raises(ValueError):
        Moments.from_json({"count": 1, "sum": [0.0]})


def test_moments_empty_and_validation():
    e = Moments.empty(2)
    m = Moments(count=3, sum=(1.0, 2.0), sumsq=(3.0, 4.0))
    assert merge(e, m) == m and merge(m, e) == m
    with pytest.raises(ValueError):
        e.mean
    with pytest.raises(ValueError):
        merge(m, Moments.empty(3))
    with pytest.raises(ValueError):
        Moments(count=-1, sum=(0.0,), sumsq=(0.0,))
    with pytest.raises(ValueError):
        Moments(count=1, sum=(0.0, 1.0), sumsq=(0.0,))


# ----------------------------------------------------------------------------------------------------
# global anchoring: affine
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_global_affine_matches_reference_stats(dtype):
    g = torch.Generator().manual_seed(3)
    out = (torch.randn(1, 3, 40, 56, generator=g) * torch.tensor([0.5, 1.5, 0.05]).view(1, 3, 1, 1) + 0.7).to(dtype)
    ref_img = torch.rand(1, 3, 10, 14, generator=g, dtype=torch.float64) * 2 - 1
    ref = block_moments(ref_img)
    tiles = tiling((40, 56), 13, 7)
    stats = Moments.empty(3)
    for y0, y1, x0, x1 in tiles:  # pass 1: stats
        stats = merge(stats, block_moments(out[..., y0:y1, x0:x1]))
    scale, shift = global_affine(stats, ref)
    assert len(scale) == len(shift) == 3
    anchored = torch.empty_like(out)
    for y0, y1, x0, x1 in tiles:  # pass 2: apply
        anchored[..., y0:y1, x0:x1] = apply_affine(out[..., y0:y1, x0:x1], scale, shift)
    assert anchored.dtype == dtype
    got = block_moments(anchored)
    assert all(abs(a - b) < 1e-6 for a, b in zip(got.mean, ref.mean))
    assert all(abs(a - b) < 1e-6 for a, b in zip(got.std, ref.std))
    # per-block apply == whole-image apply
    assert torch.equal(anchored, apply_affine(out, scale, shift))


def test_global_affine_constant_image_does_not_blow_up():
    out = torch.full((1, 3, 8, 8), 0.37, dtype=torch.float32)
    out[:, 1] = -0.2  # every channel constant (std 0)
    ref = Moments(count=4, sum=(0.4, -1.2, 2.0), sumsq=(0.2, 1.0, 1.5))
    om = block_moments(out)
    scale, shift = global_affine(om, ref)
    assert all(math.isfinite(v) for v in scale + shift)
    assert all(abs(s - rs / 1e-6) < 1e-3 for s, rs in zip(scale, ref.std))  # clamped by eps
    y = apply_affine(out, scale, shift)
    assert torch.isfinite(y).all()
    for c in range(3):
        assert torch.allclose(y[:, c], torch.full_like(y[:, c], ref.mean[c]), atol=1e-6)
    with pytest.raises(ValueError):
        global_affine(om, Moments.empty(2))


def test_apply_affine_shapes():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = apply_affine(x, (2.0, 1.0, 0.5), (0.0, 1.0, -1.0))
    assert torch.allclose(y[:, 0], 2 * x[:, 0]) and torch.allclose(y[:, 1], x[:, 1] + 1)
    assert torch.allclose(y[:, 2], 0.5 * x[:, 2] - 1)
    assert torch.equal(apply_affine(x[0], (2.0, 1.0, 0.5), (0.0, 1.0, -1.0)), y[0])  # (C, h, w)
    with pytest.raises(ValueError):
        apply_affine(x, (1.0, 1.0), (0.0, 0.0))


# ----------------------------------------------------------------------------------------------------
# local anchoring: Gaussian low-pass
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.3, 1.0, 1.5, 4.0])
def test_gaussian_kernel(sigma):
    r = gaussian_radius(sigma)
    assert r == math.ceil(3 * sigma)
    k = gaussian_kernel1d(sigma)
    assert k.shape == (2 * r + 1,) and k.dtype == torch.float64
    assert abs(k.sum().item() - 1) < 1e-15
    assert torch.equal(k, k.flip(0)) and int(k.argmax()) == r
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            gaussian_radius(bad)


# (image size, sigma): r = 5 or 12; 17x9 with sigma 4 is reflect on H, replicate on W; 5x3 is smaller
# than the radius on both axes (replicate).
CASES = [((40, 56), 1.5), ((40, 56), 4.0), ((17, 9), 1.5), ((17, 9), 4.0), ((5, 3), 4.0), ((1, 1), 1.0)]
TILES = [(8, 8), (13, 7), (1, 10**9), (10**9, 1), (3, 2), (10**9, 10**9)]  # 1-pixel rows/cols, whole


@pytest.mark.parametrize("hw,sigma", CASES)
def test_lowpass_full_matches_oracle(hw, sigma):
    g = torch.Generator().manual_seed(4)
    img = torch.randn(2, 3, *hw, generator=g, dtype=torch.float64)
    assert (lowpass_full(img, sigma) - oracle_lowpass(img, sigma)).abs().max() < 1e-12
    const = torch.full((1, 2, *hw), 0.25, dtype=torch.float64)
    assert (lowpass_full(const, sigma) - 0.25).abs().max() < 1e-15


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("hw,sigma", CASES)
def test_lowpass_region_equals_full(hw, sigma, tile):
    g = torch.Generator().manual_seed(5)
    img = torch.randn(2, 3, *hw, generator=g, dtype=torch.float64)
    full = lowpass_full(img, sigma)  # (2, 3, H, W)
    r = gaussian_radius(sigma)
    read = RecordingReader(img, r)
    for box in tiling(hw, min(tile[0], hw[0]), min(tile[1], hw[1])):
        y0, y1, x0, x1 = box
        read.box, read.reads = box, []
        part = lowpass_region(read, hw, box, sigma)
        assert part.shape == (2, 3, y1 - y0, x1 - x0)
        assert (part - full[..., y0:y1, x0:x1]).abs().max() < 1e-6
        assert (part - full[..., y0:y1, x0:x1]).abs().max() < 1e-12  # in fact the same arithmetic
        assert len(read.reads) == 1  # one read of box + halo, clipped to the image
        assert read.reads[0] == (max(y0 - r, 0), min(y1 + r, hw[0]), max(x0 - r, 0), min(x1 + r, hw[1]))


def test_lowpass_region_bad_input():
    img = torch.zeros(1, 1, 8, 8)
    read = lambda y0, y1, x0, x1: img[..., y0:y1, x0:x1]  # noqa: E731
    with pytest.raises(ValueError):
        lowpass_region(read, (8, 8), (0, 9, 0, 8), 1.0)
    with pytest.raises(ValueError):
        lowpass_region(read, (8, 8), (3, 3, 0, 8), 1.0)
    with pytest.raises(ValueError):  # read returns the wrong shape
        lowpass_region(lambda *b: img, (8, 8), (2, 4, 2, 4), 1.0)
    with pytest.raises(ValueError):
        lowpass_full(img[0], 1.0)


# ----------------------------------------------------------------------------------------------------
# local anchoring
# ----------------------------------------------------------------------------------------------------


def test_local_anchor_identity_when_out_is_up():
    g = torch.Generator().manual_seed(6)
    up = torch.randn(1, 3, 40, 56, generator=g, dtype=torch.float64)
    assert torch.equal(local_anchor_full(up, up, 4.0), up)
    up32 = up.float()
    assert torch.equal(local_anchor_full(up32, up32, 4.0), up32)


@pytest.mark.parametrize("hw,sigma", [((40, 56), 4.0), ((17, 9), 1.5), ((5, 3), 4.0)])
def test_local_anchor_removes_dc_and_keeps_high_frequencies(hw, sigma):
    g = torch.Generator().manual_seed(7)
    out = torch.randn(2, 3, *hw, generator=g, dtype=torch.float64)
    up = torch.randn(2, 3, *hw, generator=g, dtype=torch.float64) * 0.3
    res = local_anchor_full(out, up, sigma)
    shift = torch.tensor([0.8, -2.0, 5.0], dtype=torch.float64).view(1, 3, 1, 1)
    assert (local_anchor_full(out + shift, up, sigma) - res).abs().max() < 1e-6  # a DC shift of out is removed
    hf = lowpass_full(up, sigma) - lowpass_full(out, sigma)
    assert (res - out - hf).abs().max() < 1e-12  # out keeps everything but its low-pass


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("hw,sigma", [((40, 56), 4.0), ((17, 9), 4.0), ((17, 9), 1.5), ((5, 3), 4.0)])
def test_local_anchor_region_equals_full(hw, sigma, tile):
    g = torch.Generator().manual_seed(8)
    out = torch.randn(1, 3, *hw, generator=g, dtype=torch.float64)
    up = torch.randn(1, 3, *hw, generator=g, dtype=torch.float64)
    full = local_anchor_full(out, up, sigma)
    r = gaussian_radius(sigma)
    ro, ru = RecordingReader(out, r), RecordingReader(up, r)
    for box in tiling(hw, min(tile[0], hw[0]), min(tile[1], hw[1])):
        y0, y1, x0, x1 = box
        ro.box, ru.box, ro.reads, ru.reads = box, box, [], []
        part = local_anchor_region(ro, ru, hw, box, sigma)
        assert part.shape == (1, 3, y1 - y0, x1 - x0)
        assert (part - full[..., y0:y1, x0:x1]).abs().max() < 1e-6
        assert len(ro.reads) == 1 and len(ru.reads) == 1


def test_local_anchor_region_with_upsample_region():
    """The engine's use: up read box-wise from the LR by upsample_region, out float32."""
    g = torch.Generator().manual_seed(9)
    lr = torch.rand(1, 3, 10, 14, generator=g) * 2 - 1  # (1, 3, h, w)
    out = torch.randn(1, 3, 40, 56, generator=g)  # (1, 3, 4h, 4w)
    full = local_anchor_full(out, upsample_full(lr), LOCAL_SIGMA)
    r = gaussian_radius(LOCAL_SIGMA)
    ro = RecordingReader(out, r)
    ups = []

    def read_up(y0, y1, x0, x1):
        ups.append((y0, y1, x0, x1))
        return upsample_region(lr, (y0, y1, x0, x1))

    for box in tiling((40, 56), 16, 16):
        y0, y1, x0, x1 = box
        ro.box = box
        part = local_anchor_region(ro, read_up, (40, 56), box)
        assert part.dtype == torch.float32
        assert (part - full[..., y0:y1, x0:x1]).abs().max() < 1e-5
        assert ups[-1] == ro.reads[-1]
