"""Which device a stage runs on, and one GPU per process on a machine with several (an
exclusive lock file per device).

`dvc queue start -j N` gives its workers no per-worker environment, so without this every
worker lands on cuda:0. A process takes the first device whose lock it can hold; the
kernel releases a flock when its holder exits, however it dies (SIGKILL included), so no
lock outlives a crashed run and no clean-up is ever needed.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from gradattn.core import paths
from gradattn.core.errors import GradattnError

# Held for the life of the process: closing a file would release its lock.
_held: dict[int, int] = {}


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on `path`; None if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious user
    return fd


def claim_device(count: int, lock_dir: Path, *, poll_seconds: float = 5.0,
                 log: Callable[[str], None] = print) -> int:
    """The index of a device among `count` that no other process holds, locked until this
    process exits. Waits while all are taken (more workers than GPUs)."""
    if _held:
        return next(iter(_held))
    waiting = False
    while True:
        for index in range(count):
            fd = try_lock(lock_dir / f"gpu{index}.lock")
            if fd is not None:
                _held[index] = fd
                return index
        if not waiting:
            log(f"all {count} GPUs are held by other runs (locks in {lock_dir}); waiting for one")
            waiting = True
        time.sleep(poll_seconds)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise GradattnError("train.device = 'cuda' but no CUDA GPU is visible: "
                            "use train.device=auto or cpu")
    if name == "cuda" and "CUDA_VISIBLE_DEVICES" not in os.environ:
        count = torch.cuda.device_count()
        if count > 1:  # queue workers share one environment: each takes a free GPU
            index = claim_device(count, paths.lock_dir())
            torch.cuda.set_device(index)
            print(f"using GPU {index} of {count} (locked in {paths.lock_dir()} until exit; "
                  "set CUDA_VISIBLE_DEVICES to choose)")
            return torch.device("cuda", index)
    return torch.device(name)


@contextmanager
def exact_fp32():
    """Full fp32 convolutions and matmuls on a GPU for the block (TF32 off; cuDNN's default
    is on), so evaluation and gradient analysis on a GPU give the CPU's numbers up to
    rounding (logits within 1e-4 relative; docs/gpu.md). Nothing changes on the CPU."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved
