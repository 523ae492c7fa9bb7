"""One job run by several processes (ranks) with torch.distributed (issue 12): the group and its ledger.

`torchrun --nproc-per-node N -m streamsr upscale ...` starts N ranks; each runs the steps sweeps that
stream/ranks.py assigns it (a sweep pipeline: sweep s on rank s % N, one batch behind sweep s - 1) on its
own device, with its own frontier and memory budget. Block states go from rank to rank through the job's
store (each rank reads the previous sweep's output from the ring of state arrays), and a rank learns that
a batch it needs is on disk from the previous rank's cursor, published in torch.distributed's key-value
store (the rendezvous store torchrun already runs). Why the store and not point-to-point sends: the state
must reach the disk anyway for resume, and reading it back is one cached shard read per batch
(tools/bench_ranks.py notes); a send would add a copy and still leave the downstream rank waiting for the
upstream's durable commit, or a crash could leave the downstream ahead of what is on disk.

Durability: every rank commits its own cursor (ranks/rank-K.json, atomic) after its writes are on disk,
then publishes it; rank 0 alone writes the manifest (status, and as its cursor the first task that is not
done, the smallest rank cursor). SIGKILL of any rank at any moment loses at most uncommitted tasks, which
are idempotent: relaunching the same command resumes every rank from its own cursor.

Liveness: each rank beats a heartbeat counter in the key-value store; a rank waiting on another stops
with a one-line error naming it when its heartbeat stalls (STREAMSR_RANK_TIMEOUT seconds), or when a rank
reports a failure; torchrun itself stops the others (SIGTERM) when a rank dies.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta

import torch

from ..errors import BadInput
from ..stream.ranks import RankPlan
from .store import JobDir, JobError, write_json_atomic

RANK_FORMAT = 1
POLL_SECONDS = 0.002  # how often a waiting rank reads the cursor it waits for
BEAT_SECONDS = 1.0


def rank_timeout() -> float:
    """Seconds without a heartbeat from a rank before the ranks waiting on it give up."""
    text = os.environ.get("STREAMSR_RANK_TIMEOUT", "120")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise BadInput(f"STREAMSR_RANK_TIMEOUT={text!r} is not a number of seconds > 0")
    return value


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        raise BadInput(f"WORLD_SIZE is set but {name}={os.environ.get(name)!r} is not a whole number: launch "
                       "several ranks with torchrun") from None


class RankFailed(JobError):
    """Another rank of the group failed or stopped responding; this rank stopped cleanly."""


@dataclass
class RankGroup:
    """This process's place in a group of ranks, and the group's key-value store (cursors, heartbeats)."""

    rank: int
    world: int
    local_rank: int
    store: object  # torch.distributed.Store (a PrefixStore over the rendezvous TCPStore)
    timeout: float
    _beat: threading.Event = field(default_factory=threading.Event)
    _beating: threading.Thread | None = None

    @classmethod
    def from_env(cls) -> "RankGroup | None":
        """The group torchrun launched this process in; None for a single process (no WORLD_SIZE > 1)."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return None
        import torch.distributed as dist

        rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
        host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), _env_int("MASTER_PORT")
        timeout = rank_timeout()
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"  # torchrun's agent hosts it
        try:
            tcp = dist.TCPStore(host, port, world, is_master=rank == 0 and not agent,
                                timeout=timedelta(seconds=max(timeout, 300)), wait_for_workers=False)
        except (RuntimeError, OSError) as exc:
            raise JobError(f"rank {rank}: cannot reach the group's store at {host}:{port} ({exc})") from None
        store = dist.PrefixStore("streamsr/", tcp)
        # gloo: the ranks exchange only small host objects (agreement at start); block states go through
        # the job's store and cursors through the key-value store, on CUDA jobs too (module docstring)
        dist.init_process_group("gloo", store=dist.PrefixStore("pg/", tcp), rank=rank, world_size=world,
                                timeout=timedelta(seconds=max(timeout, 300)))
        group = cls(rank, world, local_rank, store, timeout)
        group._beating = threading.Thread(target=group._heartbeat, name="streamsr-heartbeat", daemon=True)
        group._beating.start()
        return group

    # ---- liveness --------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        while not self._beat.wait(BEAT_SECONDS):
            try:
                self.store.add(f"beat/{self.rank}", 1)
            except Exception:  # the store is gone: the waits notice and say so
                return

    def fail(self, message: str) -> None:
        """Tell the other ranks that this one stopped on an error (they stop too, naming it)."""
        try:
            self.store.set("failed", f"rank {self.rank}: {message}")
        except Exception:  # the store is gone too: torchrun stops the others
            pass

    def _check_failed(self) -> None:
        if self.store.check(["failed"]):
            raise RankFailed(f"stopping: {self.store.get('failed').decode()}")

    def close(self) -> None:
        import torch.distributed as dist

        self._beat.set()
        if self._beating is not None:  # not inside a store call when the process exits (C++ would abort)
            self._beating.join(timeout=BEAT_SECONDS + 5)
        if dist.is_initialized():
            dist.destroy_process_group()

    # ---- agreement -------------------------------------------------------------------------------
    def gather(self, what: str, value) -> list:
        """Every rank's `value` (JSON-able), in rank order."""
        import torch.distributed as dist

        values: list = [None] * self.world
        try:
            dist.all_gather_object(values, value)
        except (RuntimeError, OSError) as exc:  # a rank died while the group started
            raise RankFailed(f"lost contact with the other ranks while comparing {what} ({exc}); relaunch the "
                             "same command") from None
        return values

    def agree(self, what: str, value: str) -> None:
        """Every rank must hold the same `value` (a job dir, a model hash, a world size): JobError otherwise."""
        values = self.gather(what, value)
        if len(set(values)) > 1:
            listed = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise JobError(f"the ranks were launched with different {what} ({listed}); launch them alike")

    def on_rank0(self, what: str, action, *, stop=None):
        """Run `action()` on rank 0 while the others wait (with heartbeats, not a collective's fixed
        timeout: creating a gigapixel job takes a while); its JSON-able result is every rank's, and its
        error stops every rank with the same message."""
        key = f"done/{what}"
        if self.rank == 0:
            try:
                result = action()
            except Exception as exc:
                self.store.set(key, json.dumps({"error": str(exc)}))
                raise
            self.store.set(key, json.dumps({"result": result}))
            return result
        self._wait(lambda: self.store.check([key]), waiting_on=0, stop=stop)
        reply = json.loads(self.store.get(key))
        if "error" in reply:
            raise RankFailed(f"rank 0 could not {what}: {reply['error']}")
        return reply["result"]

    # ---- cursors ---------------------------------------------------------------------------------
    def publish(self, cursor: int) -> None:
        self.store.set(f"cursor/{self.rank}", str(cursor))

    def cursor(self, rank: int) -> int:
        """The last cursor `rank` published (-1 before its first)."""
        key = f"cursor/{rank}"
        return int(self.store.get(key)) if self.store.check([key]) else -1

    def reached(self, needs: tuple[tuple[int, int], ...]) -> bool:
        return all(self.cursor(rank) >= cursor for rank, cursor in needs)

    def wait_for(self, needs: tuple[tuple[int, int], ...], *, stop) -> None:
        """Block until every (rank, cursor) in `needs` is published (RankPlan.waits_for)."""
        for rank, cursor in needs:
            self._wait(lambda: self.cursor(rank) >= cursor, waiting_on=rank, stop=stop)

    def _wait(self, ready, *, waiting_on: int, stop) -> None:
        beat, changed = None, time.monotonic()
        try:
            while not ready():
                self._check_failed()
                if stop is not None and stop.signal is not None:
                    return  # the runner stops at its next task boundary
                now = time.monotonic()
                key = f"beat/{waiting_on}"
                value = self.store.get(key) if self.store.check([key]) else b"0"
                if value != beat:
                    beat, changed = value, now
                elif now - changed > self.timeout:
                    raise RankFailed(f"rank {waiting_on} stopped responding (no heartbeat for {self.timeout:.0f} s); "
                                     "relaunch the same command to resume")
                time.sleep(POLL_SECONDS)
        except RankFailed:
            raise
        except (RuntimeError, OSError) as exc:  # the store went away with its host
            raise RankFailed(f"lost the group's key-value store ({exc}); a rank or the launcher died: relaunch "
                             "the same command to resume") from None


