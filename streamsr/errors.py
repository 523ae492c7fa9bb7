"""User-facing errors: the CLI prints their message on one line and exits with their code."""

from __future__ import annotations


class StreamsrError(Exception):
    """A problem the user can fix (bad input, bad option, wrong file); printed without a traceback."""

    exit_code = 2


class BadInput(StreamsrError):
    """An input file, option or model dir is unusable."""
