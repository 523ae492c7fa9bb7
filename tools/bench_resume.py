"""Resume progress under frequent kills (issue 14 item 7): SIGKILL a job a fixed time after each run
starts computing (its job.json says running), relaunch, and record the committed cursor after every
kill, with frontier snapshots (the default policy) and without (STREAMSR_SNAPSHOT_SECONDS=off).

    .venv/bin/python -m tools.bench_resume --lr 160 --kill-after 2 --kills 12

Measured (2026-12-01, this 2-core CPU, a training run and a test suite sharing the cores; tiny random
model, 1x1 batches, Euler 2 steps, LR 160^2: 20x20 blocks, 400 batches per sweep, tasks 0-399 the sampler;
`--lr 160 --kill-after 2 --kills 10`), the committed cursor after each kill:

    snapshots (default policy)   80, 140, 200, 260, 340, 464, 560, 624, 720, 880   (every resume advances)
    no snapshots                 80, 80, 100, 140, 140, 140, 140, 140, 140, 140    (stuck: the replay of the
                                                                                   sweep so far fills the 2 s)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cursor_after_kill(cmd: list[str], job: Path, env: dict, kill_after: float) -> tuple[int, bool]:
    """Run `cmd` until `kill_after` seconds after the job is running, SIGKILL it; (cursor, finished)."""
    launched = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = None
    while proc.poll() is None:
        if deadline is None:  # this run's own "running" commit (a killed run leaves "running" behind too)
            try:
                path = job / "job.json"
                if path.stat().st_mtime > launched and json.loads(path.read_text()).get("status") == "running":
                    deadline = time.monotonic() + kill_after
            except (OSError, ValueError):
                pass
        elif time.monotonic() >= deadline:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.01)
    data = json.loads((job / "job.json").read_text())
    return data["cursor"], proc.returncode == 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lr", type=int, default=160)
    p.add_argument("--kill-after", type=float, default=2.0)
    p.add_argument("--kills", type=int, default=12)
    args = p.parse_args()
    import numpy as np
    from PIL import Image

    from streamsr.config import ModelConfig
    from tools.harness import random_model

    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        root = Path(tmp)
        random_model(ModelConfig.tiny(vector_dim=0), std=0.1).save_pretrained(root / "model")
        img = (np.random.default_rng(0).random((args.lr, args.lr, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "in.png")
        for label, policy in (("snapshots (default policy)", None), ("no snapshots", "off")):
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            if policy:
                env["STREAMSR_SNAPSHOT_SECONDS"] = policy
            job = root / f"job-{policy}"
            first = [sys.executable, "-m", "streamsr", "upscale", str(root / "in.png"), "-o", str(root / "o.png"),
                     "--model", str(root / "model"), "--job", str(job), "--steps", "2", "--sampler", "euler",
                     "--batch", "1x1", "-q"]
            cursors, done = [], False
            for kill in range(args.kills):
                cmd = first if kill == 0 else [sys.executable, "-m", "streamsr", "resume", str(job), "-q"]
                cursor, done = cursor_after_kill(cmd, job, env, args.kill_after)
                cursors.append(cursor)
                if done:
                    break
            print(f"{label:28s} cursor after each kill: {cursors}{' (finished)' if done else ''}")


if __name__ == "__main__":
    main()
