"""tools/gpu_check.py in its reduced CPU form, so that the prepared GPU check cannot rot: every row is
there, the numbers are sane, the CUDA-only rows say so, and the FLOP count behind the MFU is exact."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_inputs, random_model
from torch.utils.flop_counter import FlopCounterMode

from streamsr import api
from streamsr.config import ModelConfig
from tools import gpu_check


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    setup = gpu_check.make_setup(True, "cpu", tmp_path_factory.mktemp("gpu-check"), None, 8 << 30, None)
    assert setup.reduced and not setup.cuda and setup.kits is not None  # ../shared's kits are found
    return {r.key: r for r in gpu_check.run_checks(setup, log=lambda text: None)}


def test_every_row_is_there_in_order(rows):
    assert tuple(rows) == gpu_check.KEYS
    assert not [r for r in rows.values() if r.status == "FAIL"], [r for r in rows.values() if r.status == "FAIL"]
    for key in ("cuda_context", "syncs"):
        assert rows[key].status == gpu_check.NO_CUDA and rows[key].number is None


def test_the_numbers_are_sane(rows):
    assert 1e-4 < rows["parity_bf16_fp32"].number <= 5e-2  # bf16 really ran, and stays close to fp32
    assert rows["stream_vs_full_fp32"].number <= 1e-5
    assert rows["host_vs_device"].number == 0.0
    assert rows["kits_fp32"].number <= 1e-4
    for key in ("throughput_small", "throughput_large"):
        assert rows[key].number > 10 and "block-evals/s" in rows[key].value and gpu_check.NO_CUDA in rows[key].value
    for key in ("vram_host", "vram_disk"):
        assert 0.3 < rows[key].number <= 1.0, rows[key].value  # measured within the plan, not a wild overestimate
    assert "host buffer 0 B" not in rows["vram_host"].value  # the frontier was used: one host buffer
    assert 0.0 <= rows["job_overhead"].number < 1.0 and "ms engine per block" in rows["job_overhead"].value


def test_the_table_and_the_json(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--reduced", "--device", "cpu", "--only", "host_vs_device,cuda_context",
                           "--workdir", str(tmp_path / "w"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "REDUCED" in lines[0] and lines[1].split(" | ")[0].strip() == "check" and len(lines) == 5
    assert "host/disk frontier vs device" in text and gpu_check.NO_CUDA in text
    data = json.loads(out.read_text())
    assert [r["key"] for r in data["rows"]] == ["cuda_context", "host_vs_device"] and data["reduced"]


def test_the_flop_count_is_what_torch_counts():
    """sweep_flops (the MFU's numerator) equals torch's FLOP counter on a streamed sweep (reference
    attention, so that every matmul is visible to the counter)."""
    for cfg, batch in [(ModelConfig.tiny(), (2, 2)), (ModelConfig.tiny(vector_dim=0, lr_patch=1, block_size=16,
                                                                       patch_size=4, heads=4, rope_table=8), (1, 3))]:
        model = random_model(cfg)
        x, lr, vector = random_inputs(cfg, 3, 3)
        up = api.upsample_full(lr)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            api.denoise(model, x, 1.0, lr=lr, vector=vector, mode="stream", batch=batch, backend="reference",
                        concat_lr=up)
        batches = -(-3 // batch[0]) * -(-3 // batch[1])
        assert counter.get_total_flops() == gpu_check.sweep_flops(cfg, 9, batches)
    official = gpu_check.block_flops(ModelConfig.official())
    assert 1.6e12 < official < 1.9e12  # ~1.7 TFLOP per block evaluation (issue 11)
