"""Pixels in and out; depends on nothing in streamsr but errors.

    probe.py       what an input is, from its header (info.py: ImageInfo, modes, limits; zarr_input.py)
    read.py        read_image, iter_row_bands (TIFF, zarr, PNG, JPEG; huge ones by bands)
    png.py         PNG streamed both ways (band reader of any size, row writer)
    write.py       open_writer: output images by rows (PNG, tiled TIFF)
    atomic.py      partial files renamed when complete, the output-path check, RowWriter
    pyramid.py     the one band re-chunker (Rebander), the one 2x2 reducer, the pyramid cascade
    depth.py       bit depths: float <-> uint8/16, uint8 <-> uint16
    problems.py    the one-line BadInput / OutputError wording
    export/        export_array: one format per file (png, tiff, zarr, dzi), chosen by suffix
"""
