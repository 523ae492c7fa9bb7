"""Torch math only, no files: block-grid geometry (grid), the Inf-DiT network F (model, with attention
kernels and RoPE), the denoiser D around it (EDM preconditioning and the full-image reference), EDM
sampler steps, per-block noise, bicubic resampling, LR windows and statistics anchoring.
Depends on torch and streamsr.config only; never on stream, jobs, io, semantic, train or viewer.
"""
