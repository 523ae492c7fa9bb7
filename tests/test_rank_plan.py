"""stream/ranks.py, exhaustively: which tasks each rank runs, what it waits for, and that the ring of state
arrays never loses a state that a running or resuming sweep still reads, under every interleaving the
waits allow (simulated with random schedules)."""

from __future__ import annotations

import random

import pytest

from streamsr.core.grid import Grid
from streamsr.stream.planner import BatchShape, TaskKind, job_tasks
from streamsr.stream.ranks import RankPlan, rank_fuse

CASES = [(Grid(rows, cols), BatchShape(br, bc), steps, sampler, fuse, anchor, world)
         for rows, cols in ((1, 1), (2, 3), (3, 2), (4, 4)) for br, bc in ((1, 1), (2, 2), (1, 3))
         for steps, sampler, fuse in ((4, "euler", 1), (4, "heun", 2), (6, "heun", 1), (5, "euler", 2))
         for anchor in ("global", "local") for world in (1, 2, 3, 4)]


def plans(grid, shape, steps, sampler, fuse, anchor, world):
    tasks = job_tasks(grid, shape, steps, sampler, anchor, init_sweep=False, fuse=fuse)
    return tasks, [RankPlan(tasks, rank, world) for rank in range(world)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].rows}x{c[0].cols}-{c[1].rows}x{c[1].cols}-{c[2]}{c[3]}-f{c[4]}-{c[5]}-w{c[6]}")
def test_every_task_has_one_rank_and_each_rank_runs_its_own_in_order(case):
    tasks, ranks = plans(*case)
    owned = sorted(i for plan in ranks for i in plan.own(0))
    assert owned == list(range(len(tasks)))
    for plan in ranks:
        own = list(plan.own(0))
        assert own == sorted(own)
        assert all(plan.owner(i) == plan.rank for i in own)
        for cursor in range(len(tasks) + 1):  # resuming anywhere runs exactly the own tasks from there
            assert list(plan.own(cursor)) == [i for i in own if i >= cursor]
            assert plan.next_own(cursor) == next((i for i in own if i >= cursor), len(tasks))
    assert sum(plan.model_blocks_before(len(tasks)) for plan in ranks) == tasks.model_blocks()
    finishing = [i for i in range(len(tasks)) if not tasks[i].is_model]
    assert all(ranks[0].owner(i) == 0 for i in finishing)  # stats, anchor and export: rank 0


def _run_one(tasks, ranks, cursors, version, rng, *, ring, may_start=lambda r, index: True):
    """Run the next task of a random rank that its waits (and `may_start`) allow: check that it reads the
    state its sweep expects and record what it writes (version: (slot, batch) -> steps sweeps done).
    Returns the rank, the task's index and the task; the caller moves the rank's cursor on."""
    n = len(tasks.batches)
    ready = [r for r, plan in enumerate(ranks) if cursors[r] < len(tasks)
             and all(cursors[u] >= c for u, c in plan.waits_for(cursors[r])) and may_start(r, cursors[r])]
    assert ready, f"deadlock at cursors {cursors}"
    r = rng.choice(ready)
    index = cursors[r]
    task = tasks[index]
    if task.kind is TaskKind.STEPS:
        group, b = index // n, task.batch.index
        if group > 0:
            assert version.get((group % ring, b)) == group, f"sweep {group} read a stale or overwritten state"
        version[((group + 1) % ring, b)] = group + 1
    elif task.index == tasks.first(TaskKind.ANCHOR) or task.kind is TaskKind.STATS:
        assert all(c == len(tasks) for c in cursors[1:]), "finishing started before every rank finished"
    return r, index, task


def _simulate(tasks, ranks, rng, *, ring):
    """Run the ranks' tasks in a random order the waits allow, committing after each task; check that
    every read sees the state its sweep expects, now and for a replay from the start of its sweep."""
    n = len(tasks.batches)
    cursors = [plan.next_own(0) for plan in ranks]
    version = {}  # (slot, batch) -> the steps sweeps its content has been through
    while any(c < len(tasks) for c in cursors):
        r, index, _ = _run_one(tasks, ranks, cursors, version, rng, ring=ring)
        cursors[r] = ranks[r].next_own(index + 1)
        for q, plan in enumerate(ranks):  # a rank resuming now replays its sweep's batches before its cursor
            c = cursors[q]
            if c < len(tasks) and tasks[c].kind is TaskKind.STEPS and c // n > 0:
                group = c // n
                assert all(version.get((group % ring, b)) == group for b in range(tasks[c].batch.index))


@pytest.mark.parametrize("case", CASES[::3], ids=lambda c: f"{c[0].rows}x{c[0].cols}-{c[1].rows}x{c[1].cols}-{c[2]}{c[3]}-f{c[4]}-{c[5]}-w{c[6]}")
def test_random_schedules_never_read_an_overwritten_state(case):
    tasks, ranks = plans(*case)
    world = case[-1]
    for seed in range(6):
        _simulate(tasks, ranks, random.Random(seed), ring=world + 1)


