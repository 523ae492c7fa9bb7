"""The streaming runtime: the planner (pure Python: grid, batches, per-batch plans, tasks), the K/V
frontier, the memory plan and the engine that runs one batch and one sweep. Depends on core.
"""
