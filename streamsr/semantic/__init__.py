"""The global semantic vector of an LR image: the encoder spec of a model dir, the streamed thumbnail,
and the encoders (open_clip, learned).
"""
