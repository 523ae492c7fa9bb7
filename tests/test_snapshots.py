"""Frontier snapshots (jobs/snapshots.py): a frontier exported and restored is the same frontier; a job
killed again and again inside one sweep resumes from its newest snapshot, replays at most one batch each
time, and ends with the bytes of an uninterrupted run; a damaged snapshot falls back to a full replay."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import tiny_model_and_image
from streamsr.cli import main
from streamsr.errors import BadInput
from streamsr.jobs.snapshots import SNAPSHOT_COST_FACTOR, SnapshotDir, SnapshotPolicy
from streamsr.jobs.store import read_manifest
from streamsr.stream.frontier import Frontier
from streamsr.stream.planner import Sweep, TaskKind
from test_job import run_sub


@pytest.mark.parametrize("placement", ["device", "host", "disk"])
def test_an_exported_frontier_restores_to_the_same_entries(tmp_path, placement):
    gen = torch.Generator().manual_seed(0)
    old = Frontier(8, 2, placement, torch.device("cpu"), tmp_path / "a")
    entries = {((r, c), layer): (torch.randn(1, 4, 2, 8, generator=gen), torch.randn(1, 4, 2, 8, generator=gen))
               for r, c in ((0, 0), (0, 1), (1, 0)) for layer in range(2)}
    for (block, layer), (k, v) in entries.items():
        old.put(block, layer, k, v)
    old.drop((0, 0), 1)
    del entries[((0, 0), 1)]
    new = Frontier(8, 2, placement, torch.device("cpu"), tmp_path / "b")
    new.restore(old.export())
    assert len(new) == len(entries)
    for (block, layer), (k, v) in entries.items():
        got_k, got_v = new.get(block, layer)
        assert torch.equal(got_k, k) and torch.equal(got_v, v)
    with pytest.raises(ValueError, match="empty"):
        new.restore(old.export())


def test_the_policy_waits_for_its_interval_and_ten_times_the_last_cost(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("streamsr.jobs.snapshots.time.monotonic", lambda: clock[0])
    policy = SnapshotPolicy(every_seconds=5.0)
    policy.restart()
    clock[0] += 4.9
    assert not policy.due()
    clock[0] += 0.2
    assert policy.due()
    policy.taken(2.0)  # a 2 s snapshot: the next one after 20 s, not 5
    clock[0] += 19.0
    assert not policy.due()
    clock[0] += 1.0 + 1e-6
    assert policy.due() and SNAPSHOT_COST_FACTOR == 10
    assert not SnapshotPolicy(None).due()


def fake_clock(monkeypatch) -> list[float]:
    clock = [0.0]
    monkeypatch.setattr("streamsr.jobs.snapshots.time.monotonic", lambda: clock[0])
    return clock


def spaced(policy: SnapshotPolicy, clock: list[float], *, cost: float) -> tuple[bool, bool]:
    """A due policy takes a snapshot of `cost` s: (due just before 10x the cost passed, due just after)."""
    assert policy.due()
    policy.taken(cost)
    clock[0] += 9.5 * cost
    before = policy.due()
    clock[0] += cost
    return before, policy.due()


def test_after_a_replay_snapshots_come_as_often_as_their_cost_allows(monkeypatch):
    """A resume that had to replay snapshots at the next commit point, then every 10x a snapshot's cost
    (not every 60 s): a job killed again soon loses no more than a row of batches."""
    clock = fake_clock(monkeypatch)
    policy = SnapshotPolicy(every_seconds=60.0)
    policy.restart(replayed=3.0)
    assert spaced(policy, clock, cost=0.2) == (False, True)  # due at once, then 10x the cost apart
    policy.restart()  # the next sweep: the configured interval again
    clock[0] += 10.0
    assert not policy.due()


@pytest.mark.parametrize("text, every, always", [("0", 0.0, False), ("90", 90.0, False), ("off", None, False),
                                                 ("always", 0.0, True)])
def test_the_policy_reads_its_env(monkeypatch, text, every, always):
    monkeypatch.setenv("STREAMSR_SNAPSHOT_SECONDS", text)
    policy = SnapshotPolicy.from_env()
    assert (policy.every_seconds, policy.always) == (every, always)


def test_by_default_only_the_cost_spaces_snapshots(monkeypatch):
    monkeypatch.delenv("STREAMSR_SNAPSHOT_SECONDS", raising=False)
    clock = fake_clock(monkeypatch)
    policy = SnapshotPolicy.from_env()
    policy.restart()
    assert spaced(policy, clock, cost=0.01) == (False, True)


@pytest.mark.parametrize("text", ["-1", "soon", "nan"])
def test_a_bad_policy_env_is_one_clear_error(monkeypatch, text):
    monkeypatch.setenv("STREAMSR_SNAPSHOT_SECONDS", text)
    with pytest.raises(BadInput, match="STREAMSR_SNAPSHOT_SECONDS"):
        SnapshotPolicy.from_env()


def test_the_newest_snapshot_at_or_before_the_cursor_is_used(tmp_path):
    snaps = SnapshotDir(tmp_path / "snapshots")
    sweep = Sweep(TaskKind.STEPS, 0, 2, 3)
    snaps.save(sweep, 3, {"x": torch.zeros(1)})
    snaps.save(sweep, 5, {"x": torch.zeros(1)})
    snaps.save(sweep, 7, {"x": torch.ones(1)})
    snaps.prune(6)  # committed up to 6: 5 is what a resume would use, 7 was taken ahead of the commit
    assert [p.name for p in sorted(snaps.root.iterdir())] == ["snap-steps-0-5.safetensors", "snap-steps-0-7.safetensors"]
    assert snaps.latest(sweep, first=0, cursor=6)[0] == 5
    snaps.prune(7)
    assert [p.name for p in sorted(snaps.root.iterdir())] == ["snap-steps-0-7.safetensors"]
    assert snaps.latest(sweep, first=0, cursor=6) is None  # written ahead of the cursor: not usable
    at, tensors = snaps.latest(sweep, first=0, cursor=9)
    assert at == 7 and torch.equal(tensors["x"], torch.ones(1))
    assert snaps.latest(sweep, first=7, cursor=9) is None  # taken at the sweep's first task: nothing to gain
    assert snaps.latest(Sweep(TaskKind.STEPS, 2, 2, 3), first=0, cursor=9) is None
    snaps.clear(sweep)
    assert not any(snaps.root.iterdir())


def test_band_snapshots_keep_a_few_check_each_and_go_when_the_next_sweep_starts(tmp_path):
    """Column bands (jobs/run._refill_bands): a rank keeps its newest few snapshots of a sweep, lists the
    intact ones for the stage's agreement, loads the agreed one, and drops a sweep's at the next one."""
    snaps = SnapshotDir(tmp_path / "snapshots")
    sweep, later = Sweep(TaskKind.STEPS, 0, 1, 1), Sweep(TaskKind.STEPS, 2, 1, 1)
    for at in (5, 15, 25, 35):
        snaps.save(sweep, at, {"x": torch.full((2,), float(at))})
    snaps.prune(36, keep=3)
    assert snaps.intact(sweep) == [15, 25, 35]
    path = snaps.root / "snap-steps-0-25.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1  # one flipped bit in the data: not intact, not offered to the other bands
    path.write_bytes(bytes(raw))
    assert snaps.intact(sweep) == [15, 35]
    assert snaps.load(sweep, 25) is None and torch.equal(snaps.load(sweep, 15)["x"], torch.full((2,), 15.0))
    snaps.save(later, 3, {"x": torch.zeros(1)})
    snaps.clear(but=later)
    assert snaps.intact(sweep) == [] and snaps.intact(later) == [3]


def replayed(stderr: str) -> int:
    found = re.findall(r"replaying (\d+) batch", stderr)
    assert found, stderr
    return int(found[-1])


def test_repeated_kills_inside_a_sweep_replay_one_batch_each_and_end_identical(tmp_path):
    root = tiny_model_and_image(tmp_path, height=24, width=40, seed=5)
    opts = ["--model", root / "model", "--steps", "2", "--sampler", "heun", "--batch", "1x1", "-q"]
    assert main(["upscale", str(root / "in.png"), "-o", str(root / "ref.png"), "--job", str(root / "ref"),
                 *map(str, opts)]) == 0
    job, out = root / "job", root / "out.png"
    env = {"STREAMSR_SNAPSHOT_SECONDS": "always", "STREAMSR_COMMIT_EVERY": "1"}
    first = run_sub("upscale", root / "in.png", "-o", out, "--job", job, *opts, STREAMSR_TEST_KILL="6:before-commit", **env)
    assert first.returncode != 0
    tasks = read_manifest(job).tasks()
    assert tasks[6].kind is TaskKind.STEPS and tasks[11].sweep == tasks[6].sweep  # all kills inside one sweep
    cursors = [read_manifest(job).cursor]  # each kill: just before the commit past its task
    for kill in (11,):  # commits land at shard ends (5 batches here): a kill in the next shard
        res = run_sub("resume", job, STREAMSR_TEST_KILL=f"{kill}:before-commit", **env)
        assert res.returncode != 0
        assert "from a snapshot" in res.stderr and replayed(res.stderr) <= 1, res.stderr
        cursors.append(read_manifest(job).cursor)
    assert cursors == sorted(set(cursors)), cursors  # every resume made progress
    # a damaged snapshot (K/V are derived data, used only when their hash matches): the resume falls back
    # to replaying the whole sweep so far, same bytes
    for snap in (job / "frontier" / "snapshots").iterdir():  # one bit of K/V flipped: the hash refuses it
        data = bytearray(snap.read_bytes())
        data[-5] ^= 0x01
        snap.write_bytes(bytes(data))
    done = run_sub("resume", job, **env)
    assert done.returncode == 0, done.stderr
    assert "from a snapshot" not in done.stderr and replayed(done.stderr) == tasks[cursors[-1]].batch.index
    assert out.read_bytes() == (root / "ref.png").read_bytes()
    assert not any((job / "frontier" / "snapshots").iterdir())  # the sweep's end cleared them
