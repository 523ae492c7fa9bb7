"""The one-line errors of streamsr.io: `BadInput` for a user's file (exit 2) and `OutputError` for a failure
while writing the output (exit 1), each naming the file, and the helpers that word them."""

from __future__ import annotations

import os

from ..errors import BadInput, StreamsrError


class OutputError(StreamsrError):
    """Writing the output failed (disk full, I/O error); nothing was left at the target."""

    exit_code = 1


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def reason(exc: BaseException) -> str:
    """The OS reason of an OSError ("No space left on device"), else the exception's text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return one_line(exc) or type(exc).__name__


def bad_input(path: os.PathLike | str, problem: str) -> BadInput:
    """BadInput "<path>: <problem>" on one line."""
    return BadInput(one_line(f"{path}: {problem}"))


def output_error(path: os.PathLike | str, exc: BaseException) -> OutputError:
    """OutputError "<path>: cannot write output: <reason>" on one line."""
    return OutputError(one_line(f"{path}: cannot write output: {reason(exc)}"))
