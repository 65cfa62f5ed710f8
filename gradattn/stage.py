"""Shared plumbing for the thin scripts in stages/: one-line errors, non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable

from gradattn.errors import GradattnError


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); a GradattnError becomes one line on stderr and exit code 2."""
    # Under `dvc exp run` / `dvc queue` stdout is a pipe or a log file: flush every line, so
    # `dvc queue logs -f` shows each epoch as it ends.
    sys.stdout.reconfigure(line_buffering=True)
    try:
        main()
    except GradattnError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; the stage left no finished output", file=sys.stderr)
        sys.exit(130)
