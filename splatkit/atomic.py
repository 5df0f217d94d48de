"""Atomic file writes: a killed process leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path
from typing import Iterator

from splatkit.errors import file_error


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on error it is removed.
    `suffix` ends the temporary name, for writers that pick the format from it."""
    path = Path(path)
    if path.is_dir():
        raise file_error(path, "is a folder; give a file name")
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as exc:
        raise file_error(path, f"cannot write here ({exc.strerror or exc})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _new_file_mode())  # mkstemp makes it owner-only; a written file is as any other
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def make_folder(folder: str | Path) -> None:
    """Create `folder` and its parents; one line naming it when that fails (e.g. a file stands in the way)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker else (exc.strerror or str(exc))
        raise file_error(folder, f"cannot create the folder: {reason}") from None


@functools.cache
def _new_file_mode() -> int:
    """The mode open() gives new files under this process's umask (read back by setting it and restoring)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
