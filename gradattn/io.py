"""Atomic file writes: an interrupted stage never leaves a file that looks finished."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed temporary name: a run killed mid-write leaves it behind, and the rerun of the
    # same stage overwrites and renames it instead of leaving one more random leftover.
    tmp = path.parent / f".{path.name}.tmp{suffix or ''}"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the usual, umask-ed mode
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None], suffix: str | None = None):
    """Call writer(tmp_path) and move the result onto `path` atomically."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())
