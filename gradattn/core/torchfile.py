"""Saving and loading the project's .pt files (trained models, resume checkpoints).

They hold tensors and plain values only and are loaded with `weights_only=True`: a .pt file
from `dvc pull`, a shared remote or another branch is data, and must not run code when read.
Saving is byte-stable: the same contents give the same bytes whatever the file's name.
"""

from __future__ import annotations

import errno
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from gradattn.core.errors import GradattnError, first_line
from gradattn.core.io import atomic_path


class UnreadableFileError(GradattnError):
    """A .pt file that is truncated, damaged, or holds more than tensors and plain values."""

    def __init__(self, path: Path, problem: str, remedy: str):
        super().__init__(f"{path} cannot be used: {problem}: {remedy}")
        self.path, self.problem = path, problem


# What torch's archive writer (PytorchStreamWriter) says when a write fails: it raises a
# RuntimeError, not an OSError, e.g. "PytorchStreamWriter failed writing file data/0: file
# write failed" or "[enforce fail at inline_container.cc:…] . unexpected pos 64 vs 0".
_WRITER_FAILED = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


def save(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` atomically. Through a file object, torch names the archive's root folder
    'archive' instead of after the (temporary) file name, so equal contents give equal bytes.
    A failed write (a full disk) is one line naming the folder (atomic_path's disk_errors)."""
    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as fh:
        try:
            torch.save(obj, fh)
        except RuntimeError as err:
            if not any(text in str(err) for text in _WRITER_FAILED):
                raise
            # torch keeps no errno; a write that fails mid-archive is almost always a full
            # disk (or quota): report it as one.
            raise OSError(errno.ENOSPC, f"writing {Path(path).name} failed, most likely no "
                          f"space left on the device ({first_line(err)})") from None


def load(path: str | os.PathLike, *, remedy: str, map_location="cpu") -> Any:
    """Read a file written by `save`; anything else is an UnreadableFileError ending in `remedy`.

    An OSError naming a file (missing, permissions) passes through: the contents are not at
    fault. torch reports some truncated archives as an OSError naming none.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise, not help
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as err:
        if err.filename is not None:
            raise
        raise UnreadableFileError(
            path, f"it is truncated or damaged ({first_line(err)})", remedy) from None
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            problem = ("it holds objects other than tensors and plain values (not loaded: "
                       "loading it could run code)")
        else:
            problem = f"it is damaged ({first_line(err)})"
        raise UnreadableFileError(path, problem, remedy) from None
    except Exception as err:  # truncated zip, garbage bytes: torch raises several kinds
        raise UnreadableFileError(
            path, f"it is truncated or damaged ({first_line(err)})", remedy) from None


def require_keys(path: Path, record: Any, keys: set[str], remedy: str) -> dict:
    """`record` as a dict holding `keys`, or an UnreadableFileError (a .pt of another kind)."""
    if not isinstance(record, dict) or not keys <= record.keys():
        missing = sorted(keys - set(record)) if isinstance(record, dict) else sorted(keys)
        raise UnreadableFileError(
            path, f"it is not the expected kind of file (missing {', '.join(missing)})", remedy)
    return record

