"""The streaming runtime: the planner (pure Python: batches, per-batch plans, tasks), the K/V frontier,
the memory plan and the engine that executes one batch and one sweep. Depends on core only; never on
jobs, io, semantic, train or viewer.
"""
