"""Out-of-core jobs, one topic per file (dependencies run down the list):

    faults.py    fault injection for the crash tests
    manifest.py  the typed manifest (Manifest and its parts, JobStatus)
    store.py     JobDir (the one owner of every path in a job dir), JobStore (arrays, commits), the lock
    progress.py  Timers, the ETA, the progress line
    blockio.py   timed block reads and writes of the tasks (fault-injection points)
    executor.py  the model tasks: init, predict, correct (each sweep with its K/V frontier, replay)
    finalize.py  the tasks after the sampler: stats, anchor (with luma, alpha, quantisation), export
    create.py    making a job dir: LRInput, ingest, memory plan, the first manifest
    run.py       run / resume a job, its status report
    flows.py     upscale / resume / status behind the CLI, the x16 chain (chain.json)
    export.py    `streamsr export` of a finished job

Depends on stream, core, io, semantic and weights.
"""
