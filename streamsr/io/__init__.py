"""Pixels in and out: probing and reading inputs (huge ones by bands), streaming PNG, output writers,
pyramids and export formats. Depends on nothing in streamsr but errors.
"""
