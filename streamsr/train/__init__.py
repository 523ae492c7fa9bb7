"""Training streamsr's own models: the recipe (data, degradation, EDM loss) and the trainer (loop,
EMA, checkpoints, export).
"""
