"""The planner is pure Python: check its geometry and the frontier's live set exhaustively."""

from __future__ import annotations

import itertools

import pytest

from streamsr.stream.planner import (
    BatchShape,
    Grid,
    Neighbors,
    external_reads,
    frontier_bound,
    frontier_plan,
    job_tasks,
    neighbors,
    raster_batches,
)


def test_neighbors_are_clamped_like_official_full_mode():
    assert neighbors(0, 0) == Neighbors(self=(0, 0), top_left=(0, 0), left=(0, 0), top=(0, 0))
    assert neighbors(0, 3) == Neighbors(self=(0, 3), top_left=(0, 2), left=(0, 2), top=(0, 3))
    assert neighbors(2, 0) == Neighbors(self=(2, 0), top_left=(1, 0), left=(2, 0), top=(1, 0))
    assert neighbors(2, 3) == Neighbors(self=(2, 3), top_left=(1, 2), left=(2, 2), top=(1, 3))


@pytest.mark.parametrize("rows,cols", [(r, c) for r in range(1, 7) for c in range(1, 8)])
def test_frontier_plan_is_complete_and_bounded(rows, cols):
    grid = Grid(rows, cols)
    for bh, bw in itertools.product(range(1, rows + 2), range(1, cols + 2)):
        shape = BatchShape(bh, bw)
        plan = frontier_plan(grid, shape)
        covered = [blk for b in plan.batches for blk in b.blocks()]
        assert sorted(covered) == grid.blocks() and len(covered) == len(set(covered))
        done: set = set()
        live: set = set()
        bound = frontier_bound(grid, shape)
        for b in plan.batches:
            # every block a batch reads was computed earlier and is still held
            assert set(plan.reads(b)) <= live, (b, plan.reads(b), live)
            assert set(plan.reads(b)) <= done
            before = len(live)
            live -= set(plan.drop(b))
            live |= set(plan.keep(b))
            # per layer the engine drops before it puts, so the peak is the larger of before and after
            assert max(before, len(live)) <= bound
            assert len(live) <= cols + bh  # DESIGN.md section 3: about one row plus the batch height
            done |= set(b.blocks())
            assert live == plan.live_after(b.index)
        assert live == set()  # nothing left behind after the sweep


def test_raster_order_and_edge_batches():
    batches = list(raster_batches(Grid(3, 5), BatchShape(2, 2)))
    assert [(b.row0, b.col0, b.rows, b.cols) for b in batches] == [
        (0, 0, 2, 2), (0, 2, 2, 2), (0, 4, 2, 1), (2, 0, 1, 2), (2, 2, 1, 2), (2, 4, 1, 1)]
    assert external_reads(batches[4]) == [(1, 1), (2, 1), (1, 2), (1, 3)]  # first-use order


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="multiple of the block size"):
        Grid.for_image(100, 128, 128)
    with pytest.raises(ValueError, match="at least 1x1"):
        BatchShape(0, 2)
    with pytest.raises(ValueError, match="rows x cols"):
        BatchShape.parse("2by3")
    assert BatchShape.parse("2x3") == BatchShape(2, 3)


def test_task_list_order_and_counts():
    from streamsr.stream.planner import job_tasks

    tasks = job_tasks(Grid(2, 3), BatchShape(1, 2), steps=3, sampler="heun", anchor="global")
    kinds = [(t.kind, t.step) for t in tasks]
    per = 4  # batches per sweep: 2 bands x 2
    assert len(tasks) == per * (1 + 5 + 2) + 1
    assert kinds[:per] == [("init", None)] * per  # steps only on denoiser tasks
    assert [k for k, _ in kinds[per:-1:per]] == ["predict", "correct", "predict", "correct", "predict", "stats", "anchor"]
    assert kinds[-1] == ("export", None) and tasks[len(tasks) - 1].batch is None
    assert [t.index for t in tasks] == list(range(len(tasks)))
    assert tasks.model_blocks() == 5 * 6
    euler = job_tasks(Grid(2, 3), BatchShape(1, 2), steps=3, sampler="euler", anchor="none")
    assert len(euler) == per * (1 + 3 + 1) + 1


def test_lazy_plan_matches_brute_force_last_reader():
    for grid, shape in [(Grid(4, 5), BatchShape(2, 2)), (Grid(1, 6), BatchShape(1, 4)), (Grid(5, 1), BatchShape(2, 1))]:
        plan = frontier_plan(grid, shape)
        batches = list(plan.batches)
        for blk in grid.blocks():
            readers = [b.index for b in batches if blk in plan.reads(b)]
            assert plan.last_reader(blk) == (max(readers) if readers else -1)


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 5), (4, 1), (3, 4), (5, 6)])
def test_batch_plan_pool_slots_and_next_reads(rows, cols):
    """A BatchPlan's pool ([own blocks, then reads]) at slots[i] gives block i's clamped neighbours."""
    grid = Grid(rows, cols)
    for bh, bw in itertools.product(range(1, rows + 1), range(1, cols + 1)):
        sweep = frontier_plan(grid, BatchShape(bh, bw))
        plans = list(sweep.batch_plans())
        for i, plan in enumerate(plans):
            pool = plan.batch.blocks() + list(plan.reads)
            assert [tuple(pool[j] for j in s) for s in plan.slots] == [neighbors(r, c) for r, c in plan.batch.blocks()]
            assert (plan.keep, plan.drop) == (sweep.keep(plan.batch), sweep.drop(plan.batch))
            assert plan.next_reads == (plans[i + 1].reads if i + 1 < len(plans) else ())


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 5), (4, 4), (7, 2)])
@pytest.mark.parametrize("shape", [BatchShape(1, 1), BatchShape(2, 3), BatchShape(4, 4)])
def test_model_blocks_before_counts_the_model_tasks(rows, cols, shape):
    tasks = job_tasks(Grid(rows, cols), shape, 2, "heun", "global")
    counted = 0
    for cursor in range(len(tasks) + 1):
        assert tasks.model_blocks_before(cursor) == counted
        if cursor < len(tasks) and tasks[cursor].is_model:
            counted += len(tasks[cursor].batch.blocks())
    assert counted == tasks.model_blocks()
