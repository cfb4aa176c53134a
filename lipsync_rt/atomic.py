"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Everything the project writes for later use goes through here: checkpoints, face caches, engine
plans, result JSON and plots, corpus metadata. The bytes go to a temporary file in the target's own
folder (so the final rename never crosses a filesystem), which replaces the target only when the
writing finished; on any error, Ctrl-C included, the temporary file is removed and the target is left
as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path to write to, renamed over ``path`` when the block ends without an error.

    ``suffix`` matters to writers that pick a format from the name (``.png`` for matplotlib, OpenCV).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make results unreadable to other users
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: PathLike, data: Union[bytes, bytearray, memoryview]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(memoryview(data))
    return Path(path)


def write_text_atomic(path: PathLike, text: str) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: PathLike, obj: Any, indent: int = 2) -> Path:
    """JSON with a trailing newline; numpy scalars and other numbers are written as floats."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=float) + "\n")
