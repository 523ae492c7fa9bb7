"""Several ranks (issue 12): torchrun-launched jobs give the same bytes as one process, survive SIGKILL of
any rank, run across two "nodes", and refuse launches that do not match the job. The launches are real
torchrun processes (gloo on loopback); each costs a few seconds of start-up, so the cases are chosen to
cover Euler and Heun, global and local anchoring, batch shapes and 2, 3 and 4 ranks without repeating."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_model_and_image
from streamsr.cli import main
from streamsr.jobs.flows import held_elsewhere, status_lines
from streamsr.jobs.ranks import RankFailed, RankGroup, RankLedger
from streamsr.jobs.store import JobDir, JobError, read_manifest
from streamsr.stream.bands import band_bound
from streamsr.stream.planner import frontier_bound
from streamsr.stream.ranks import RankPlan


def settings(steps: int, sampler: str, anchor: str, batch: str) -> list[str]:
    return ["--steps", str(steps), "--sampler", sampler, "--anchor", anchor, "--batch", batch, "-q"]


def solo(root: Path, name: str, opts: list[str]) -> bytes:
    """The one-process result of the same upscale."""
    assert main(["upscale", str(root / "in.png"), "-o", str(root / f"{name}.png"), "--model", str(root / "model"),
                 "--job", str(root / f"job-{name}"), *opts]) == 0
    return (root / f"{name}.png").read_bytes()


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSR_TEST_KILL")}
    out.update(OMP_NUM_THREADS="1", **extra)
    return out


def torchrun_cmd(nproc: int, args: list[str], *, nodes: tuple[int, int, int] | None = None) -> list[str]:
    """python -m torch.distributed.run ... -m streamsr ARGS; nodes: (node rank, node count, port)."""
    launch = ["--standalone"] if nodes is None else ["--nnodes", str(nodes[1]), "--node-rank", str(nodes[0]),
                                                     "--master-addr", "127.0.0.1", "--master-port", str(nodes[2])]
    return [sys.executable, "-m", "torch.distributed.run", *launch, "--nproc-per-node", str(nproc), "--monitor-interval",
            "0.2", "-m", "streamsr", *args]


def torchrun(nproc: int, args: list[str], *, timeout: float = 400, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(nproc, args), capture_output=True, text=True, timeout=timeout, env=env(**extra))


def upscale_args(root: Path, name: str, opts: list[str], *, job: str | None = None) -> list[str]:
    return ["upscale", str(root / "in.png"), "-o", str(root / f"{name}.png"), "--model", str(root / "model"),
            "--job", str(root / (job or f"job-{name}")), *opts]


def streamsr_errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("streamsr: error:")]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tiny_model_and_image(tmp_path_factory.mktemp("ranks"), height=48, width=80, seed=3)


@pytest.mark.parametrize("world, steps, sampler, anchor, batch, bands, frontier", [
    (2, 4, "heun", "global", "2x2", 1, "device"),  # a sweep pipeline: 2 sweeps in flight
    (3, 6, "euler", "local", "1x2", 1, "device"),
    (3, 1, "euler", "global", "1x2", 3, "device"),  # one sweep: 3 column bands as a wavefront
    (4, 2, "heun", "local", "2x1", 2, "disk"),  # 2 sweeps in flight x 2 bands (Heun: a predict and a correct each)
])
def test_ranks_give_the_bytes_of_one_process(root, world, steps, sampler, anchor, batch, bands, frontier):
    opts = [*settings(steps, sampler, anchor, batch), "--frontier", frontier]
    name = f"w{world}-{sampler}-{anchor}-{batch}"
    expected = solo(root, f"solo-{name}", opts)
    done = torchrun(world, upscale_args(root, name, opts))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / f"{name}.png").read_bytes() == expected
    job = JobDir(root / f"job-{name}")
    m = read_manifest(job)
    assert (str(m.status), m.cursor, m.ranks) == ("done", m.total_tasks, world)
    assert m.fuse_steps <= -(-steps // world)  # sweeps of at most ceil(steps / ranks) steps: as many ranks busy as can be
    assert m.groups >= min(world, -(-steps // m.fuse_steps))
    assert m.model_blocks_done == m.tasks().model_blocks()
    ledger = RankLedger(job, world)
    assert [ledger.read(r) for r in range(world)] == [m.total_tasks] * world
    assert m.bands == bands  # more ranks than sweeps: the split gives the others bands (stream/ranks.rank_split)
    if bands > 1:  # each rank's frontier held its band's share of a row, not the row
        tasks = m.tasks()
        whole = frontier_bound(tasks.batches.grid, tasks.batches.shape)
        for r in range(world):
            peak = json.loads(job.rank_file(r).read_text())["frontier_peak_blocks"]
            assert 0 < peak <= band_bound(tasks.batches, RankPlan(tasks, r, world, bands).band) < whole


def random_kill(job: JobDir, rng: random.Random) -> tuple[str, int]:
    """A random rank of the job with model tasks left, one of them and a random point in it: the
    STREAMSR_TEST_KILL spec and the rank."""
    m = read_manifest(job)
    tasks = m.tasks()
    plans = [RankPlan(tasks, r, m.ranks, m.bands) for r in range(m.ranks)]
    left = {r: [i for i in plans[r].own(RankLedger(job, m.ranks).start(plans[r], 0)) if tasks[i].is_model]
            for r in range(m.ranks)}
    rank = rng.choice([r for r in left if left[r]])
    return f"{rng.choice(left[rank])}:{rng.choice(['mid-write', 'queued', 'before-commit', 'mid-commit'])}", rank


def test_random_rank_kills_resume_to_the_same_bytes(root):
    """Chained SIGKILLs of a random rank at random task points, and one at a random moment, then the same
    command again: identical output. While the group runs, rank 0's lock covers the job. A launch with
    another world size is refused on the way."""
    opts = settings(4, "heun", "global", "1x2")
    expected = solo(root, "solo-kills", opts)
    args = upscale_args(root, "kills", opts)
    job = JobDir(root / "job-kills")
    rng = random.Random(12)
    for attempt in range(3):
        if attempt == 0:  # the first launch creates the job: kill it early, in rank 0's first sweep
            spec, rank = "2:queued", 0
        else:
            spec, rank = random_kill(job, rng)
        killed = torchrun(2, args, STREAMSR_TEST_KILL=spec, STREAMSR_TEST_KILL_RANK=str(rank))
        assert killed.returncode != 0, f"launch {attempt} was not killed at {spec} on rank {rank}"
        assert "Traceback" not in "\n".join(line for line in killed.stderr.splitlines() if "streamsr" in line)
    # the half-done job resumes only on as many ranks: 3 ranks, or one process, are refused, nothing changed
    three = torchrun(3, ["resume", str(job.root), "-q"])
    assert three.returncode != 0
    assert any("runs on 2 ranks, not 3" in line for line in streamsr_errors(three.stderr)), three.stderr[-2000:]
    assert main(["resume", str(job.root), "-q"]) == 2
    assert str(read_manifest(job).status) != "done"
    ranks_line = [line for line in status_lines(job.root) if line.startswith("ranks:")]
    cursors = ", ".join(str(RankLedger(job, 2).read(r)) for r in range(2))
    assert len(ranks_line) == 1 and f"rank cursors {cursors}" in ranks_line[0] and "--nproc-per-node 2" in ranks_line[0]

    def pids() -> list[int | None]:
        try:
            return [json.loads(job.rank_file(r).read_text())["pid"] for r in range(2)]
        except (OSError, ValueError):
            return [None, None]

    before = pids()
    proc = subprocess.Popen(torchrun_cmd(2, args), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while any(a == b or a is None for a, b in zip(pids(), before)) and time.monotonic() < deadline:
            time.sleep(0.05)  # until both ranks of this launch have written their files
        assert held_elsewhere(job)  # rank 0 holds the lock for the whole group
        time.sleep(rng.uniform(0.0, 1.5))
        victim = json.loads(job.rank_file(rng.randrange(2)).read_text())["pid"]
        os.kill(victim, signal.SIGKILL)
    finally:
        proc.communicate(timeout=200)
    done = torchrun(2, args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "kills.png").read_bytes() == expected


def test_band_rank_kills_resume_to_the_same_bytes(root):
    """Column bands: chained SIGKILLs of a random band's rank at random task points of its sweep, then the
    same command: every band replays its part of the sweep, the K/V hand-offs flow again, same bytes."""
    opts = settings(1, "euler", "global", "1x1")  # one sweep on 2 ranks: 2 bands of 5 batch columns
    expected = solo(root, "solo-band-kills", opts)
    args = upscale_args(root, "band-kills", opts)
    job = JobDir(root / "job-band-kills")
    rng = random.Random(5)
    for attempt in range(2):
        if attempt == 0:  # the launch that creates the job: rank 1 (band 1) in its second row
            spec, rank = "17:queued", 1
        else:
            spec, rank = random_kill(job, rng)
        killed = torchrun(2, args, STREAMSR_TEST_KILL=spec, STREAMSR_TEST_KILL_RANK=str(rank),
                          STREAMSR_SNAPSHOT_SECONDS="always")  # frontier snapshots after every band row
        assert killed.returncode != 0, f"launch {attempt} was not killed at {spec} on rank {rank}"
        assert not [ln for ln in killed.stderr.splitlines() if ln.startswith("[rank") and "Traceback" in ln], \
            killed.stderr[-3000:]  # a survivor stops with one line, not a traceback
        assert read_manifest(job).bands == 2
    assert any((job.frontier / "rank-1" / "snapshots").glob("snap-*.safetensors"))  # what a relaunch restarts from
    done = torchrun(2, args, STREAMSR_SNAPSHOT_SECONDS="always")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "band-kills.png").read_bytes() == expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args0: list[str], args1: list[str]) -> tuple[subprocess.CompletedProcess, ...]:
    port = free_port()
    procs = [subprocess.Popen(torchrun_cmd(1, args, nodes=(node, 2, port)), env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for node, args in enumerate((args0, args1))]
    outs = [p.communicate(timeout=400) for p in procs]
    return tuple(subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs))


def test_two_nodes_on_loopback_give_the_bytes_of_one_process(root):
    opts = settings(4, "euler", "global", "2x2")
    expected = solo(root, "solo-nodes", opts)
    args = upscale_args(root, "nodes", opts)
    for node in two_nodes(args, args):
        assert node.returncode == 0, node.stderr[-3000:]
    assert (root / "nodes.png").read_bytes() == expected


def test_nodes_with_different_job_dirs_are_refused(root):
    opts = settings(2, "euler", "local", "2x2")
    results = two_nodes(upscale_args(root, "mixed", opts, job="job-mixed-a"),
                        upscale_args(root, "mixed", opts, job="job-mixed-b"))
    for node in results:
        assert node.returncode != 0
    errors = streamsr_errors(results[0].stderr + results[1].stderr)
    assert any("different job dirs" in line for line in errors), errors


# ---- liveness, without processes: RankGroup's waits on a key-value store ------------------------------
class FakeStore:
    """The few torch.distributed.Store calls RankGroup makes, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def set(self, key, value) -> None:
        self.data[key] = value.encode() if isinstance(value, str) else value

    def get(self, key) -> bytes:
        return self.data[key]

    def check(self, keys) -> bool:
        return all(k in self.data for k in keys)

    def add(self, key, n) -> int:
        value = int(self.data.get(key, b"0")) + n
        self.data[key] = str(value).encode()
        return value


