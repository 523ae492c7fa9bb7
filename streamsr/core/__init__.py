"""Torch math only, no files: the Inf-DiT network, attention kernels, RoPE, EDM sampler steps, per-block
noise, bicubic resampling, LR windows and statistics anchoring. Depends on torch and streamsr.config only.
"""
