"""Shared plumbing for every entry point (the thin scripts in stages/, the `gradattn` command,
scripts/ and benchmarks/): arguments, one-line errors, exit codes.

Whatever goes wrong ends in one line on stderr (what, where, what to do) and a non-zero exit;
GRADATTN_DEBUG=1 prints the Python traceback as well. Ctrl-C and SIGTERM end in one line and
exit 130.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from gradattn.core import paths
from gradattn.core.errors import GradattnError, first_line

DEBUG_ENV = "GRADATTN_DEBUG"
# Ctrl-C of a command: writers leave nothing half-made (temporaries renamed only when whole).
INTERRUPTED = "interrupted; nothing half-made was left: run the command again"
RERUN = "rerun `dvc repro` to finish (training resumes from its last checkpoint)"


def stage_args(*names: str) -> list[str]:
    """The script's positional arguments (DVC passes them, see dvc.yaml), or a usage error."""
    args = sys.argv[1:]
    if len(args) != len(names):
        script = Path(sys.argv[0])
        stage = script.stem + ("@" + "-".join(f"<{n}>" for n in names) if names else "")
        usage = " ".join([f"python stages/{script.name}", *(f"<{n}>" for n in names)])
        raise GradattnError(
            f"usage: {usage} (got {len(args)} argument(s)); DVC runs it for you: "
            f"`dvc repro {stage}`")
    return args


def stage_entry(main: Callable[[], None]) -> None:
    """Run a stage's main(); every error becomes one line on stderr and a non-zero exit."""
    # Under `dvc exp run` / `dvc queue` stdout is a pipe or a log file: flush every line, so
    # `dvc queue logs -f` shows each epoch as it ends.
    sys.stdout.reconfigure(line_buffering=True)

    def stage() -> None:
        _sweep()
        main()

    code = guarded(stage, interrupted=f"interrupted; the stage left no finished output: {RERUN}")
    if code:
        sys.exit(code)


def entry(main: Callable[[], int | None], *, interrupted: str = INTERRUPTED) -> None:
    """The same for a command (`gradattn`, scripts/, benchmarks/): exit with main()'s code."""
    sys.exit(guarded(main, interrupted=interrupted))


def guarded(main: Callable[[], int | None], *, interrupted: str = INTERRUPTED) -> int:
    """main()'s exit code (None is 0); an error is one line on stderr and code 2 (1 for a
    likely bug), Ctrl-C or SIGTERM the line `interrupted` (or the KeyboardInterrupt's own) and
    130. Cleanup is each writer's
    own (`finally`, atomic temporaries): both signals arrive as KeyboardInterrupt."""
    # `kill` or a job scheduler's SIGTERM leaves as Ctrl-C does (Python allows handlers in
    # the main thread only).
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        return main() or 0
    except Exception as err:
        return _report(err, *_describe(err))
    except KeyboardInterrupt as err:  # a message of its own says what was stopped
        return _report(err, 130, str(err) or interrupted)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


# The folders stages write (dvc.yaml's outputs) and the checkpoints of the parent repository.
SWEPT = ("configs", "data", "models", "metrics", "predictions", "plots", "plotdata")


def _sweep() -> None:
    """Remove what killed stages left (temporaries of dead processes), whatever stage runs
    next: a killed stage that DVC later serves from its run cache never cleans up itself."""
    # Imported here: the wrapper itself needs the standard library only (scripts/wheelhouse.py
    # runs it in a bare Python, before numpy or PyYAML are installed).
    from gradattn.core.io import sweep_dead

    try:
        removed = sweep_dead([*SWEPT, paths.parent_root() / paths.RESUME])
    except OSError:
        return  # a folder we cannot read: the stage will say so if it needs it
    if removed:
        print(f"removed {len(removed)} temporary file(s) that killed runs left: "
              f"{', '.join(str(p) for p in removed[:3])}{' …' * (len(removed) > 3)}")


def _describe(err: Exception) -> tuple[int, str]:
    """(exit code, message) for an error raised by a stage."""
    if isinstance(err, GradattnError):
        return 2, str(err)
    if isinstance(err, OSError):
        return 2, _os_error(err)
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return 2, ("out of memory: lower train.batch_size (or evaluate.batch_size), train "
                   "fewer models at once, or use a machine with more (GPU) memory")
    return 1, (f"unexpected {type(err).__name__}: {first_line(err)} (likely a bug in gradattn: "
               f"rerun with {DEBUG_ENV}=1 for the traceback and report it)")


_OS_REMEDIES = {
    errno.ENOSPC: "free some disk space (or move the project or DVC cache) and rerun",
    errno.EDQUOT: "free some space within your disk quota and rerun",
    errno.EACCES: "make it readable/writable for you (or work in a folder you own) and rerun",
    errno.EPERM: "make it readable/writable for you (or work in a folder you own) and rerun",
    errno.EROFS: "the file system is read-only: work in a writable copy of the project",
    errno.ENOENT: "check the path (and that earlier stages ran: `dvc repro`)",
}


def _os_error(err: OSError) -> str:
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    what = err.strerror or first_line(err)
    remedy = _OS_REMEDIES.get(err.errno, "check the file, its folder and the disk, and rerun")
    return f"{where or 'a file'}: {what}: {remedy}"


def _report(err: BaseException, code: int, message: str) -> int:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        # The error a one-line message replaced (`raise ... from None`) is what a bug
        # report needs: show it too.
        err.__suppress_context__ = False
        traceback.print_exception(err)
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt
