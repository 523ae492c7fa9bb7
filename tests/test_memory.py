"""The memory plan: predictions bound the measured bytes, budgets are respected, placements agree."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from conftest import random_inputs, random_model

from streamsr import api
from streamsr.cli import main
from streamsr.config import ModelConfig
from streamsr.core.attention import get_kernel
from streamsr.core.denoiser import embedding
from streamsr.core.grid import image_to_blocks
from streamsr.core.model import InfDiT
from streamsr.stream import memory
from streamsr.core.conditioning import lr_windows
from streamsr.stream.engine import denoise_batch
from streamsr.stream.frontier import Frontier
from streamsr.stream.planner import BatchShape, Grid, batch_box, frontier_bound, frontier_plan
from tools.memtrace import TensorBytes

CONFIGS = [ModelConfig.tiny(),
           ModelConfig(block_size=64, patch_size=4, hidden=64, heads=4, layers=2, mlp_hidden=256, lr_patch=2,
                       vector_dim=8, rope_table=256)]


def measured_sweep_bytes(model, x, lr, vector, batch, placement, spill=None) -> tuple[int, Frontier]:
    """Peak bytes held in tensors during a streamed sweep, above what existed before it."""
    cfg = model.cfg
    up = api.upsample_full(lr)
    grid, shape = Grid(x.shape[-2] // cfg.block_size, x.shape[-1] // cfg.block_size), BatchShape(*batch)
    plan = frontier_plan(grid, shape)
    sigma = torch.tensor([1.0])
    emb = embedding(model, sigma, vector)
    with TensorBytes() as tb, torch.no_grad():
        base = tb.held
        frontier = Frontier(frontier_bound(grid, shape), cfg.layers, placement, x.device, spill)
        for batch_plan in plan.batch_plans():
            y0, y1, x0, x1 = batch_box(batch_plan.batch, cfg.block_size)
            denoise_batch(model, image_to_blocks(x[..., y0:y1, x0:x1], cfg.block_size),
                          image_to_blocks(up[..., y0:y1, x0:x1], cfg.block_size), sigma=sigma, emb=emb,
                          windows=lr_windows(lr, batch_plan.batch.blocks(), cfg).to(x.device),
                          plan=batch_plan, frontier=frontier, kernel=get_kernel("sdpa"))
    return tb.peak - base, frontier


@pytest.mark.parametrize("cfg", CONFIGS, ids=["tiny", "h64"])
@pytest.mark.parametrize("batch,placement", [((1, 1), "device"), ((2, 2), "device"), ((2, 4), "disk"),
                                             ((4, 8), "device"), ((1, 8), "host")])
def test_measured_bytes_never_exceed_the_prediction(cfg, batch, placement, tmp_path):
    model = random_model(cfg)
    x, lr, vector = random_inputs(cfg, 4, 8)
    measured, frontier = measured_sweep_bytes(model, x, lr, vector, batch, placement, tmp_path / "spill")
    pred = memory.predict(cfg, 4, tuple(x.shape[-2:]), batch, placement)
    device_terms = pred.parts["activations"] + pred.parts["frontier"] + pred.parts["staging"]
    host_frontier = pred.parts["frontier_host"]  # on a CPU the "host" copy is more CPU memory
    assert measured <= device_terms + host_frontier, (measured, pred.parts)
    assert measured >= 0.6 * (device_terms + host_frontier)  # and the prediction is not a wild overestimate
    assert frontier.peak_bytes <= frontier_bound(Grid(4, 8), BatchShape(*batch)) * memory.slot_bytes(cfg, 4)
    assert memory.weight_bytes(cfg, 4) == sum(p.numel() * 4 for p in model.parameters())


def test_placements_and_batches_give_identical_output(tmp_path):
    model = random_model(ModelConfig.tiny())
    x, lr, vector = random_inputs(model.cfg, 3, 5)
    full = api.denoise(model, x, 0.8, lr=lr, vector=vector, mode="full")
    for batch in [(1, 1), (2, 3)]:
        ref = api.denoise(model, x, 0.8, lr=lr, vector=vector, mode="stream", batch=batch)
        assert (ref - full).abs().max() <= 1e-5
        for placement in ("host", "disk"):
            out = api.denoise(model, x, 0.8, lr=lr, vector=vector, mode="stream", batch=batch, placement=placement,
                              spill_dir=tmp_path / f"{placement}{batch}")
            assert torch.equal(out, ref), (batch, placement)
    assert not list((tmp_path / "disk(2, 3)").glob("*.bin"))  # the spill files are gone after the sweep


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_planner_respects_budgets_and_more_budget_is_never_slower(device_type):
    rng = random.Random(0)
    cfgs = [ModelConfig.official(), ModelConfig.tiny(), CONFIGS[1]]
    for _ in range(60):
        cfg = rng.choice(cfgs)
        size = (rng.choice([1, 3, 8, 40]) * cfg.block_size, rng.choice([1, 5, 16, 200]) * cfg.block_size)
        itemsize = rng.choice([2, 4])
        budgets = sorted(rng.choice([1 << 28, 1 << 30, 4 << 30, 8 << 30, 64 << 30, 1 << 40]) for _ in range(2))
        for vram, ram in itertools.product(budgets, budgets):
            try:
                plan = memory.plan(cfg, itemsize, size, vram, ram, device_type)
            except memory.BudgetError as exc:
                assert "smallest that would" in str(exc)
                continue
            assert plan.host_bytes <= ram and (device_type == "cpu" or plan.device_bytes <= vram)
        bigger = None
        for budget in budgets:  # growing both budgets never gives a slower plan
            try:
                plan = memory.plan(cfg, itemsize, size, budget, budget, device_type)
            except memory.BudgetError:
                continue
            if bigger is not None:
                assert plan.sweep_cost_blocks <= bigger.sweep_cost_blocks
            bigger = plan


def test_budget_error_names_a_budget_that_fits():
    cfg = ModelConfig.official()
    with pytest.raises(memory.BudgetError) as exc:
        memory.plan(cfg, 2, (8192, 8192), vram=1 << 30, ram=1 << 30, device_type="cuda")
    text = str(exc.value)
    vram = memory.parse_size(text.split("--vram ")[1].split(" --ram")[0].replace(" ", ""))
    ram = memory.parse_size(text.split("--ram ")[1].split(" (")[0].replace(" ", ""))
    plan = memory.plan(cfg, 2, (8192, 8192), vram=int(vram * 1.01), ram=int(ram * 1.01), device_type="cuda")
    assert plan.device_bytes <= vram * 1.01


def test_official_plan_moves_the_frontier_off_the_gpu_as_width_grows():
    cfg = ModelConfig.official()
    places = [memory.plan(cfg, 2, (2048, w), vram=8 << 30, ram=64 << 30, device_type="cuda").placement
              for w in (2048, 8192, 32768, 131072)]
    assert places[0] == "device" and places[-1] in ("host", "disk") and "device" not in places[2:]
    assert memory.slot_bytes(cfg, 2) == 2 * 28 * 1024 * 1280 * 2  # ~147 MB, DESIGN.md section 3


def test_parse_size():
    assert memory.parse_size("8GiB") == 8 << 30
    assert memory.parse_size("512MiB") == 512 << 20
    assert memory.parse_size("1.5G") == int(1.5 * (1 << 30))
    assert memory.parse_size("2e9") == 2_000_000_000
    with pytest.raises(ValueError):
        memory.parse_size("lots")


def test_plan_command(tmp_path, capsys):
    InfDiT.from_model_config(ModelConfig.tiny(vector_dim=0)).save_pretrained(tmp_path / "m")
    assert main(["plan", "--model", str(tmp_path / "m"), "--size", "4096x1024", "--ram", "4GiB"]) == 0
    out = capsys.readouterr().out
    assert "batch" in out and "frontier on" in out and "predicted peak" in out
    assert main(["plan", "--model", str(tmp_path / "m"), "--size", "4096x1024", "--ram", "10MiB"]) == 2
    assert "smallest that would" in capsys.readouterr().err


def test_a_ranks_plan_counts_the_sweeps_in_flight_of_the_steps_it_runs():
    """On several ranks a steps sweep may run fewer steps than the budget allows (rank_split): the plan
    counts the frontiers of those steps' sweeps, not of the budget's, and a band's frontier, not a row's."""
    from streamsr.config import JobConfig
    from streamsr.jobs.manifest import Geometry
    from streamsr.jobs.create import plan_memory

    cfg = ModelConfig.tiny()
    geo = Geometry(64, 256, cfg.block_size)
    job = JobConfig(steps=8, sampler="euler")
    _, solo, one = plan_memory(cfg, job, geometry=geo, auto_batch=True, auto_placement=True)
    _, ranked, split = plan_memory(cfg, job, geometry=geo, auto_batch=True, auto_placement=True, ranks=2)
    assert (one.stages, one.bands, split.stages, split.bands) == (1, 1, 2, 1) and split.fuse < one.fuse
    per_sweep = solo.parts["other_sweeps"] // (memory.sweeps_in_flight(one.fuse, steps=8, sampler="euler") - 1)
    assert ranked.parts["other_sweeps"] == (memory.sweeps_in_flight(split.fuse, steps=8, sampler="euler") - 1) * per_sweep
    one_step = JobConfig(steps=1, sampler="euler", batch_rows=1, batch_cols=2)  # several batch columns
    _, whole, _ = plan_memory(cfg, one_step, geometry=geo, auto_batch=False, auto_placement=True)
    _, banded, split = plan_memory(cfg, one_step, geometry=geo, auto_batch=False, auto_placement=True, ranks=2)
    assert split.bands == 2 and banded.parts["frontier"] < whole.parts["frontier"]


def test_the_heap_kept_between_batches_is_in_the_plan_and_within_the_budget():
    """jobs/pipeline keeps what one batch frees for the next (fewer page faults): the plan counts it as the
    host part `heap_reuse`, at most what a batch allocates on the host, never past a --ram budget."""
    from streamsr.config import JobConfig
    from streamsr.jobs.create import plan_memory
    from streamsr.jobs.manifest import Geometry

    cfg = ModelConfig.tiny()
    pred = memory.plan(cfg, 4, (256, 512), None, None, "cpu")
    transient = pred.parts["store_io"] + pred.parts["activations"]
    kept = memory.with_heap_reuse(pred, ram=None, device_type="cpu")
    assert kept.parts["heap_reuse"] == min(memory.HEAP_REUSE_BYTES, transient) > 0
    assert kept.host_bytes == pred.host_bytes + kept.parts["heap_reuse"] and kept.device_bytes == pred.device_bytes
    room = 10 << 20
    tight = memory.with_heap_reuse(pred, ram=pred.host_bytes + room, device_type="cpu")
    assert tight.parts["heap_reuse"] == min(room, kept.parts["heap_reuse"]) and tight.host_bytes <= pred.host_bytes + room
    assert memory.with_heap_reuse(pred, ram=pred.host_bytes, device_type="cpu").parts["heap_reuse"] == 0
    cuda = memory.with_heap_reuse(pred, ram=None, device_type="cuda")  # activations live on the device
    assert cuda.parts["heap_reuse"] == min(memory.HEAP_REUSE_BYTES, pred.parts["store_io"])
    geo = Geometry(64, 256, cfg.block_size)
    for ram in (0, 2 << 30):
        _, plan, _ = plan_memory(cfg, JobConfig(steps=2, ram=ram), geometry=geo, auto_batch=True, auto_placement=True)
        assert plan.parts["heap_reuse"] > 0 and (not ram or plan.host_bytes <= ram)
