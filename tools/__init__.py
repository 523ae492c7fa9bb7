"""streamsr's scripts: benchmarks, data, training, evaluation. Run them from the repository root as
`python -m tools.NAME` (or `python tools/NAME.py`)."""
