"""The CUDA findings of issue 11 that can be checked on the CPU: the planner keeps the frontier on the device
when it fits and counts the CUDA context, --vram defaults to the free device memory, weights are cast
before they move, fp32 means IEEE fp32, the layer frees its attention temporaries, xformers fails early
with one line. (The CUDA code paths themselves run in tools/gpu_check.py.)"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from conftest import random_inputs, random_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from streamsr import api
from streamsr.cli import main
from streamsr.config import ModelConfig
from streamsr.core import precision
from streamsr.core.attention import get_kernel
from streamsr.core.model import InfDiT
from streamsr.errors import BadInput
from streamsr.stream import memory
from streamsr.weights import load_model, save_model_dir
from tools.harness import synthetic_lr_png
from tools.memtrace import TensorBytes

SMALL = ModelConfig(block_size=64, patch_size=4, hidden=64, heads=4, layers=2, mlp_hidden=256, lr_patch=2,
                    vector_dim=8, rope_table=256)


def test_the_device_frontier_wins_whenever_it_fits_with_the_same_batch():
    rng = random.Random(1)
    chosen = set()
    for _ in range(150):
        cfg = rng.choice([ModelConfig.official(), SMALL])
        size = (rng.choice([1, 4, 16, 64]) * cfg.block_size, rng.choice([1, 8, 32, 256]) * cfg.block_size)
        itemsize = rng.choice([2, 4])
        vram, ram = rng.choice([1 << 30, 8 << 30, 24 << 30, 80 << 30]), rng.choice([16 << 30, 64 << 30, 1 << 40])
        try:
            plan = memory.plan(cfg, itemsize, size, vram, ram, "cuda")
        except memory.BudgetError:
            continue
        chosen.add(plan.placement)
        if plan.placement != "device":
            same = memory.predict(cfg, itemsize, size, plan.batch, "device", "cuda")
            assert not same.fits(vram, ram, "cuda"), (cfg.hidden, size, plan)
    assert chosen == {"device", "host", "disk"}  # the cases above reach every placement


def test_host_transfers_cost_time_so_placements_no_longer_tie():
    cfg = ModelConfig.official()
    for batch in [(1, 1), (2, 2), (4, 4)]:
        device, host = (memory.predict(cfg, 2, (2048, 2048), batch, p, "cuda") for p in ("device", "host"))
        assert host.sweep_cost_blocks > device.sweep_cost_blocks
    plan = memory.plan(cfg, 2, (2048, 2048), vram=24 << 30, ram=64 << 30, device_type="cuda")
    assert plan.placement == "device"


def test_the_cuda_context_is_in_the_device_plan_only_on_cuda():
    cfg = SMALL
    cuda = memory.predict(cfg, 4, (1024, 1024), (2, 2), "device", "cuda")
    cpu = memory.predict(cfg, 4, (1024, 1024), (2, 2), "device", "cpu")
    assert cuda.parts["cuda_context"] == memory.CUDA_CONTEXT_BYTES and cpu.parts["cuda_context"] == 0
    assert cuda.device_bytes - cpu.device_bytes == memory.CUDA_CONTEXT_BYTES
    disk = memory.predict(cfg, 4, (1024, 1024), (2, 2), "disk", "cuda")
    assert disk.parts["spill_io"] >= memory.BOUNCE_BLOCKS * memory.slot_bytes(cfg, 4)  # the pinned bounce slots


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m"
    save_model_dir(random_model(ModelConfig.tiny(vector_dim=0)), path)
    return path


def test_vram_defaults_to_the_free_device_memory_on_cuda(model_dir, monkeypatch, capsys):
    args = ["plan", "--model", str(model_dir), "--size", "1024x1024", "--ram", "4GiB"]
    assert main(args) == 0
    assert "--vram" not in capsys.readouterr().out  # on the CPU: no device budget
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 << 30, 80 << 30))
    assert main(args + ["--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert f"--vram {memory.format_bytes((3 << 30) + memory.CUDA_CONTEXT_BYTES)}" in out
    assert "cuda_context" in out
    assert main(args + ["--device", "cuda", "--vram", "2GiB"]) == 0  # a given budget wins
    assert "--vram 2.00 GiB" in capsys.readouterr().out


class DeviceDtypes(TorchDispatchMode):
    """Records the (device type, dtype) of every tensor an op makes."""

    def __init__(self) -> None:
        super().__init__()
        self.made: set[tuple[str, torch.dtype]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.made |= {(t.device.type, t.dtype) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)}
        return out


def test_weights_are_cast_before_they_move(model_dir):
    with DeviceDtypes() as seen:
        model = load_model(model_dir, device="meta", dtype=torch.bfloat16)  # "meta" stands in for the GPU
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.device.type == "meta"
    assert ("meta", torch.bfloat16) in seen.made and ("meta", torch.float32) not in seen.made


@pytest.fixture
def restore_fp32_flags():
    if precision._new_api():
        saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
        yield
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved
    else:
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_fp32_means_ieee_fp32_on_cuda(restore_fp32_flags, model_dir, monkeypatch):
    if precision._new_api():
        torch.backends.cudnn.conv.fp32_precision = "tf32"  # torch's default for convolutions
    else:
        torch.backends.cudnn.allow_tf32 = True
    assert not precision.fp32_is_ieee()
    precision.use_ieee_fp32()  # only flags: callable on the CPU
    assert precision.fp32_is_ieee()
    if precision._new_api():
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert precision.needs_ieee_fp32("cuda:0", torch.float32)
    assert not precision.needs_ieee_fp32("cuda", torch.bfloat16) and not precision.needs_ieee_fp32("cpu", torch.float32)
    calls = []  # load_model turns it on for an fp32 CUDA run
    monkeypatch.setattr(precision, "needs_ieee_fp32", lambda device, dtype: True)
    monkeypatch.setattr(precision, "use_ieee_fp32", lambda: calls.append(1))
    load_model(model_dir)
    assert calls == [1]


def test_a_layer_frees_q_and_the_key_slots_before_its_mlp():
    """From the start of a layer to its MLP the held bytes grow by the new h, its norm and modulation, and
    the layer's own K and V (about 4 x N*T*C); keeping q, the gathered slots and the qkv projection
    alive, as before, added ~11 more."""
    model = random_model(SMALL)
    x, lr, vector = random_inputs(SMALL, 2, 2)
    seen = {}

    def at(name):
        def hook(*_):
            seen.setdefault(name, tb.held)  # returns None: the input is left alone
        return hook

    with TensorBytes() as tb, torch.no_grad():
        layer = model.transformer[1]
        hooks = [layer.qkv.register_forward_pre_hook(at("start")), layer.mlp_in.register_forward_pre_hook(at("mlp"))]
        api.denoise(model, x, 1.0, lr=lr, vector=vector, mode="full")
        for hook in hooks:
            hook.remove()
    ntc = 4 * SMALL.block_tokens * SMALL.hidden * 4  # the 4 blocks' tokens, fp32
    assert 3 * ntc <= seen["mlp"] - seen["start"] <= 5 * ntc


def test_xformers_where_it_cannot_run_is_one_line_before_any_job(model_dir, tmp_path, capsys):
    if get_kernel("sdpa") and torch.cuda.is_available():
        pytest.skip("checks the CPU refusal")
    with pytest.raises(BadInput, match="xformers cannot run here"):
        get_kernel("xformers", device="cpu")
    lr = synthetic_lr_png(16, 16, tmp_path / "lr.png", seed=0)
    rc = main(["upscale", str(lr), "-o", str(tmp_path / "out.png"), "--model", str(model_dir), "--backend",
               "xformers", "--steps", "1", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "xformers cannot run here" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.png"]  # no job dir, no output


def test_freed_temporaries_do_not_change_results(tiny_model):
    x, lr, vector = random_inputs(tiny_model.cfg, 2, 3)
    full = api.denoise(tiny_model, x, 0.6, lr=lr, vector=vector, mode="full", backend="reference")
    for batch, placement in itertools.product([(1, 1), (2, 3)], ["device", "host"]):
        out = api.denoise(tiny_model, x, 0.6, lr=lr, vector=vector, mode="stream", batch=batch,
                          backend="reference", placement=placement)
        assert (out - full).abs().max() <= 1e-5
    assert InfDiT is type(tiny_model)
