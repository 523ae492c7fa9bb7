"""tools/ as a package of scripts: each imports as `tools.X` without side effects, `python -m tools.NAME --help`
exits 0, and the shared harness (tools/harness.py) keeps its contracts. Nothing here runs a benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tools
from tools import harness

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (REPO / "tools").glob("*.py") if p.stem != "__init__")
SCRIPTS = [m for m in MODULES if 'if __name__ == "__main__":' in (REPO / "tools" / f"{m}.py").read_text()]


def test_the_scripts_are_found():
    assert {"harness", "memtrace"} <= set(MODULES) and "harness" not in SCRIPTS
    assert {"bench_job", "bench_main_job", "bench_memory", "prepare_data", "tune_modes"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", MODULES)
def test_no_sys_path_hacks(name):
    source = (REPO / "tools" / f"{name}.py").read_text()
    assert "sys.path.insert" not in source and "sys.path.append" not in source


@pytest.mark.parametrize("name", MODULES)
def test_imports_without_side_effects(name, tmp_path, monkeypatch, capfd):
    """Importing prints nothing, writes nothing, and leaves sys.path, sys.argv, the environment and
    torch's thread count as they were; a script's work happens in main()."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored afterwards whatever the import does
    before = (list(sys.path), list(sys.argv), dict(os.environ), torch.get_num_threads())
    qualname = f"tools.{name}"
    old = sys.modules.pop(qualname, None)
    try:
        module = importlib.import_module(qualname)  # executed afresh even if another test imported it
    finally:
        if old is not None:
            sys.modules[qualname] = old
            setattr(tools, name, old)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert list(tmp_path.iterdir()) == []
    assert (list(sys.path), list(sys.argv), dict(os.environ), torch.get_num_threads()) == before
    if name in SCRIPTS:
        assert callable(module.main) and module.__doc__


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_exits_0(name):
    proc = subprocess.run([sys.executable, "-m", f"tools.{name}", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:200]


# ---- the harness ---------------------------------------------------------------------------------------
def test_argument_parsers():
    assert harness.parse_ints("256,1024,") == [256, 1024]
    assert harness.parse_batch("8X4") == (8, 4)
    for bad in ("", "a,b", "0,5"):
        with pytest.raises(argparse.ArgumentTypeError):
            harness.parse_ints(bad)
    for bad in ("8", "8x", "0x2", "2x2x2"):
        with pytest.raises(argparse.ArgumentTypeError):
            harness.parse_batch(bad)
    p = argparse.ArgumentParser()
    harness.add_run_arguments(p, "out/x", threads=2, poll=0.5, timeout=9.0)
    args = p.parse_args([])
    assert (args.threads, args.poll, args.timeout, args.workdir) == (2, 0.5, 9.0, REPO / "out" / "x")


def test_synthetic_lr_png(tmp_path):
    from PIL import Image

    a = harness.synthetic_lr_png(40, 24, tmp_path / "a.png", seed=1)
    harness.synthetic_lr_png(40, 24, tmp_path / "b.png", seed=1)
    with Image.open(a) as img:
        assert (img.size, img.mode) == ((40, 24), "RGB")
    assert a.read_bytes() == (tmp_path / "b.png").read_bytes()


def test_run_child_measures_peak_rss_and_reports(tmp_path):
    """A 64 MiB child: imports_only's report gives the child's own VmHWM; the wait4 peak sees it, and
    also carries this (torch-sized) process's high-water mark: the floor that harness.run_child reports."""
    code = harness.imports_only(["json"]).replace("_report()\n", "block = b'x' * (64 << 20)\n_report()\n")
    samples = []
    res = harness.run_child([sys.executable, "-c", code], harness.child_env(1), poll=0.01,
                            report=tmp_path / "report.json", on_sample=lambda t, st: samples.append(st))
    assert res["rc"] == 0, res["stderr_tail"]
    own = res["report"]["hwm_kib"] / 1024
    assert 64 <= own < res["parent_hwm_mib"] and not res["timed_out"]
    assert res["wait4_mib"] >= max(own, res["parent_hwm_mib"] - 1)
    assert not (tmp_path / "report.json").exists()
    assert all("VmRSS" in st for st in samples)


def test_run_child_stops_at_timeout():
    res = harness.run_child([sys.executable, "-c", "import time; time.sleep(60)"], harness.child_env(1),
                            poll=0.05, timeout=0.5, kill_after=5.0)
    assert res["timed_out"] and res["rc"] != 0 and res["wall_s"] < 10


def test_shown_and_split_times(tmp_path):
    cmd = [sys.executable, "-c", harness.WRAPPER, "upscale", "in.png", "-o", "out.png"]
    assert harness.shown(cmd) == "python -m streamsr upscale in.png -o out.png"
    split = harness.split_times({"seconds": {"model": 2.0, "read": 1.0, "write": 0.5, "total": 4.0, "stats": 0.1},
                                 "model_blocks_done": 8}, wall=5.0)
    assert split["other_s"] == 0.5 and split["setup_s"] == 1.0 and split["ms_per_block"] == 250.0
    assert split["model_pct"] == 50.0 and split["extra_seconds"] == {"stats": 0.1}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 1000)
    assert harness.tree_bytes(tmp_path) == 1000 and harness.tree_bytes(tmp_path, allocated=True) >= 0
    assert harness.read_manifest(tmp_path) is None
