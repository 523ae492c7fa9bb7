"""What the benchmark scripts share: arguments, synthetic tiny models and images, measured child processes.

Scripts in tools/ run from the repository root as `python -m tools.NAME` and import `streamsr` (installed
in the venv) and each other as `tools.X`; nothing here touches sys.path. Importing this module is cheap
(standard library only): torch, numpy, PIL and streamsr are imported inside the functions that need them,
so `--help` stays fast and a benchmark's own imports are measured where they happen.

- arguments: `parse_ints` (comma lists of sizes), `parse_batch` (RxC), `add_run_arguments` (--threads,
  --seed, --std, --workdir, --timeout, --poll, --keep, --json).
- synthetic inputs: `random_model` / `random_inputs` (what tests/conftest.py builds), `save_random_model`
  (a model dir of one), `make_model_dir` (the same in a child process, keeping torch out of the
  benchmark's own process), `synthetic_lr_png` (smooth gradients plus mild noise, 8-bit RGB).
- children: `WRAPPER` (`python -m streamsr` through runpy, then a JSON report of the child's own peaks
  when main() has returned, before interpreter teardown), `imports_only` (a child that only imports),
  `shown` (a command as typed), `child_env`, `proc_status_kib`, `run_child` (peak RSS by os.wait4,
  /proc polled while it runs).
- job dirs: `read_manifest`, `split_times` (the job's seconds split), `tree_bytes`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from streamsr.config import ModelConfig
    from streamsr.core.model import InfDiT

REPO = Path(__file__).resolve().parents[1]
MIB = 2 ** 20
GIB = 2 ** 30
SR = 4  # streamsr is a x4 upsampler


# ---- arguments -----------------------------------------------------------------------------------------
def parse_ints(text: str) -> list[int]:
    """'256,1024,2048' -> [256, 1024, 2048]: positive integers (LR sides, output widths, ...)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers like 256,1024,2048, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return values


def parse_batch(text: str) -> tuple[int, int]:
    """'8x8' -> (8, 8): a block batch, rows x cols."""
    try:
        r, c = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch must look like 8x8 (rows x cols), got {text!r}") from None
    if r < 1 or c < 1:
        raise argparse.ArgumentTypeError(f"batch must be at least 1x1, got {text!r}")
    return r, c


def add_run_arguments(p: argparse.ArgumentParser, workdir: str, threads: int = 1, poll: float = 0.2,
                      timeout: float | None = None) -> None:
    """The options every child-running benchmark has, with that benchmark's defaults."""
    p.add_argument("--threads", type=int, default=threads,
                   help=f"OMP_NUM_THREADS / MKL_NUM_THREADS of the children (default {threads})")
    p.add_argument("--seed", type=int, default=0, help="weights and image seed (default 0)")
    p.add_argument("--std", type=float, default=0.1, help="std of the tiny model's redrawn weights (default 0.1)")
    p.add_argument("--workdir", type=Path, default=REPO / workdir,
                   help=f"where the model, images and job dirs go (default {workdir})")
    p.add_argument("--timeout", type=float, default=timeout,
                   help="SIGTERM a child after this many seconds (the job stops at a task boundary) and report "
                        f"it as partial (default {timeout or 'none'})")
    p.add_argument("--poll", type=float, default=poll, help=f"seconds between /proc samples (default {poll})")
    p.add_argument("--keep", action="store_true", help="keep job dirs, outputs and LR images (default: delete)")
    p.add_argument("--json", type=Path, help="also write the results here")


