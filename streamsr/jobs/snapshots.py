"""Frontier snapshots: a resume inside a denoiser sweep replays a bounded number of batches (issue 14).

A sweep's K/V frontier lives in memory only, so a resume at cursor c inside a sweep must rebuild it by
replaying the sweep's batches before c (run.py). For a long sweep that is up to a whole sweep of work,
again after every crash: a job killed more often than that never advances. A snapshot is the frontier
after the sweep's first s tasks (every frontier of a steps sweep), saved with safetensors; a resume loads
the newest snapshot of its sweep at or before its cursor and replays only batches s .. c - 1. The K/V are
a pure function of the committed inputs, so a snapshot is valid for any later cursor of its sweep whether
or not its own tasks were committed when it was written; one written ahead of the cursor is ignored.

When: at the end of a row of block batches (a shard boundary, so a commit can land there: it is committed
with it), once `SnapshotPolicy` says so: after `every_seconds` of the sweep's compute since the last one
(after a resume that had to replay: at every row end) and never sooner than 10x the time the last one
took, so snapshots cost at most ~10% of the run however large the frontier is (STREAMSR_SNAPSHOT_SECONDS:
a minimum interval, 0 by default; "off": never; "always": every row end whatever it costs, the tests').
The replay a crash costs is then bounded by that interval, not by the sweep's length.
Files: SPILL/snapshots/snap-SWEEP-CURSOR.safetensors, written to a temp name and renamed; an older one of
the sweep is deleted once a commit has reached a newer one (`prune`), and all of a sweep's at its end.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import BadInput
from ..stream.planner import Sweep

SNAPSHOT_COST_FACTOR = 10  # compute seconds between snapshots, at least this many times one snapshot's cost


@dataclass
class SnapshotPolicy:
    """Whether to snapshot at this commit point: `every_seconds` (None: never) of compute since the last
    snapshot of the sweep have passed, and SNAPSHOT_COST_FACTOR times the last snapshot's own cost
    (unless `always`). The default, 0 s, is bounded by the cost alone: cheap frontiers are snapshotted at
    every row of batches, a huge one as often as 10% of the run allows."""

    every_seconds: float | None = 0.0
    always: bool = False  # at every commit point whatever it costs (the tests)
    _since: float = field(default_factory=time.monotonic)
    _cost: float = 0.0
    _interval: float | None = None  # this sweep's interval (restart): every_seconds, or 0 after a replay

    @classmethod
    def from_env(cls) -> "SnapshotPolicy":
        """STREAMSR_SNAPSHOT_SECONDS: unset (cost-bounded), a minimum interval in seconds, `off`, or
        `always` (every row end, whatever the cost)."""
        text = os.environ.get("STREAMSR_SNAPSHOT_SECONDS")
        if text is None:
            return cls()
        word = text.strip().lower()
        if word in ("off", "always"):
            return cls(None) if word == "off" else cls(0.0, always=True)
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise BadInput(f"STREAMSR_SNAPSHOT_SECONDS={text!r} is not a number of seconds >= 0, off or always")
        return cls(value)

    def restart(self, *, replayed: float = 0.0) -> None:
        """A new sweep, or a resume that replayed `replayed` seconds of the sweep, starts the interval. After
        a replay the rest of the sweep snapshots at every commit point that the cost allows, whatever the
        configured interval: a job killed again and again replays at most about a row of batches each
        time, so every resume advances."""
        self._since = time.monotonic()
        self._interval = 0.0 if replayed > 0 and self.every_seconds is not None else self.every_seconds

    def due(self) -> bool:
        if self.every_seconds is None:
            return False
        if self.always:
            return True
        interval = self.every_seconds if self._interval is None else self._interval
        return time.monotonic() - self._since >= max(interval, SNAPSHOT_COST_FACTOR * self._cost)

    def taken(self, cost: float) -> None:
        self._cost = cost
        self._since = time.monotonic()


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes, dtypes and bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
    return digest.hexdigest()


def sweep_name(sweep: Sweep) -> str:
    return f"{sweep.kind}-{sweep.step}"


@dataclass(frozen=True)
class SnapshotDir:
    """The snapshots of one process's sweeps (one dir per rank: its spill dir's snapshots/)."""

    root: Path

    def _path(self, sweep: Sweep, cursor: int) -> Path:
        return self.root / f"snap-{sweep_name(sweep)}-{cursor}.safetensors"

    def _of(self, sweep: Sweep) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        prefix = f"snap-{sweep_name(sweep)}-"
        found = []
        for path in self.root.glob(prefix + "*.safetensors"):
            text = path.name[len(prefix):-len(".safetensors")]
            if text.isdigit():
                found.append((int(text), path))
        return sorted(found)

    def save(self, sweep: Sweep, cursor: int, tensors: dict[str, torch.Tensor]) -> None:
        """Write the snapshot of `sweep` valid from task `cursor` on, then delete the sweep's older ones."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(sweep, cursor)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp),
                  metadata={"sweep": sweep_name(sweep), "cursor": str(cursor), "sha256": content_hash(tensors)})
        os.replace(tmp, path)

    def prune(self, cursor: int, *, keep: int = 1) -> None:
        """After a commit at `cursor`: keep, per sweep, the newest `keep` snapshots a resume from there can
        use and any newer ones (taken ahead of the commit); delete the older ones. (Column bands keep a few:
        a relaunch restarts every band of a stage from a row that all of them have a snapshot of.)"""
        if not self.root.is_dir():
            return
        sweeps: dict[str, list[tuple[int, Path]]] = {}
        for path in self.root.glob("snap-*.safetensors"):
            name, _, at = path.name[:-len(".safetensors")].rpartition("-")
            if at.isdigit():
                sweeps.setdefault(name, []).append((int(at), path))
        for found in sweeps.values():
            usable = sorted(at for at, _ in found if at <= cursor)
            for at, path in found:
                if len(usable) >= keep and at < usable[-keep]:
                    path.unlink(missing_ok=True)

    def latest(self, sweep: Sweep, *, first: int, cursor: int) -> tuple[int, dict[str, torch.Tensor]] | None:
        """The newest readable snapshot of `sweep` taken at a task in first+1 .. cursor, with its task."""
        for at, path in reversed(self._of(sweep)):
            if first < at <= cursor:
                tensors = self._read(path)
                if tensors is not None:
                    return at, tensors
        return None

    def intact(self, sweep: Sweep) -> list[int]:
        """The tasks of the readable snapshots of `sweep` (each read and checked)."""
        return [at for at, path in self._of(sweep) if self._read(path) is not None]

    def load(self, sweep: Sweep, at: int) -> dict[str, torch.Tensor] | None:
        """The snapshot of `sweep` taken at task `at`, if it is there and intact."""
        return next((self._read(path) for found, path in self._of(sweep) if found == at), None)

    @staticmethod
    def _read(path: Path) -> dict[str, torch.Tensor] | None:
        try:
            with safe_open(str(path), "pt") as fh:
                expected = (fh.metadata() or {}).get("sha256")
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError):  # torn or damaged: an older one, or a full replay
            return None
        return tensors if expected == content_hash(tensors) else None  # K/V are derived: used only when intact

    def clear(self, sweep: Sweep | None = None, *, but: Sweep | None = None) -> None:
        """Delete the snapshots of `sweep` (None: all, and temp files of killed writes; or all `but` one's)."""
        if not self.root.is_dir():
            return
        for path in self.root.iterdir():
            ours = path.name.startswith(f"snap-{sweep_name(sweep)}-") if sweep is not None else True
            spared = but is not None and path.name.startswith(f"snap-{sweep_name(but)}-")
            if ours and not spared:
                path.unlink(missing_ok=True)
