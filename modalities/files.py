"""Writing a file so that a failure (a crash, a full or read-only disk) never leaves a half-written file under
its final name: write beside it, then rename over it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` to a temporary file in the same folder (same suffix, so format-by-suffix writers work), then
    rename it over `path`. An OSError (a full disk) is one line (ValueError) and leaves nothing behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