# ---- synthetic inputs ----------------------------------------------------------------------------------
def random_model(cfg: ModelConfig, seed: int = 0, std: float = 0.3) -> InfDiT:
    """A model with every parameter redrawn N(0, std) (the official zero-inits would hide most of the math)."""
    import torch

    from streamsr.core.model import InfDiT

    torch.manual_seed(seed)
    model = InfDiT.from_model_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def random_inputs(cfg: ModelConfig, rows: int, cols: int, batch: int = 1, seed: int = 1):
    """(x, lr, vector) for a rows x cols grid: x (B, 3, H, W), lr (B, 3, H/4, W/4) in [-1, 1]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = rows * cfg.block_size, cols * cfg.block_size
    x = torch.randn(batch, 3, h, w, generator=g)  # (B, 3, H, W)
    lr = torch.rand(batch, 3, h // SR, w // SR, generator=g) * 2 - 1  # (B, 3, H/4, W/4)
    vector = torch.randn(batch, cfg.vector_dim, generator=g) if cfg.vector_dim else None  # (B, V)
    return x, lr, vector


def save_random_model(cfg: ModelConfig, path: Path, seed: int = 0, std: float = 0.1) -> Path:
    """`random_model(cfg, seed, std)` saved as a model dir at `path` (replaced); no semantic_encoder.json."""
    if path.exists():
        shutil.rmtree(path)
    random_model(cfg, seed, std).save_pretrained(path)
    return path


def make_model_dir(cfg: ModelConfig, path: Path, seed: int = 0, std: float = 0.1) -> Path:
    """`save_random_model` run in a child process: a benchmark that measures its children by wait4 must not
    import torch itself, since its own high-water mark is the floor of every child's peak (`run_child`)."""
    code = ("import json, sys\nfrom pathlib import Path\nfrom streamsr.config import ModelConfig\n"
            "from tools.harness import save_random_model\n"
            "save_random_model(ModelConfig.from_dict(json.loads(sys.argv[1])), Path(sys.argv[2]), int(sys.argv[3]), "
            "float(sys.argv[4]))\n")
    subprocess.run([sys.executable, "-c", code, json.dumps(cfg.to_dict()), str(path), str(seed), str(std)],
                   cwd=REPO, check=True)
    return path


def synthetic_lr_png(width: int, height: int, path: Path, seed: int) -> Path:
    """A smooth RGB pattern (sin/cos gradients) plus mild noise N(0, 0.03), 8-bit, width x height."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)  # (h, w) each
    x, y = x / max(width, 1), y / max(height, 1)
    r = 0.5 + 0.3 * np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y)
    g = 0.5 + 0.3 * np.cos(2 * np.pi * (2 * x + y))
    b = 0.2 + 0.6 * x * y + 0.1 * np.sin(2 * np.pi * 5 * (x - y))
    img = np.stack([r, g, b], axis=-1) + rng.normal(0.0, 0.03, (height, width, 3)).astype(np.float32)  # (h, w, 3)
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB").save(path)
    return path


# ---- children ------------------------------------------------------------------------------------------
_REPORT = """\
def _report():
    path = os.environ.get('BENCH_REPORT_FILE')
    if not path:
        return
    with open('/proc/self/status') as fh:
        vals = {l.split(':')[0]: int(l.split(':')[1].split()[0]) for l in fh
                if l.startswith(('VmHWM', 'VmRSS', 'RssAnon', 'RssFile'))}
    rep = {'hwm_kib': vals.get('VmHWM'), 'rss_kib': vals.get('VmRSS'), 'rss_anon_kib': vals.get('RssAnon'),
           'rss_file_kib': vals.get('RssFile')}
    torch = sys.modules.get('torch')
    if os.environ.get('BENCH_CUDA') == '1' and torch is not None and torch.cuda.is_initialized():
        rep['cuda_max_allocated'] = torch.cuda.max_memory_allocated()
        rep['cuda_max_reserved'] = torch.cuda.max_memory_reserved()
    with open(path, 'w') as fh:
        json.dump(rep, fh)
"""

# `python -m streamsr ARGS` through runpy (what -m itself uses), then the child's own peaks when main() has
# returned and before interpreter teardown: a torch + diffusers process gains ~140 MiB of RSS while it
# finalises (a bare `import torch, diffusers` too), which would otherwise hide what the job itself uses.
# torch.cuda is only touched when BENCH_CUDA=1 and the job initialised CUDA.
WRAPPER = "import json, os, runpy, sys\n" + _REPORT + """\
sys.argv[0] = 'streamsr'
try:
    runpy.run_module('streamsr', run_name='__main__', alter_sys=True)
finally:
    _report()
"""


def imports_only(modules: list[str]) -> str:
    """`python -c` code of a child that imports `modules` and reports like WRAPPER: the floor under a job."""
    return "import json, os, sys\n" + _REPORT + "".join(f"import {m}\n" for m in modules) + "_report()\n"


def shown(cmd: list[str]) -> str:
    """A streamsr child's command as the user would type it: python -m streamsr ARGS (WRAPPER runs that)."""
    if cmd[1:3] in (["-c", WRAPPER], ["-m", "streamsr"]):
        return "python -m streamsr " + " ".join(cmd[3:])
    return " ".join(cmd)


