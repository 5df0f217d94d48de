"""User-facing errors.

A `SplatkitError` describes a problem the user can fix (a missing image, a broken model file). The CLI prints
its message as one line and exits non-zero, without a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class SplatkitError(Exception):
    """An error caused by the user's input, reported as one line."""


def file_error(path: str | Path, problem: str) -> SplatkitError:
    """The one-line form every input error takes: `<file>: <problem>`. File names and values quoted from a file
    may hold newlines or other control characters, so those are escaped to keep it one line."""
    return SplatkitError(f"{_printable(str(path))}: {_printable(problem)}")


def _printable(text: str) -> str:
    return text if text.isprintable() else "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
