"""Benchmark `streamsr.io.export.export_array`: wall time and peak RSS per output format.

A synthetic job output array is written once (zarr v3, (S, S, C) uint8, one 128 x 128 block per
chunk, zarr's default zstd, like a job's `output` array): smooth gradients plus a periodic noise tile,
so that it compresses like a photograph rather than like noise or like a flat colour. Then each
format is exported by a fresh child process

    python -c CHILD SRC.zarr S FORMAT OUT [options]

which reports its own wall time for the export call and its peak RSS (VmHWM from /proc/self/status,
read after the export returned; os.wait4's ru_maxrss is not used: a forked child starts with the
parent's high-water mark, which here includes the source writing). Output
sizes are measured on disk, then the outputs are deleted (--keep keeps them).

Free disk is checked before the source and before each format against a generous estimate (raw
pixels x 1.1 for the source/PNG/TIFF/zarr, x 0.5 for DZI, plus TIFF's temporary sub-levels); a
format that does not fit is skipped with a note.

Examples (from the repository root):
    .venv/bin/python tools/bench_export.py --size 8192
    .venv/bin/python tools/bench_export.py --size 32768 --formats tiff,zarr,dzi --workdir /big/disk
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 128
FORMATS = ("png", "tiff", "zarr", "dzi")
SUFFIX = {"png": ".png", "tiff": ".tif", "zarr": ".zarr", "dzi": ".dzi"}

CHILD = r"""
import json, sys, time
import zarr
from streamsr.io.export import export_array
src, size, fmt, out, opts = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], json.loads(sys.argv[6])
arr = zarr.open_array(src, mode="r")
start = time.perf_counter()
export_array(arr, (size, size), out, fmt=fmt, **opts)
seconds = time.perf_counter() - start
status = open("/proc/self/status").read()
hwm = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({"export_s": seconds, "hwm": hwm}))
"""


def synthetic_band(y0: int, rows: int, width: int, channels: int, noise: np.ndarray) -> np.ndarray:
    """Rows y0..y0+rows of the test pattern: integer gradients and a soft checker, plus a periodic
    noise tile (cheap to make: no per-pixel transcendental functions)."""
    y = np.arange(y0, y0 + rows, dtype=np.int32)[:, None]
    x = np.arange(width, dtype=np.int32)[None, :]
    planes = [(x // 7 + y // 5) % 256, (x // 3) % 256 ^ (y // 11) % 256, ((x // 64 + y // 64) % 2) * 120 + 60,
              255 - (x % 256) // 2]
    band = np.empty((rows, width, channels), np.int16)
    for c in range(channels):
        band[:, :, c] = planes[c]
    n = noise.shape[0]
    reps = (-(-rows // n) + 1, -(-width // n) + 1, 1)
    off = y0 % n
    band += np.tile(noise[:, :, :channels], reps)[off: off + rows, :width]
    return np.clip(band, 0, 255).astype(np.uint8)


def make_source(path: Path, size: int, channels: int) -> float:
    import zarr

    start = time.perf_counter()
    padded = -(-size // BLOCK) * BLOCK
    arr = zarr.create_array(store=os.fspath(path), shape=(padded, padded, channels),
                            chunks=(BLOCK, BLOCK, channels), dtype="uint8", fill_value=0)
    noise = np.random.default_rng(0).normal(0, 6, (512, 512, 4)).astype(np.int16)
    for y0 in range(0, padded, BLOCK):
        arr[y0: y0 + BLOCK] = synthetic_band(y0, BLOCK, padded, channels, noise)
    return time.perf_counter() - start


def disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def run_child(src: Path, size: int, fmt: str, out: Path, opts: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(src), str(size), fmt, str(out),
                             json.dumps(opts)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            return {"error": f"timed out after {timeout:.0f} s"}
        time.sleep(0.05)
    wall = time.perf_counter() - start
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": (stderr.strip().splitlines() or ["exit " + str(status)])[-1]}
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(wall_s=wall)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32768, help="side of the square image (default 32768 = 1.07 GP)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 2, 3, 4))
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma list of png,tiff,zarr,dzi")
    parser.add_argument("--tiff-compression", default="auto", help="auto, zstd, zlib, jpeg, none")
    parser.add_argument("--dzi-workers", type=int, default=1, help="DZI tile-encoding threads (default 1)")
    parser.add_argument("--workdir", help="where to put the source and outputs (default: a temp dir in /tmp)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per format")
    parser.add_argument("--keep", action="store_true", help="keep the source and the outputs")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats: {', '.join(sorted(unknown))}")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="streamsr-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    size, raw = args.size, args.size * args.size * args.channels
    print(f"# {size}x{size}x{args.channels} uint8 = {size * size / 1e9:.3f} GP, {raw / 2**20:.0f} MiB raw; "
          f"work dir {work}; free {free_bytes(work) / 2**30:.1f} GiB", flush=True)
    src = work / f"src-{size}.zarr"
    try:
        if not src.exists():
            if free_bytes(work) < raw * 1.1:
                print(f"# not enough free disk for the source ({raw * 1.1 / 2**30:.1f} GiB needed)")
                return 1
            seconds = make_source(src, size, args.channels)
            print(f"# source written in {seconds:.1f} s, {disk_size(src) / 2**20:.0f} MiB on disk", flush=True)
        rows = []
        for fmt in formats:
            out = work / f"out-{size}{SUFFIX[fmt]}"
            need = raw * {"png": 1.1, "tiff": 1.5, "zarr": 1.5, "dzi": 0.5}[fmt]
            if free_bytes(work) < need:
                rows.append((fmt, None, f"skipped: needs ~{need / 2**30:.1f} GiB free disk"))
                print(f"{fmt}: {rows[-1][2]}", flush=True)
                continue
            opts = {"compression": args.tiff_compression} if fmt == "tiff" else {}
            if fmt == "dzi":
                opts["workers"] = args.dzi_workers
            result = run_child(src, size, fmt, out, opts, args.timeout)
            if "error" in result:
                rows.append((fmt, None, result["error"]))
            else:
                files = out.with_name(out.stem + "_files") if fmt == "dzi" else None
                result["bytes"] = disk_size(out) + (disk_size(files) if files else 0)
                rows.append((fmt, result, ""))
            r = rows[-1]
            print(f"{fmt}: " + (json.dumps(r[1]) if r[1] else r[2]), flush=True)
            if not args.keep:
                for p in (out, out.with_name(out.stem + "_files")):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        print()
        print("| format | export s | child wall s | MP/s | peak RSS MiB (VmHWM) | output MiB |")
        print("|---|---|---|---|---|---|")
        for fmt, r, note in rows:
            if r is None:
                print(f"| {fmt} | {note} | | | | |")
                continue
            print(f"| {fmt} | {r['export_s']:.1f} | {r['wall_s']:.1f} | {size * size / 1e6 / r['export_s']:.1f} | "
                  f"{r['hwm'] / 2**20:.0f} | {r['bytes'] / 2**20:.0f} |")
    finally:
        if not args.keep:
            shutil.rmtree(src, ignore_errors=True)
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
