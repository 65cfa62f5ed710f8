"""A stage script called wrongly answers at once: its argument check runs before any heavy
import (torch alone takes over a second), so `python stages/<stage>.py` with wrong arguments
stays well under 2 s. Asserted through the imports (`python -X importtime`), not a clock."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, committed, stage_here, tiny_npz, tiny_params, write_settings

HEAVY = ("torch", "torchvision", "matplotlib", "pandas", "sklearn", "scipy", "seaborn",
         "medmnist", "dvc", "torchmetrics")
STAGES = {"configure": 0, "download": 1, "preprocess": 1, "train": 2, "evaluate": 2,
          "gradients": 2, "plot": 1, "report": 0, "sources": 1}


def imported(stderr: str) -> set[str]:
    """Top-level packages `-X importtime` reports ('import time: self | cumulative | name')."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in stderr.splitlines() if line.startswith("import time:") and "|" in line}


def with_importtime(*args, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -X importtime *args` in `cwd`, importing this checkout's gradattn: the finished
    process and the top-level packages it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return proc, imported(proc.stderr)


def test_every_stage_script_is_checked():
    assert sorted(STAGES) == sorted(p.stem for p in (ROOT / "stages").glob("*.py"))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_wrong_call_answers_before_any_heavy_import(tmp_path, stage):
    args = ["x"] * (STAGES[stage] + 1)  # one argument too many
    proc, names = with_importtime(ROOT / "stages" / f"{stage}.py", *args, cwd=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: usage: python stages/"), proc.stderr
    assert f"`dvc repro {stage}" in last
    assert "gradattn" in names  # the parser saw the imports
    assert not names & set(HEAVY), sorted(names & set(HEAVY))
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("custom", [False, True], ids=["bundled", "custom npz"])
def test_preparing_data_and_the_report_run_without_torch(tmp_path, custom):
    """Stages that need no model start in a fraction of a second: torch and torchvision's
    import (seconds) is paid only where a model or a tensor is used. The data stages run for
    real here, on the bundled set and on a custom npz; the report's code is checked through
    its imports and the call it makes of each run."""
    (tmp_path / "machine.yaml").write_text(committed("machine.yaml"))
    if custom:
        tiny_npz(tmp_path)
        write_settings(tmp_path, tiny_params())
    else:
        (tmp_path / "params.yaml").write_text(committed("params.yaml"))
    assert stage_here("configure.py", cwd=tmp_path).returncode == 0
    dataset = yaml.safe_load((tmp_path / "params.yaml").read_text())["data"]["datasets"][0]
    for stage in ("download", "preprocess"):
        proc, names = with_importtime(ROOT / "stages" / f"{stage}.py", dataset, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "gradattn" in names and not names & {"torch", "torchvision"}, stage
    assert (tmp_path / "data/prepared" / dataset).is_dir()
    # The report's modules, and what it asks of each run (its options, setting and seed).
    code = ("import yaml, gradattn.reporting.report, gradattn.reporting.plots\n"
            "from gradattn.reporting.experiments import identify\n"
            "identify(yaml.safe_load(open('params.yaml')), 'd', 'gradattn')")
    report, names = with_importtime("-c", code, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "gradattn" in names and not names & {"torch", "torchvision"}


def test_the_import_check_can_fail():
    assert imported("import time:       120 |     1193158 |           torch\n") == {"torch"}