def test_a_ring_of_world_slots_would_lose_a_state():
    """The ring needs ranks + 1 slots: with only `world` a resuming sweep finds its input overwritten."""
    tasks, ranks = plans(Grid(2, 4), BatchShape(1, 1), 6, "euler", 1, "local", 2)
    failures = 0
    for seed in range(20):
        try:
            _simulate(tasks, ranks, random.Random(seed), ring=2)
        except AssertionError:
            failures += 1
    assert failures > 0


def test_rank_fuse_gives_every_rank_a_sweep():
    assert rank_fuse(8, steps=20, world=4) == 5
    assert rank_fuse(3, steps=20, world=2) == 3  # the budget's limit wins
    assert rank_fuse(8, steps=3, world=4) == 1  # more ranks than steps: one step per sweep
    assert rank_fuse(8, steps=20, world=1) == 8
    assert rank_fuse(8, steps=20, world=4, batches=19_000) == 5  # a gigapixel sweep: the fill is nothing
    assert rank_fuse(8, steps=8, world=2, batches=32) == 1  # 32 batches: F = 4 would idle ~6% of the job
    assert rank_fuse(8, steps=8, world=2, batches=400) == 4
    assert rank_fuse(8, steps=20, world=1, batches=4) == 8  # one process has no pipeline to fill


def test_only_fused_jobs_run_on_several_ranks():
    tasks = job_tasks(Grid(2, 2), BatchShape(1, 1), 3, "heun", "local", init_sweep=False, fuse=0)
    with pytest.raises(ValueError, match="fused"):
        RankPlan(tasks, 0, 2)
    RankPlan(tasks, 0, 1)  # one process runs any layout
    with pytest.raises(ValueError, match="rank 2"):
        RankPlan(tasks, 2, 2)


# ---- column bands: stages of `bands` ranks, each sweep a wavefront of bands -----------------------

