"""A stage script called wrongly answers at once: its argument check runs before any heavy
import (torch alone takes over a second), so `python stages/<stage>.py` with wrong arguments
stays well under 2 s. Asserted through the imports (`python -X importtime`), not a clock."""

import subprocess
import sys

import pytest
from conftest import ROOT

HEAVY = ("torch", "torchvision", "matplotlib", "pandas", "sklearn", "scipy", "seaborn",
         "medmnist", "dvc", "torchmetrics")
STAGES = {"configure": 0, "download": 1, "preprocess": 1, "train": 2, "evaluate": 2,
          "gradients": 2, "plot": 1, "report": 0, "sources": 1}


def imported(stderr: str) -> set[str]:
    """Top-level packages `-X importtime` reports ('import time: self | cumulative | name')."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in stderr.splitlines() if line.startswith("import time:") and "|" in line}


def test_every_stage_script_is_checked():
    assert sorted(STAGES) == sorted(p.stem for p in (ROOT / "stages").glob("*.py"))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_wrong_call_answers_before_any_heavy_import(tmp_path, stage):
    args = ["x"] * (STAGES[stage] + 1)  # one argument too many
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "stages" / f"{stage}.py"),
                           *args], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: usage: python stages/"), proc.stderr
    assert f"`dvc repro {stage}" in last
    names = imported(proc.stderr)
    assert "gradattn" in names  # the parser saw the imports
    assert not names & set(HEAVY), sorted(names & set(HEAVY))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_import_check_can_fail():
    assert imported("import time:       120 |     1193158 |           torch\n") == {"torch"}
