"""The K/V frontier's bookkeeping on the CPU: the slot allocator, one host buffer per frontier, and the
asynchronous-copy protocol (events, waits, the batch's right column kept on the device) checked with a
copier that simulates a CUDA side stream: a copy runs only when someone waits for it, and until then
its destination holds NaN, so a missing wait shows up in the output."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_inputs, random_model

from streamsr import api
from streamsr.config import ModelConfig
from streamsr.stream import frontier as frontier_mod
from streamsr.stream.copies import SyncCopier, copier_for
from streamsr.stream.frontier import BOUNCE_BLOCKS, Frontier
from streamsr.stream.planner import BatchShape, Grid, frontier_bound, frontier_plan, reads_bound
from streamsr.stream.slots import SlotAllocator, SlotBuffer, SlotsExhausted

NAN = float("nan")


class SimulatedStream(SyncCopier):
    """A copier whose copies are queued in stream order and run only when an event is waited for."""

    asynchronous = True

    def __init__(self) -> None:
        self.queue: list = []  # pending copies, in stream order
        self.done = 0  # copies run so far (= the next event's index into the whole history)
        self.issued = 0
        self.to_device_calls = 0
        self.buffers: list[int] = []  # numel of every host buffer handed out
        self.released = 0
        self.skip_waits = False  # a broken caller: `use` does not wait

    def host_buffer(self, numel, dtype):
        self.buffers.append(numel)
        return torch.full((numel,), NAN, dtype=dtype)

    def release_host_buffer(self, buffer):
        self.released += 1

    def _enqueue(self, op) -> int:
        self.queue.append(op)
        self.issued += 1
        return self.issued  # the event: "the first `issued` copies have run"

    def _run_until(self, event) -> None:
        while self.done < event:
            self.queue.pop(0)()
            self.done += 1

    def to_host(self, dst, k, v):
        dst.fill_(NAN)  # not written until the copy runs
        return self._enqueue(lambda: (dst[0].copy_(k), dst[1].copy_(v)))

    def to_device(self, src, device):
        self.to_device_calls += 1
        out = torch.full(src.shape, NAN, dtype=src.dtype)  # (2, B, T, H, D)
        return out, self._enqueue(lambda: out.copy_(src))  # reads the host slot when the stream gets there

    def use(self, tensor, event):
        if event is not None and not self.skip_waits:
            self._run_until(event)

    def host_ready(self, event):
        if event is not None:
            self._run_until(event)


@pytest.fixture
def stream(monkeypatch) -> SimulatedStream:
    sim = SimulatedStream()
    monkeypatch.setattr(frontier_mod, "copier_for", lambda device: sim)
    return sim


def test_slot_allocator_hands_out_the_lowest_free_slot_and_refuses_more_than_capacity():
    slots = SlotAllocator(3)
    assert [slots.alloc(), slots.alloc(), slots.alloc()] == [0, 1, 2] and slots.full
    with pytest.raises(SlotsExhausted):
        slots.alloc()
    slots.free(1)
    slots.free(0)
    assert slots.alloc() == 0 and len(slots) == 2 and slots.peak_used == 3
    with pytest.raises(ValueError):
        slots.free(1)  # not in use
    with pytest.raises(ValueError):
        SlotAllocator(0)


def test_slot_buffer_views_are_disjoint_parts_of_one_buffer():
    made = []
    buf = SlotBuffer(4, (1, 2, 3), torch.float32, lambda n, dt: made.append(n) or torch.zeros(n, dtype=dt))
    assert made == [4 * 2 * 6] and buf.nbytes == 4 * 2 * 6 * 4
    for slot in range(4):
        buf.view(slot).fill_(slot)
    assert buf.view(2).shape == (2, 1, 2, 3) and torch.equal(buf.buffer.view(4, -1)[:, 0], torch.arange(4.0))
    assert buf.view(1).data_ptr() == buf.buffer.data_ptr() + 12 * 4  # a view, no copy


def test_host_frontier_allocates_one_buffer_at_capacity():
    f = Frontier(5, 2, "host")
    k = torch.randn(1, 4, 2, 8)  # (B, T, H, D)
    f.put((0, 0), 0, k, k + 1)
    f.put((0, 1), 1, k + 2, k + 3)
    assert f.host_buffer_bytes == 5 * 2 * 2 * k.numel() * 4  # capacity blocks x layers x (K, V)
    f.drop((0, 0), 0)
    f.put((1, 0), 0, k + 4, k + 5)  # reuses the freed slot
    f.prefetch([(1, 0), (0, 1)])
    assert torch.equal(f.get((1, 0), 0)[1], k + 5) and torch.equal(f.get((0, 1), 1)[0], k + 2)
    with pytest.raises(ValueError):
        f.put((2, 0), 0, torch.randn(1, 4, 2, 4), torch.randn(1, 4, 2, 4))  # another entry size
    assert isinstance(copier_for(None), SyncCopier) and not copier_for(torch.device("cpu")).asynchronous


def expected_host_to_device_copies(rows: int, cols: int, shape: BatchShape, layers: int) -> int:
    """Entries a sweep copies back to the device: every batch's reads, except the entries the previous
    batch put (its right column), which stay on the device."""
    plans = list(frontier_plan(Grid(rows, cols), shape).batch_plans())
    copies = 0
    for i, plan in enumerate(plans):
        kept = set(plans[i - 1].keep) if i else set()
        copies += sum(blk not in kept for blk in plan.reads)
    return copies * layers


@pytest.mark.parametrize("placement", ["host", "disk"])
@pytest.mark.parametrize("batch", [(1, 1), (2, 2), (1, 3)])
def test_asynchronous_copies_give_the_device_placement_output(stream, placement, batch, tmp_path):
    model = random_model(ModelConfig.tiny())
    rows, cols = 3, 4
    x, lr, vector = random_inputs(model.cfg, rows, cols)
    ref = api.denoise(model, x, 0.9, lr=lr, vector=vector, mode="stream", batch=batch)  # device placement
    assert stream.issued == 0
    out = api.denoise(model, x, 0.9, lr=lr, vector=vector, mode="stream", batch=batch, placement=placement,
                      spill_dir=tmp_path / "spill")
    assert torch.equal(out, ref)
    layers, shape = model.cfg.layers, BatchShape(*batch)
    assert stream.to_device_calls == expected_host_to_device_copies(rows, cols, shape, layers)
    entry = 2 * model.cfg.block_tokens * model.cfg.hidden  # K and V of one block at one layer, elements
    capacity = frontier_bound(Grid(rows, cols), shape) * layers
    assert stream.buffers == [entry * (capacity if placement == "host" else BOUNCE_BLOCKS * layers)]
    if placement == "disk":
        assert not list((tmp_path / "spill").glob("*.bin"))


def test_a_missing_wait_is_seen(stream):
    """The simulated stream has teeth: if `get` did not wait for the copy, the output would be NaN."""
    model = random_model(ModelConfig.tiny())
    x, lr, vector = random_inputs(model.cfg, 2, 3)
    stream.skip_waits = True
    out = api.denoise(model, x, 0.9, lr=lr, vector=vector, mode="stream", batch=(1, 1), placement="host")
    assert out.isnan().any()


def test_staged_bytes_stay_inside_the_planned_staging(stream):
    """Reads of the batch plus its own new entries kept on the device: at most 2 * reads_bound slots."""
    model = random_model(ModelConfig.tiny())
    rows, cols, shape = 4, 5, BatchShape(2, 2)
    x, lr, vector = random_inputs(model.cfg, rows, cols)
    peaks = []
    real_init = Frontier.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        peaks.append(self)

    Frontier.__init__ = spy
    try:
        api.denoise(model, x, 0.9, lr=lr, vector=vector, mode="stream", batch=(2, 2), placement="host")
    finally:
        Frontier.__init__ = real_init
    slot = 2 * model.cfg.layers * model.cfg.block_tokens * model.cfg.hidden * 4
    (front,) = peaks
    assert 0 < front.peak_staged_bytes <= 2 * reads_bound(shape) * slot
    assert front.staged_bytes == 0 and math.isclose(front.peak_blocks, front.peak_entries / model.cfg.layers)


def test_disk_spills_wait_for_their_copies_when_the_bounce_buffer_is_full(stream, tmp_path):
    f = Frontier(8, 1, "disk", spill_dir=tmp_path)  # bounce: BOUNCE_BLOCKS entries of one layer
    ks = [torch.randn(1, 4, 2, 8) for _ in range(6)]
    for i, k in enumerate(ks):
        f.put((0, i), 0, k, -k)
    assert stream.done >= 4 and len(list(tmp_path.glob("*.bin"))) >= 4  # flushed in halves as it filled
    f.prefetch([])  # the batch boundary: device copies not read by the next batch are freed
    f.prefetch([(0, i) for i in range(6)])
    for i, k in enumerate(ks):
        got_k, got_v = f.get((0, i), 0)
        assert torch.equal(got_k, k) and torch.equal(got_v, -k)


@pytest.mark.parametrize("placement", ["device", "host", "disk"])
def test_put_many_refuses_a_block_twice_and_keeps_the_bound(placement, tmp_path):
    from streamsr.stream.frontier import FrontierOverflow

    front = Frontier(2, 1, placement, torch.device("cpu"), tmp_path)
    k = torch.randn(1, 2, 4, 1, 8)  # (B, E, T, H, D)
    with pytest.raises(FrontierOverflow, match="already holds block"):
        front.put_many([(0, 0), (0, 0)], 0, k, k.clone())  # the same block twice in one call
    front.put_many([(0, 0), (0, 1)], 0, k, k.clone())
    with pytest.raises(FrontierOverflow, match="already holds block"):
        front.put((0, 1), 0, k[:, 0], k[:, 0])
    with pytest.raises(FrontierOverflow, match="bound exceeded"):
        front.put((1, 0), 0, k[:, 0], k[:, 0])
    assert torch.equal(front.gather([(0, 1), (0, 0)], 0)[0], k.flip(1))
    front.close()
