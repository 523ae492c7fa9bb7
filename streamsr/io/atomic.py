"""Atomic outputs: every output is written under a temporary name beside its target and renamed onto it
only when complete, so a failure leaves the old target (or nothing) and no temporary behind.

Here: the temporary names (`partial_path`), the up-front check that a target can be written
(`check_target`), fsync/rename/remove helpers, the guard that cleans up and turns OSError into
`OutputError`, and `RowWriter`, the base of the streaming file writers (rows top to bottom into
`<stem>.partial<suffix>`, renamed by close()).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import BadInput
from .depth import uint_dtype
from .problems import OutputError, bad_input, one_line, output_error, reason


def partial_path(path: os.PathLike | str) -> Path:
    """The temporary file beside `path` that a writer fills: out.png -> out.partial.png."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def unsupported_suffix(path: Path, supported: tuple[str, ...]) -> BadInput:
    """BadInput for an output name whose suffix is not one of `supported`."""
    shown = f"'{path.suffix}'" if path.suffix else "(no suffix)"
    return bad_input(path, f"unsupported output format {shown}; supported: {', '.join(supported)}")


def check_target(path: Path, *, file_example: str | None) -> None:
    """BadInput naming `path` unless an output can be created there: its directory exists and a file can
    be created (and removed) in it. file_example: for a file output, the name suggested when `path` is a
    directory (e.g. "out.png"); None for an output that is itself a directory."""
    if file_example is not None and path.is_dir():
        raise bad_input(path, f"is a directory; give a file name such as {path / file_example}")
    parent = path.parent
    if not parent.exists():
        raise bad_input(path, f"output directory {parent} does not exist")
    if not parent.is_dir():
        raise bad_input(path, f"{parent} is not a directory")
    try:
        fd, probe_name = tempfile.mkstemp(prefix=".streamsr-write-test-", dir=parent)
        os.close(fd)
        os.unlink(probe_name)
    except OSError as e:
        raise bad_input(path, f"cannot write to directory {parent}: {reason(e)}") from e


def open_temp(path: Path):
    """Open the temporary output file (a seam for tests that simulate a full disk)."""
    return open(path, "wb")


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove(path: Path) -> None:
    """Remove a file or a folder tree, quietly."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def replace_dir(tmp: Path, target: Path) -> None:
    """Rename the finished folder `tmp` onto `target`; an old `target` is removed only afterwards."""
    old = None
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        remove(old)
        os.replace(target, old)
    elif target.exists() or target.is_symlink():
        target.unlink()
    os.replace(tmp, target)
    fsync_dir(target.parent)
    if old is not None:
        remove(old)


def commit_file(fh, tmp: Path, target: Path) -> None:
    """Flush and fsync the open temporary file `fh`, close it, rename it onto `target`."""
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    os.replace(tmp, target)
    fsync_dir(target.parent)


@contextlib.contextmanager
def output_guard(path: Path, temps: list[Path]):
    """Remove the temporaries on any failure; OSError becomes OutputError (one line) naming `path`."""
    try:
        yield
    except OSError as e:
        for tmp in temps:
            remove(tmp)
        raise output_error(path, e) from e
    except BaseException:
        for tmp in temps:
            remove(tmp)
        raise


class RowWriter:
    """Streams rows (top to bottom) into `<stem>.partial<suffix>`, renamed onto `path` by close().

    Use as a context manager: an exception inside the block aborts (the target is untouched).
    `write_rows` takes uint8 (8-bit) or uint16 (16-bit) arrays of shape (n, width, channels),
    any n. OSError while writing becomes OutputError and aborts. Subclasses encode (`_write`,
    `_finish`, `_cancel`).
    """

    def __init__(self, path: Path, width: int, height: int, channels: int, bit_depth: int, *,
                 compress: bool = True):
        self.path, self.tmp_path = path, partial_path(path)
        self.width, self.height, self.channels = width, height, channels
        self.bit_depth, self.compress = bit_depth, compress
        self.dtype = np.dtype(uint_dtype(bit_depth))
        self.rows_written = 0
        self._state = "open"
        try:
            self._file = open_temp(self.tmp_path)
        except OSError as e:
            self._state = "aborted"
            raise output_error(path, e) from e

    def _write(self, rows: np.ndarray) -> None:
        """Encode rows (n, width, channels), n >= 1."""
        raise NotImplementedError

    def _finish(self) -> None:
        """Write what follows the last row (the file is flushed and renamed afterwards)."""
        raise NotImplementedError

    def _cancel(self) -> None:
        """Stop background work before the temporary file is closed and removed."""

    def _check_rows(self, rows: np.ndarray) -> np.ndarray:
        if self._state != "open":
            raise ValueError(f"{self.path}: writer is already {self._state}")
        rows = np.asarray(rows)
        if rows.ndim == 2 and self.channels == 1:
            rows = rows[:, :, None]  # (n, width, 1)
        if rows.ndim != 3 or rows.shape[1:] != (self.width, self.channels):
            raise ValueError(f"rows must be (n, {self.width}, {self.channels}), not {rows.shape}")
        if rows.dtype != self.dtype:
            raise TypeError(f"rows must be {self.dtype} for {self.bit_depth}-bit output, not {rows.dtype}")
        if self.rows_written + len(rows) > self.height:
            raise ValueError(f"{self.rows_written} + {len(rows)} rows exceed the height {self.height}")
        return rows

    def _guarded(self, func, *args) -> None:
        """Run a write step; on any failure abort, and report OSError as OutputError."""
        try:
            func(*args)
        except OSError as e:
            self.abort()
            raise output_error(self.path, e) from e
        except BaseException:
            self.abort()
            raise

    def write_rows(self, rows: np.ndarray) -> None:
        """Append rows (n, width, channels) below those already written."""
        rows = self._check_rows(rows)
        if len(rows):
            self._guarded(self._write, np.ascontiguousarray(rows))
            self.rows_written += len(rows)

    def _commit(self) -> None:
        self._finish()
        commit_file(self._file, self.tmp_path, self.path)

    def close(self) -> None:
        """Finish the file and rename it onto the target; an incomplete image is discarded."""
        if self._state != "open":
            return
        if self.rows_written < self.height:
            self.abort()
            raise OutputError(one_line(
                f"{self.path}: only {self.rows_written} of {self.height} rows were written; "
                "the output was discarded"))
        self._guarded(self._commit)
        self._state = "closed"

    def abort(self) -> None:
        """Drop the temporary file; an existing target is left as it was. Safe to call twice."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._cancel()
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.tmp_path.unlink()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