@dataclass(frozen=True)
class RankLedger:
    """The cursor files of a job's ranks (ranks/rank-K.json), each written atomically by its own rank."""

    job_dir: JobDir
    world: int

    def read(self, rank: int) -> int | None:
        """The committed cursor of `rank`; None before its first commit."""
        path = self.job_dir.rank_file(rank)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            cursor, world = data["cursor"], data["world"]
            if data.get("format") != RANK_FORMAT or data.get("rank") != rank or not isinstance(cursor, int) or cursor < 0:
                raise ValueError("unexpected fields")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise JobError(f"{path} is not a rank cursor file ({exc}); it was edited or damaged") from None
        if world != self.world:
            raise JobError(f"{self.job_dir.root} was run by {world} ranks, not {self.world}: relaunch it with "
                           f"{world} ranks")
        return cursor

    def write(self, rank: int, cursor: int, *, fault_tasks: range = range(0),
              frontier_peak_blocks: float | None = None) -> None:
        """Commit `rank`'s cursor (and, at the end of a run with bands, the most K/V its frontiers held)."""
        self.job_dir.ranks.mkdir(exist_ok=True)
        data = {"format": RANK_FORMAT, "rank": rank, "world": self.world, "cursor": cursor, "pid": os.getpid()}
        if frontier_peak_blocks is not None:
            data["frontier_peak_blocks"] = frontier_peak_blocks
        write_json_atomic(self.job_dir.rank_file(rank), data, fault_tasks=fault_tasks)

    def check(self) -> None:
        """Refuse cursor files of another world size (a job relaunched with other ranks)."""
        if not self.job_dir.ranks.is_dir():
            return
        for path in sorted(self.job_dir.ranks.glob("rank-*.json")):
            suffix = path.stem.removeprefix("rank-")
            if not suffix.isdigit() or int(suffix) >= self.world:
                raise JobError(f"{self.job_dir.root} was run by more ranks ({path.name}); relaunch it with as many "
                               "ranks as before")
            self.read(int(suffix))

    def start(self, plan: RankPlan, manifest_cursor: int) -> int:
        """Where `plan`'s rank resumes: its committed cursor, or (a job never run on ranks) its first task
        at or after the manifest's cursor."""
        cursor = self.read(plan.rank)
        return plan.next_own(manifest_cursor if cursor is None else max(cursor, manifest_cursor))


