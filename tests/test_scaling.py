"""The scaling model (stream/scaling.py): one device is the single-device time, more devices never take
longer, bands cut each rank's frontier to its share, and a device budget is respected when it can be."""

from __future__ import annotations

import pytest

from streamsr.config import ModelConfig
from streamsr.stream.memory import block_flops, frontier_bound, slot_bytes
from streamsr.stream.planner import BatchShape, Grid
from streamsr.stream.scaling import predict_scaling

OFFICIAL = ModelConfig.official()


def test_one_device_is_the_single_device_time():
    p = predict_scaling(OFFICIAL, out_hw=(16384, 16384), sweeps=39, workers=1, flops_per_s=4e14)
    assert (p.sweeps_in_flight, p.bands) == (1, 1)
    assert p.wall_seconds == pytest.approx(39 * 128 * 128 * block_flops(OFFICIAL) / 4e14)
    assert p.speedup == pytest.approx(1.0)


@pytest.mark.parametrize("side,sweeps", [(16384, 39), (100000, 39), (8192, 3)])
def test_more_devices_never_take_longer_and_never_beat_linear(side, sweeps):
    walls = []
    for workers in (1, 2, 3, 4, 8, 16, 64, 128):
        p = predict_scaling(OFFICIAL, out_hw=(side, side), sweeps=sweeps, workers=workers)
        assert p.sweeps_in_flight * p.bands <= workers and p.efficiency <= 1.0 + 1e-9
        walls.append(p.wall_seconds)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(walls, walls[1:])), walls


def test_bands_hold_their_share_of_the_frontier():
    side = 100000
    full = frontier_bound(Grid(-(-side // 128), -(-side // 128)), BatchShape(4, 8)) * slot_bytes(OFFICIAL, 2)
    p = predict_scaling(OFFICIAL, out_hw=(side, side), sweeps=39, workers=8, vram=80 * 2 ** 30)
    assert p.bands == 8 and p.rank_device_bytes <= 80 * 2 ** 30
    assert p.rank_frontier_bytes <= full / p.bands + 2 * 8 * slot_bytes(OFFICIAL, 2)  # a band's width, rounded up
    one = predict_scaling(OFFICIAL, out_hw=(side, side), sweeps=39, workers=1, vram=80 * 2 ** 30)
    assert one.rank_device_bytes > 80 * 2 ** 30  # a whole row of K/V: one H100 cannot hold it (no split fits)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError):
        predict_scaling(OFFICIAL, out_hw=(1024, 1024), sweeps=0, workers=2)


def test_plan_prints_the_prediction_for_n_workers(capsys):
    from streamsr.cli import main

    assert main(["plan", "--size", "4096x4096", "--workers", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = [ln for ln in out if ln.startswith("scaling:")]
    assert len(line) == 1 and "4 CUDA devices" in line[0] and "x" in line[0]
    split = [ln for ln in out if ln.startswith("ranks:")]  # the split a job on 4 ranks gets (rank_split)
    assert len(split) == 1 and "sweep(s) in flight x" in split[0] and "column band(s)" in split[0]
    stages, bands = (int(split[0].split()[k]) for k in (1, 6))
    assert stages * bands == 4 and f"{stages} sweep(s) in flight x {bands} band(s)" in line[0]
    assert main(["plan", "--size", "4096x4096", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