def child_env(threads: int, cuda: bool = False, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a measured child: OMP/MKL threads, BENCH_CUDA, plus `extra`."""
    env = {**os.environ, **(extra or {})}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), BENCH_CUDA="1" if cuda else "0")
    return env


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a live process in KiB ({} once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def run_child(cmd: list[str], env: dict[str, str], poll: float = 0.2, timeout: float | None = None,
              report: Path | None = None, on_sample: Callable[[float, dict[str, int]], None] | None = None,
              kill_after: float = 60.0) -> dict:
    """Run cmd in the repository root to its end and measure it.

    Peak RSS: `wait4_mib`, os.wait4's ru_maxrss of this one child (exact; its whole life, teardown
    included), but never below `parent_hwm_mib`, this process's VmHWM when it spawned the child: Linux
    carries the spawning process's high-water mark into the child's ru_maxrss across exec, so keep the
    parent small (no torch) where that matters, or use the report's `hwm_kib` (the child's own mm only);
    `polled_hwm_mib`, the last VmHWM read from /proc/PID/status every `poll` seconds, each sample also
    handed to `on_sample(seconds since start, proc_status_kib)`. With `timeout` the child
    gets SIGTERM (streamsr stops at the next task boundary), and SIGKILL `kill_after` seconds later.
    With `report`, BENCH_REPORT_FILE points there (WRAPPER, imports_only) and `report` holds its JSON.
    The cwd is the repository root, so `-c` and `-m tools.X` children import this checkout.
    """
    if report is not None:
        report.unlink(missing_ok=True)
        env = {**env, "BENCH_REPORT_FILE": str(report)}
    err = tempfile.TemporaryFile()
    parent_hwm_kib = proc_status_kib(os.getpid()).get("VmHWM", 0)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    hwm_kib, stopped, killed = 0, None, None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        now = time.monotonic()
        st = proc_status_kib(proc.pid)
        hwm_kib = max(hwm_kib, st.get("VmHWM", 0))
        if on_sample is not None and "VmRSS" in st:
            on_sample(now - start, st)
        if timeout is not None and stopped is None and now - start > timeout:
            stopped = now
            proc.send_signal(signal.SIGTERM)
        if stopped is not None and killed is None and now - stopped > kill_after:
            killed = now
            proc.kill()
        time.sleep(poll)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: keep Popen from waiting again
    err.seek(0)
    stderr = err.read().decode(errors="replace")
    err.close()
    rep = None
    if report is not None and report.exists():
        try:
            rep = json.loads(report.read_text())
        except ValueError:
            rep = None
        report.unlink(missing_ok=True)
    return {"rc": proc.returncode, "wall_s": wall, "wait4_mib": rusage.ru_maxrss / 1024,
            "parent_hwm_mib": parent_hwm_kib / 1024, "polled_hwm_mib": hwm_kib / 1024, "timed_out": stopped is not None, "report": rep,
            "stderr_tail": stderr[-3000:]}


# ---- job dirs ------------------------------------------------------------------------------------------
def read_manifest(job: Path) -> dict | None:
    """JOBDIR/job.json, or None while it is not written yet (or being replaced)."""
    try:
        return json.loads((job / "job.json").read_text())
    except (OSError, ValueError):
        return None


def split_times(manifest: dict, wall: float) -> dict:
    """The job's `seconds` {model, read, write, total}: other = total - model - read - write, setup = wall -
    total (start, imports, job creation, model load, exit), each part as a % of total, and block rates."""
    secs = manifest.get("seconds") or {}
    model, read, write = (float(secs.get(k, 0.0)) for k in ("model", "read", "write"))
    total = float(secs.get("total", 0.0))
    other = total - model - read - write
    pct = (lambda v: 100.0 * v / total if total > 0 else float("nan"))  # noqa: E731
    blocks = int(manifest.get("model_blocks_done", 0))
    return {"model_s": model, "read_s": read, "write_s": write, "other_s": other, "total_s": total,
            "model_pct": pct(model), "read_pct": pct(read), "write_pct": pct(write), "other_pct": pct(other),
            "setup_s": wall - total, "model_blocks_done": blocks,
            "ms_per_block": 1000 * model / blocks if blocks else float("nan"),
            "blocks_per_s_model": blocks / model if model > 0 else float("nan"),
            "blocks_per_s_wall": blocks / wall if wall > 0 else float("nan"),
            "extra_seconds": {k: v for k, v in secs.items() if k not in ("model", "read", "write", "total")}}


def tree_bytes(path: Path, allocated: bool = False) -> int:
    """Bytes of the files under path: their sizes, or with `allocated` their disk blocks (st_blocks)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            total += st.st_blocks * 512 if allocated else st.st_size
    return total