_GROUP: list = []  # the launched group, made once per process


def launched_group() -> RankGroup | None:
    """The group torchrun launched this process in (made on the first call, closed at exit), or None."""
    if not _GROUP:
        group = RankGroup.from_env()
        if group is not None:
            atexit.register(group.close)
        _GROUP.append(group)
    return _GROUP[0]


@dataclass
class RankRun:
    """What the task pipeline (pipeline.py) asks of the ranks: this rank's tasks, when one may start, and
    how a cursor is committed. One process: every task, no waits, the manifest. Several: RankPlan's tasks
    and waits, the rank's cursor file and published cursor, and rank 0 also writes the manifest."""

    plan: RankPlan
    group: RankGroup | None = None
    ledger: RankLedger | None = None

    @classmethod
    def solo(cls, tasks) -> "RankRun":
        return cls(RankPlan(tasks, 0, 1))

    @property
    def writes_manifest(self) -> bool:
        return self.plan.rank == 0

    def next_own(self, index: int) -> int:
        return self.plan.next_own(index)

    def ready(self, index: int) -> bool:
        """Whether task `index` may start now (its inputs are on disk)."""
        return self.group is None or self.group.reached(self.plan.waits_for(index))

    def wait(self, index: int, *, stop) -> None:
        """Block until task `index` may start, or until a stop request (the caller checks)."""
        if self.group is not None:
            self.group.wait_for(self.plan.waits_for(index), stop=stop)

    def model_blocks_before(self, cursor: int) -> int:
        return self.plan.model_blocks_before(cursor)

    def commit(self, store, cursor: int, *, before: int, **fields):
        """Commit this rank's `cursor` (its writes before it are on disk; `before`: the last one committed);
        returns the manifest as it is now."""
        tasks = self.plan.tasks
        if self.group is None:
            return store.commit(cursor=cursor, model_blocks_done=tasks.model_blocks_before(cursor), **fields)
        self.ledger.write(self.plan.rank, cursor, fault_tasks=range(before, cursor))
        self.group.publish(cursor)
        if self.plan.rank != 0:
            return store.manifest
        cursors = [cursor if r == 0 else max(self.group.cursor(r), 0) for r in range(self.plan.world)]
        done = sum(replace(self.plan, rank=r).model_blocks_before(c) for r, c in enumerate(cursors))
        return store.commit(cursor=max(min(cursors), store.manifest.cursor), model_blocks_done=done, **fields)


def rank_device(device: str, group: RankGroup | None) -> torch.device:
    """A rank's own device: cuda:LOCAL_RANK for a CUDA job (each rank owns one), else the job's."""
    dev = torch.device(device)
    if group is None or dev.type != "cuda":
        return dev
    if group.local_rank >= torch.cuda.device_count():
        raise BadInput(f"rank {group.rank} has local rank {group.local_rank} but this node has "
                       f"{torch.cuda.device_count()} CUDA device(s): launch at most that many ranks per node")
    return torch.device("cuda", group.local_rank)

