"""Time the README's main job: `streamsr upscale examples/coffee-256.png -o OUT` with the shipped default model.

Runs the command in a fresh process `--repeats` times (default settings: the model's recommended
sampling from its streamsr_defaults.json) and prints the wall time of each run, including Python
start-up and model load, plus the job's own split (model / read / write) from a kept job dir.

    .venv/bin/python -m tools.bench_main_job [--input examples/coffee-256.png] [--repeats 3] [-- UPSCALE FLAGS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.harness import REPO


def run_once(input_path: Path, extra: list[str]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job"
        cmd = [sys.executable, "-m", "streamsr", "upscale", str(input_path), "-o", str(Path(tmp) / "out.png"),
               "--job", str(job), "-q", *extra]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        wall = time.perf_counter() - start
        manifest = json.loads((job / "job.json").read_text())
    return wall, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=REPO / "examples" / "coffee-256.png")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="extra upscale flags, after --")
    args = parser.parse_args(argv)
    walls = []
    for i in range(args.repeats):
        wall, m = run_once(args.input, args.extra)
        walls.append(wall)
        sec, job, plan = m["seconds"], m["job"], m.get("plan", {})
        print(f"run {i + 1}: {wall:.1f} s wall; job {sec.get('total', 0):.1f} s (model {sec.get('model', 0):.1f}, "
              f"read {sec.get('read', 0):.1f}, write {sec.get('write', 0):.1f}); steps {job['steps']} {job['sampler']} "
              f"sigma_max {job['sigma_max']} anchor {job['anchor']} batch {plan.get('batch')}", flush=True)
    print(f"best {min(walls):.1f} s, median {sorted(walls)[len(walls) // 2]:.1f} s over {len(walls)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
