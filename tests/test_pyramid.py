"""streamsr.io.pyramid: the one 2x2 reducer, the one band re-chunker and the pyramid cascade, against
references (repeated 2x2 means with odd edges replicated; plain slicing)."""

from __future__ import annotations

import numpy as np
import pytest
from test_export import box, pattern

from streamsr.io.export.dzi import dzi_sizes
from streamsr.io.pyramid import Cascade, Rebander, reduce2, reduce_by


@pytest.mark.parametrize("shape", [(7, 9, 3), (8, 9, 1), (7, 8, 2), (1, 1, 3), (1, 5, 4), (5, 1, 3), (64, 33, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_reduce2_matches_reference(shape, dtype):
    img = np.random.default_rng(shape[0] * 7 + shape[1]).integers(0, np.iinfo(dtype).max, shape, endpoint=True)
    img = img.astype(dtype)
    padded = np.concatenate([img, img[-1:]]) if shape[0] % 2 else img
    np.testing.assert_array_equal(reduce2(padded), box(img, 2))
    np.testing.assert_array_equal(reduce2(img), box(img, 2))  # an odd last row is averaged with itself


@pytest.mark.parametrize("channels", [3, 4])
def test_reduce_by_is_the_viewers_old_halving(channels):
    """The viewer's zoomed-out tiles used their own 2x2 mean; reduce_by gives the same bytes."""
    def halve(a):  # streamsr.viewer before the merge
        if a.shape[0] % 2:
            a = np.concatenate([a, a[-1:]], axis=0)
        if a.shape[1] % 2:
            a = np.concatenate([a, a[:, -1:]], axis=1)
        s = (a[0::2, 0::2].astype(np.uint16) + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4
        return s.astype(np.uint8)

    img = np.random.default_rng(channels).integers(0, 256, (77, 131, channels)).astype(np.uint8)
    np.testing.assert_array_equal(reduce_by(img, 8), halve(halve(halve(img))))


def test_cascade_bands_of_any_size_give_the_reference_pyramid():
    img = pattern(0, 301, 203, 3)
    sizes = dzi_sizes(301, 203)
    got = [[] for _ in sizes]
    cascade = Cascade([lambda rows, k=k: got[k].append(rows.copy()) for k in range(len(sizes))])
    rng = np.random.default_rng(0)
    y = 0
    while y < 301:
        n = int(rng.integers(1, 40))
        cascade.push(img[y: y + n])
        y += n
    cascade.finish()
    for k, (h, w) in enumerate(sizes):
        level = np.concatenate(got[k])
        assert level.shape == (h, w, 3)
        np.testing.assert_array_equal(level, box(img, 2 ** k))


@pytest.mark.parametrize("step,overlap,height", [(64, 0, 300), (64, 0, 64), (64, 0, 10), (254, 1, 700),
                                                  (254, 1, 255), (7, 3, 50), (5, 0, 1)])
def test_rebander_gives_exact_bands_from_pieces_of_any_size(step, overlap, height):
    img = pattern(0, height, 23, 2)
    got = []
    bands = Rebander(step, height, 23, 2, img.dtype, lambda y0, band: got.append((y0, band.copy())), overlap=overlap)
    rng = np.random.default_rng(step + height)
    y = 0
    while y < height:
        n = int(rng.integers(1, 2 * step + 3))
        bands(img[y: y + n])
        y += n
    assert bands.complete
    want = [(max(0, k * step - overlap), img[max(0, k * step - overlap): (k + 1) * step + overlap])
            for k in range(-(-height // step))]
    assert [y0 for y0, _ in got] == [y0 for y0, _ in want]
    for (_, band), (_, ref) in zip(got, want):
        np.testing.assert_array_equal(band, ref)
    with pytest.raises(ValueError, match="more rows"):
        bands(img[:1])