BAND_CASES = [(Grid(rows, cols), BatchShape(br, bc), steps, sampler, fuse, anchor, world, bands)
              for rows, cols in ((2, 4), (3, 5)) for br, bc in ((1, 1), (2, 2), (1, 2))
              for steps, sampler, fuse in ((1, "euler", 1), (4, "heun", 1), (5, "euler", 2))
              for anchor in ("global", "local") for world, bands in ((2, 2), (3, 2), (4, 2), (3, 3), (4, 4))
              if bands <= -(-cols // bc)]


def band_plans(grid, shape, steps, sampler, fuse, anchor, world, bands):
    tasks = job_tasks(grid, shape, steps, sampler, anchor, init_sweep=False, fuse=fuse)
    return tasks, [RankPlan(tasks, rank, world, bands) for rank in range(world)]


def _band_ids(c):
    return f"{c[0].rows}x{c[0].cols}-{c[1].rows}x{c[1].cols}-{c[2]}{c[3]}-f{c[4]}-{c[5]}-w{c[6]}b{c[7]}"


@pytest.mark.parametrize("case", BAND_CASES, ids=_band_ids)
def test_bands_every_task_has_one_rank_and_counts_add_up(case):
    tasks, ranks = band_plans(*case)
    owned = sorted(i for plan in ranks for i in plan.own(0))
    assert owned == list(range(len(tasks)))
    for plan in ranks:
        own = list(plan.own(0))
        assert all(plan.owner(i) == plan.rank for i in own)
        for cursor in range(len(tasks) + 1):
            assert plan.next_own(cursor) == next((i for i in own if i >= cursor), len(tasks))
            assert plan.model_blocks_before(cursor) == sum(
                tasks[i].evals * len(tasks[i].batch.blocks()) for i in own if i < cursor and tasks[i].is_model)
        if plan.rank >= plan.stages * plan.bands:
            assert own == []  # idle: world is not a multiple of the bands


def _band_simulate(tasks, ranks, rng):
    """Random schedules the waits and the hand-offs allow; at every point, a relaunch (each band of a
    stage replays its part of the stage's oldest current sweep from its start) finds its inputs intact."""
    n, cols = len(tasks.batches), tasks.batches.cols
    plan0 = ranks[0]
    ring, bands = plan0.stages + 1, plan0.bands
    cursors = [plan.next_own(0) for plan in ranks]
    version = {}
    snaps = [{} for _ in ranks]  # rank -> sweep -> the rows its snapshots follow (jobs/run.py, pipeline.py)
    decided = {}  # (stage, sweep, row) -> band 0's snapshot decision, handed on with the row's K/V

    def handed(r, index):  # a band's first batch of a row needs the band to its left past that row
        plan = ranks[r]
        if not tasks[index].is_model or plan.band.first or index % n % cols != plan.band.col0:
            return True
        return cursors[r - 1] > index - 1  # the left band's last batch of the same row and sweep is done

    while any(c < len(tasks) for c in cursors):
        r, index, task = _run_one(tasks, ranks, cursors, version, rng, ring=ring, may_start=handed)
        if task.kind is TaskKind.STEPS:
            plan = ranks[r]
            sweep, (row, col) = index // n, divmod(index % n, cols)
            if col == plan.band.col0:  # a new sweep of this rank: the others' snapshots go
                snaps[r] = {sweep: snaps[r].get(sweep, [])}
            if col == plan.band.col1 - 1 and row + 1 < tasks.batches.rows:  # a band row end inside the sweep
                key = (r // bands, sweep, row)
                take = decided.setdefault(key, rng.random() < 0.5) if plan.band.first else decided[key]
                if take:
                    snaps[r][sweep] = sorted([*snaps[r][sweep], row + 1])[-3:]  # the newest 3 kept
        cursors[r] = ranks[r].next_own(index + 1)
        for stage in range(plan0.stages):  # a relaunch now: the stage's bands replay its oldest current sweep
            members = range(stage * bands, stage * bands + bands)
            current = [cursors[q] // n for q in members if cursors[q] < len(tasks) and tasks[cursors[q]].is_model]
            assert not current or all(s in (min(current), min(current) + plan0.stages) for s in current), \
                "a band ran ahead of its stage"
            starts = set()
            sweep = ranks[stage * bands].stage_sweep(cursors)
            rows = [sorted(snaps[q].get(sweep, [])) for q in range(len(ranks))]
            skip = ranks[stage * bands].restart_row(cursors, rows)
            for q in members:
                assert ranks[q].restart_row(cursors, rows) == skip
                if skip:
                    assert skip in rows[q]  # every band restores its frontier after row `skip`
                span = ranks[q].replay_span(cursors, skip_rows=skip)
                assert span.stop <= cursors[q]
                # the K/V this band hands on start where the right band's replay starts: at its span, or at
                # its cursor when it has nothing to replay
                starts.add(span.start if span else None)
                for i in ranks[q].own(span.start):
                    if i >= span.stop:
                        break
                    sweep = i // n
                    if sweep > 0:
                        assert version.get((sweep % ring, i % n)) == sweep, "a replay's input was overwritten"
                if span and q > stage * bands:
                    left = ranks[q - 1].replay_span(cursors)
                    assert (left.start if left else cursors[q - 1]) <= span.start, "a band replays rows no one sends"
            starts.discard(None)
            assert len(starts) <= 1, f"the bands of stage {stage} replay from different points: {starts}"


@pytest.mark.parametrize("case", BAND_CASES[::2], ids=_band_ids)
def test_bands_random_schedules_keep_every_replay_possible(case):
    tasks, ranks = band_plans(*case)
    for seed in range(4):
        _band_simulate(tasks, ranks, random.Random(seed))


def test_band_plans_refuse_more_bands_than_ranks_or_columns():
    tasks = job_tasks(Grid(2, 3), BatchShape(1, 1), 2, "euler", "local", init_sweep=False, fuse=1)
    with pytest.raises(ValueError, match="band"):
        RankPlan(tasks, 0, 2, 3)
    with pytest.raises(ValueError, match="band"):
        RankPlan(tasks, 0, 4, 4)  # 3 batch columns


def test_rank_split_busy_ranks_then_device_frontier_then_fewest_bands():
    from streamsr.stream.ranks import RankSplit, rank_split

    def fits_all(bands):
        return 8, True

    assert rank_split(1, steps=20, batch_cols=16, batches=512, fuse_for=fits_all) == RankSplit(1, 1, 8)
    assert rank_split(2, steps=8, batch_cols=16, batches=512, fuse_for=fits_all) == RankSplit(2, 1, 4)  # a pipeline
    assert rank_split(2, steps=1, batch_cols=16, batches=512, fuse_for=fits_all) == RankSplit(1, 2, 1)  # one sweep: bands
    assert rank_split(4, steps=2, batch_cols=16, batches=512, fuse_for=fits_all) == RankSplit(2, 2, 1)
    assert rank_split(3, steps=1, batch_cols=2, batches=8, fuse_for=fits_all) == RankSplit(1, 2, 1)  # 1 idle
    assert rank_split(4, steps=1, batch_cols=1, batches=8, fuse_for=fits_all) == RankSplit(4, 1, 1)  # no columns to split

    def row_too_wide(bands):  # a row of K/V fits the device only in 4 or more bands
        return 8, bands >= 4

    assert rank_split(8, steps=20, batch_cols=64, batches=4096, fuse_for=row_too_wide) == RankSplit(2, 4, 8)
