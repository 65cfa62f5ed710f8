"""Atomic writes: an interrupted stage never leaves a file or folder that looks finished.

Every temporary is named `.<final name>.tmp-<pid>@<host>-<random>` beside its final path, so
a stage can find and remove what a killed run of it left (`remove_stale`), and any stage can
remove what dead processes left anywhere in the project (`sweep_dead`, at every stage's
start: a killed stage then served from DVC's run cache never runs its own clean-up).
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import socket
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from gradattn.core.errors import GradattnError

_UMASK = os.umask(0)
os.umask(_UMASK)
TMP = ".tmp-"  # marks a temporary: `.<name>.tmp-<pid>@<host>-<random>`
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_OWNER = re.compile(r"\.tmp-(\d+)@([A-Za-z0-9]+)-")


def _tag() -> str:
    """The part of a temporary's name after TMP that says which process made it."""
    return f"{os.getpid()}@{_HOST}-"

# What to do when the disk refuses a write, by errno.
_DISK_ADVICE = {
    errno.EACCES: "make it writable for this user (chmod/chown) or work in a checkout you own",
    errno.EPERM: "make it writable for this user (chmod/chown) or work in a checkout you own",
    errno.EROFS: "the file system is read-only: work in a writable checkout",
    errno.ENOSPC: "the disk is full: free space (e.g. `dvc gc -w`) and run again",
    errno.EDQUOT: "your disk quota is used up: free space and run again",
}


_READ_TOO = (errno.EACCES, errno.EPERM)  # raised by reads as well as writes


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


@contextmanager
def disk_errors(folder: str | os.PathLike):
    """Turn a refused write under `folder` (permissions, full disk, quota, read-only) into one
    line naming the folder and what to do; other errors pass through."""
    try:
        yield
    except OSError as err:
        # A refused read elsewhere (EACCES on a source file) is not this folder's problem.
        elsewhere = err.filename is not None and not _inside(err.filename, folder)
        if err.errno not in _DISK_ADVICE or (err.errno in _READ_TOO and elsewhere):
            raise
        raise GradattnError(
            f"cannot write to {folder}: {err.strerror or os.strerror(err.errno)}; "
            f"{_DISK_ADVICE[err.errno]}"
        ) from None


def _usual_mode(path: str | os.PathLike, folder: bool = False) -> None:
    # mkstemp/mkdtemp make 0600/0700; give the output the mode a plain open()/mkdir() would.
    os.chmod(path, (0o777 if folder else 0o666) & ~_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    with disk_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        # What a killed earlier write of this same file left; nothing else writes it now.
        remove_stale(path.parent, path.name)
        prefix = f".{path.name}{TMP}{_tag()}"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix or "")
        os.close(fd)
        try:
            _usual_mode(tmp)
            yield Path(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """An empty temporary folder beside `path`, for move_into_place(tmp, path) once complete."""
    path = Path(path)
    with disk_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}{TMP}{_tag()}"))
        _usual_mode(tmp, folder=True)
    return tmp


def move_into_place(tmp: Path, path: str | os.PathLike) -> None:
    """Replace the folder `path` (if any) by the complete folder `tmp`."""
    path = Path(path)
    with disk_errors(path.parent):
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield an empty temporary folder beside `path`; it replaces `path` only if the block
    succeeds, and is removed otherwise."""
    tmp = temp_dir_beside(path)
    try:
        yield tmp
        move_into_place(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def scratch_dir(parent: str | os.PathLike, name: str = "scratch"):
    """A temporary working folder inside `parent`, removed afterwards (and by remove_stale
    if the process is killed)."""
    with disk_errors(parent):
        Path(parent).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}{TMP}{_tag()}"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale(
    folder: str | os.PathLike, name: str | None = None, recursive: bool = False
) -> int:
    """Remove temporaries that killed runs left in `folder` (those of `name`, or all); call it
    at the start of the stage that owns them. Returns how many it removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    pattern = f".{glob.escape(name) if name else '*'}{TMP}*"
    stale = list(folder.rglob(pattern) if recursive else folder.glob(pattern))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(stale)


def walk_once(top: str | os.PathLike, seen_dirs: dict[str, Path] | None = None, *,
              where: str = "") -> Iterator[Path]:
    """Every file under `top` (sorted), following symlinked folders but entering each real
    folder once: a symlink loop, or a second way into a folder already listed, is refused with
    one line (prefixed by `where`, e.g. the setting that named the folder). `seen_dirs` (real
    path -> where it was met) may span several walks of one source."""
    seen_dirs = {} if seen_dirs is None else seen_dirs
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            raise GradattnError(
                f"{where + ': ' if where else ''}{dirpath} leads to {real}, already listed as "
                f"{seen_dirs[real]} (a symlink loop, or a link to another folder of the data): "
                "every file must be reachable one way only; remove the link")
        seen_dirs[real] = Path(dirpath)
        dirnames.sort()
        for filename in sorted(filenames):
            yield Path(dirpath) / filename


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _dead_owner(name: str) -> bool:
    """Whether the process that made temporary `name` is gone. A name without an owner (made
    before owners were recorded) counts as dead; one of another host is never judged."""
    owner = _OWNER.search(name)
    if owner is None:
        return True
    return owner.group(2) == _HOST and not _alive(int(owner.group(1)))


