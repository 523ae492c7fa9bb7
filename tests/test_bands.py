"""Column bands (stream/bands.py): the band plans, exhaustively on small grids, and one streamed sweep split into
bands as a wavefront in one process, against the whole-image computation."""

from __future__ import annotations

import itertools

import pytest

from streamsr.stream.bands import Band, BandPlan, band_bound, band_of, band_plan, split_bands
from streamsr.stream.planner import BatchShape, Grid, frontier_bound, frontier_plan, raster_batches

CASES = [(rows, cols, BatchShape(bh, bw), count)
         for rows, cols, bh, bw in itertools.product(range(1, 6), range(1, 8), range(1, 4), range(1, 4))
         for count in range(1, -(-cols // bw) + 1)]


def wavefront(batches, count):
    """The band plans of every band, in an order a wavefront may run them: batch row by batch row, the
    bands left to right (each band's rows in order, as the ranks run them)."""
    bands = split_bands(batches.cols, count)
    plans = [band_plan(batches, band) for band in bands]
    for row in range(batches.rows):
        for band, plan in zip(bands, plans):
            for col in range(band.col0, band.col1):
                yield band.index, plan.batch_plan(batches[row * batches.cols + col])


@pytest.mark.parametrize("rows,cols,shape,count", CASES)
def test_band_plans_are_complete_bounded_and_hand_off_in_order(rows, cols, shape, count):
    batches = raster_batches(Grid(rows, cols), shape)
    bands = split_bands(batches.cols, count)
    whole = frontier_plan(batches.grid, shape)
    live = [set() for _ in bands]
    peak = [0] * count
    channel: list[list] = [[] for _ in bands]  # what band k sent to band k + 1, oldest first
    seen = 0
    for k, plan in wavefront(batches, count):
        seen += 1
        assert plan.slots == whole.batch_plan(plan.batch).slots  # the same keys as the whole-row sweep
        if plan.receive:
            sent = channel[k - 1].pop(0)
            assert sent == plan.receive  # the blocks of the band to the left, in the order it sent them
            live[k].update(plan.receive)
        assert set(plan.reads) <= live[k], (k, plan.batch, set(plan.reads) - live[k])
        peak[k] = max(peak[k], len(live[k]))
        live[k].difference_update(plan.drop)
        assert set(plan.keep) <= set(plan.batch.blocks())
        live[k].update(plan.keep)
        peak[k] = max(peak[k], len(live[k]))
        if plan.send:
            assert k < count - 1 and set(plan.send) <= set(plan.keep)
            channel[k].append(plan.send)
            live[k].difference_update(plan.release)
        else:
            assert not plan.release
    assert seen == len(batches)
    assert all(not held for held in live), live  # every band's frontier ends empty
    assert all(not pending for pending in channel)  # and every hand-off was received
    for band in bands:
        assert peak[band.index] <= band_bound(batches, band)
    if count > 1 and peak:
        assert max(peak) <= frontier_bound(batches.grid, shape)


def test_band_bound_is_the_bands_share_of_the_row():
    batches = raster_batches(Grid(8, 64), BatchShape(2, 4))  # 16 batch columns
    whole = frontier_bound(batches.grid, batches.shape)
    for count in (2, 4, 8):
        for band in split_bands(batches.cols, count):
            assert band_bound(batches, band) == 64 // count + 2 + 1 < whole


def test_split_bands_covers_the_columns_evenly_and_refuses_too_many():
    for cols in range(1, 20):
        for count in range(1, cols + 1):
            bands = split_bands(cols, count)
            assert [b.col0 for b in bands][0] == 0 and bands[-1].col1 == cols
            assert all(a.col1 == b.col0 for a, b in zip(bands, bands[1:]))
            widths = [b.col1 - b.col0 for b in bands]
            assert max(widths) - min(widths) <= 1 and min(widths) >= 1
            for col in range(cols):
                assert bands[band_of(raster_batches(Grid(1, cols), BatchShape(1, 1)), count, col)].holds(col)
    with pytest.raises(ValueError, match="at most one band per batch column"):
        split_bands(3, 4)
    with pytest.raises(ValueError, match="is not a band"):
        BandPlan(raster_batches(Grid(2, 6), BatchShape(1, 1)), Band(1, 2, 2, 6))


# ---- one sweep in bands, in one process, against the whole image ----------------------------------

BAND_GRIDS = [(rows, cols, bh, bw, count) for rows, cols in [(1, 2), (2, 3), (3, 5), (4, 4), (2, 7)]
              for bh, bw in [(1, 1), (2, 1), (1, 2), (2, 2)] for count in range(2, -(-cols // bw) + 1)]


@pytest.mark.parametrize("rows,cols,bh,bw,count", BAND_GRIDS)
def test_bands_equal_the_full_image_and_hold_their_share(tiny_model, rows, cols, bh, bw, count):
    import torch

    from streamsr import api
    from streamsr.core.resample import upsample_full
    from streamsr.stream.engine import SweepStats
    from streamsr.stream.handoff import denoise_bands
    from conftest import random_inputs

    cfg = tiny_model.cfg
    x, lr, vector = random_inputs(cfg, rows, cols, seed=rows * 100 + cols * 10 + count)
    full = api.denoise(tiny_model, x, 0.9, lr=lr, vector=vector, concat_lr=upsample_full(lr), mode="full",
                       backend="reference")
    stats: list[SweepStats] = []
    with torch.no_grad():
        banded = denoise_bands(tiny_model, x, torch.full((x.shape[0],), 0.9), lr=lr, vector=vector,
                               shape=BatchShape(bh, bw), bands=count, backend="reference", stats=stats)
    assert (banded - full).abs().max().item() <= 1e-5
    batches = raster_batches(Grid(rows, cols), BatchShape(bh, bw))
    for band, s in zip(split_bands(batches.cols, count), stats):
        assert s.frontier_peak_blocks <= band_bound(batches, band)  # the band's share of a row, not the row
