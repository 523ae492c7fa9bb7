"""Out-of-core jobs: the job dir and its typed manifest (store), the executor of model tasks, run /
resume / status, the x16 chain, progress. Depends on stream, core, io and semantic.
"""
