"""Writes that a kill cannot leave half done."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def atomic_write(path: str | pathlib.Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` to a temporary file in ``path``'s directory, then renamed over ``path``: a
    reader (or a resumed job) sees the old file or the whole new one, never a partial one."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | pathlib.Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))
