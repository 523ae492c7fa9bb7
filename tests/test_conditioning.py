"""The LR windows of the layer-0 cross-attention: the batched `lr_windows` (one canvas, strided views, one
indexed copy) equals the one-block definition `lr_window` for any set of blocks, and reads the LR once."""

from __future__ import annotations

import random

import pytest
import torch

from streamsr.config import ModelConfig
from streamsr.core.conditioning import LRRegion, lr_window, lr_windows

CONFIGS = [ModelConfig.tiny(), ModelConfig.tiny(block_size=48, patch_size=12, hidden=24, heads=1, lr_patch=3),
           ModelConfig.tiny(block_size=16, patch_size=4, lr_patch=1, heads=4)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["tiny", "lp3", "lp1"])
def test_batched_windows_equal_the_one_block_windows(cfg):
    rng = random.Random(cfg.lr_patch)
    size = cfg.lr_block_size
    for trial in range(24):
        rows, cols = rng.randint(1, 5), rng.randint(1, 6)
        lr = torch.randn(1 + trial % 2, 3, rows * size, cols * size)
        every = [(r, c) for r in range(rows) for c in range(cols)]
        if trial % 3:  # a batch: a rectangle in raster order
            r0, c0 = rng.randrange(rows), rng.randrange(cols)
            blocks = [(r, c) for r in range(r0, rng.randint(r0 + 1, rows)) for c in range(c0, rng.randint(c0 + 1, cols))]
        else:  # any blocks in any order
            blocks = rng.sample(every, rng.randint(1, len(every)))
        windows = lr_windows(lr, blocks, cfg)
        assert windows.pixels.shape == (lr.shape[0], len(blocks), 3, 3 * size, 3 * size)
        assert windows.pixels.is_contiguous()
        for i, block in enumerate(blocks):
            pixels, inside = lr_window(lr, block, cfg)
            assert torch.equal(windows.pixels[:, i], pixels) and torch.equal(windows.inside[i], inside), block


def test_windows_read_the_lr_once():
    cfg = ModelConfig.tiny()
    size = cfg.lr_block_size
    reads = []

    class Counting:
        shape = (1, 3, 4 * size, 5 * size)
        data = torch.randn(shape)

        def __getitem__(self, key):
            reads.append(key)
            return self.data[key]

    lr = Counting()
    windows = lr_windows(lr, [(1, 1), (1, 2), (2, 1), (2, 2)], cfg)
    assert len(reads) == 1
    region = LRRegion(lr, 0, 4 * size, 0, 4 * size)
    assert torch.equal(windows.pixels[0, 0, :, :size * 3, :size * 3], region.data[0, :, :size * 3, :size * 3])