def sweep_dead(folders: Iterable[str | os.PathLike], depth: int = 3) -> list[Path]:
    """Remove the temporaries that dead processes left in `folders`, down to `depth` levels
    (`data/raw/<dataset>/.x.tmp-…` is 3 below `data`); a live process's are kept, so stages
    of concurrent experiments sharing a folder (checkpoints/) are safe. Returns what went."""
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for level in range(depth):
            for path in folder.glob("/".join(["*"] * level + [f".*{TMP}*"])):
                if not _dead_owner(path.name) or not path.exists():
                    continue
                _remove(path)
                removed.append(path)
    return removed


def sweep_dead_of(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporaries of `name` (`.<name>.tmp-<pid>@<host>-…`) in `folder` whose
    process is gone: what a killed earlier write of `name` left. Unlike sweep_dead, only
    names that record their owner are judged, so a folder outside the project (where other
    programs' files may look alike) loses nothing else."""
    removed = []
    for path in Path(folder).glob(f".{glob.escape(name)}{TMP}*"):
        if _OWNER.search(path.name) is None or not _dead_owner(path.name):
            continue
        _remove(path)
        removed.append(path)
    return removed


def _remove(path: Path) -> None:
    """A temporary file or folder (a link is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def file_digest(path: str | os.PathLike, algorithm: str = "md5", opener: Callable = open) -> str:
    """Hex digest of a file's bytes; `opener=gzip.open` hashes what a .gz decompresses to."""
    digest = hashlib.new(algorithm)
    with opener(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def one_line(err: object) -> str:
    """An exception's message folded onto one line."""
    return " ".join(str(err).split())


def json_text(data: Any, path: str | os.PathLike) -> str:
    """`data` as indented JSON text for the file `path`; NaN and Infinity (not JSON: other
    readers reject them) are refused with one line naming the file and the key."""
    try:
        return json.dumps(data, indent=2, allow_nan=False) + "\n"
    except ValueError:
        key, value = _non_finite(data) or ("a value", "not finite")
        raise GradattnError(
            f"{path}: not written: {key} is {value}, not a finite number (JSON has no "
            "NaN/Infinity); a setting or the data made the run diverge: check train.lr and the "
            "inputs, and rerun with GRADATTN_DEBUG=1 to see where") from None


def _non_finite(node: Any, key: str = "") -> tuple[str, float] | None:
    """(key path, value) of the first NaN or infinite float in `node`."""
    if isinstance(node, float) and not math.isfinite(node):
        return key or "the value", node
    if isinstance(node, dict):
        children = ((f"{key}.{k}" if key else str(k), v) for k, v in node.items())
    elif isinstance(node, (list, tuple)):
        children = ((f"{key}[{i}]", v) for i, v in enumerate(node))
    else:
        return None
    return next((found for k, v in children if (found := _non_finite(v, k))), None)


def write_json(path: str | os.PathLike, data: Any) -> None:
    text = json_text(data, path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_with(path: str | os.PathLike, writer: Callable[[Path], None], suffix: str | None = None):
    """Call writer(tmp_path) and move the result onto `path` atomically."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)


# What parsing a damaged or cut file raises (numpy, json, zipfile, pickle, PIL, YAML): the
# file is not what it should be, not a bug in gradattn.
_DAMAGE = (ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, pickle.UnpicklingError,
           SyntaxError, yaml.YAMLError)


def damaged_file(path: str | os.PathLike, err: BaseException, fix: str) -> GradattnError:
    """The one line for a file that cannot be parsed: its name, why, and `fix`."""
    # numpy's advice for pickled data is to load it unsafely: never pass it on.
    reason = ("it holds pickled Python objects" if "pickle" in str(err)
              else one_line(err) or type(err).__name__)
    return GradattnError(f"{path} is damaged or not the file it should be ({reason}): {fix}")


@contextmanager
def reading(path: str | os.PathLike, fix: str):
    """Parse `path` inside this block: a truncated or damaged file becomes one line naming it
    and `fix` (what to do). A refused read (permissions, a missing file: OSError with an errno)
    passes through to the stage runner, which names the file too."""
    try:
        yield
    except GradattnError:
        raise
    except OSError as err:
        if err.errno is not None:
            raise
        raise damaged_file(path, err, fix) from err
    except _DAMAGE as err:
        raise damaged_file(path, err, fix) from err


# dvc.yaml's outputs that DVC does not cache (`cache: false`), which `dvc checkout` cannot
# bring back: those committed to git, and those only a rerun makes again (tests/
# test_entry_points.py checks these against dvc.yaml).
IN_GIT = ("configs/", "data/manifests/")
NOT_CACHED = ("plots/", "plotdata/", "metrics/summary.json")
NOT_CACHED_SUFFIXES = (".history.json",)


def restore_hint(path: str | os.PathLike, stage: str | None = None) -> str:
    """What to do about a damaged DVC output: restore it, or make it again. `dvc checkout`
    refuses to overwrite a modified output without --force."""
    again = f"`dvc repro -f {stage}`" if stage else "`dvc repro`"
    where = Path(path)
    if where.is_absolute() and where.is_relative_to(Path.cwd()):
        where = where.relative_to(Path.cwd())
    where = where.as_posix()
    if f"{where}/".startswith(IN_GIT):
        return f"restore it with `git checkout -- {where}` or re-create it with {again}"
    if f"{where}/".startswith(NOT_CACHED) or where.endswith(NOT_CACHED_SUFFIXES):
        return f"re-create it with {again}"
    return f"restore it with `dvc checkout --force {where}` or re-create it with {again}"


def read_json(path: str | os.PathLike, fix: str | None = None) -> Any:
    with reading(path, fix or restore_hint(path)):
        return json.loads(Path(path).read_text(encoding="utf-8"))