class NoStop:
    signal = None


def test_a_rank_without_heartbeat_is_named_and_the_wait_stops():
    group = RankGroup(rank=1, world=2, local_rank=1, store=FakeStore(), timeout=0.2)
    start = time.monotonic()
    with pytest.raises(RankFailed, match="rank 0 stopped responding"):
        group.wait_for(((0, 5),), stop=NoStop())
    assert time.monotonic() - start < 5


def test_a_failed_rank_stops_the_waiting_ones_with_its_message():
    store = FakeStore()
    RankGroup(rank=0, world=2, local_rank=0, store=store, timeout=60).fail("chunk state1 block (2, 3) is corrupt")
    with pytest.raises(RankFailed, match=r"rank 0: chunk state1 block \(2, 3\) is corrupt"):
        RankGroup(rank=1, world=2, local_rank=1, store=store, timeout=60).wait_for(((0, 5),), stop=NoStop())


def test_published_cursors_release_the_wait_and_a_stop_request_ends_it():
    store = FakeStore()
    group = RankGroup(rank=1, world=2, local_rank=1, store=store, timeout=60)
    RankGroup(rank=0, world=2, local_rank=0, store=store, timeout=60).publish(7)
    group.wait_for(((0, 7),), stop=NoStop())  # returns at once

    class Stopped:
        signal = signal.SIGTERM

    group.wait_for(((0, 8),), stop=Stopped())  # returns: the runner stops at its task boundary


def test_rank_files_of_another_world_size_are_refused(tmp_path):
    job = JobDir(tmp_path)
    RankLedger(job, 3).write(2, 10)
    with pytest.raises(JobError, match="more ranks"):
        RankLedger(job, 2).check()
    RankLedger(job, 3).write(1, 10)
    with pytest.raises(JobError, match="run by 3 ranks, not 4"):
        RankLedger(job, 4).read(1)
    job.rank_file(0).write_text("{not json")
    with pytest.raises(JobError, match="not a rank cursor file"):
        RankLedger(job, 3).read(0)
