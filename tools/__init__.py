"""streamsr's scripts: benchmarks, data, training, evaluation. Run them from the repository root as
`python -m tools.NAME`; they import `streamsr` (installed in the venv) and each other as `tools.X`, and
the benchmarks share tools/harness.py (arguments, synthetic models and images, measured children)."""
