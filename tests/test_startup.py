"""A stage script called wrongly answers at once: its argument check runs before any heavy
import (torch alone takes over a second), so `python stages/<stage>.py` with wrong arguments
stays well under 2 s. Asserted through the imports (`python -X importtime`), not a clock."""


import pytest
import yaml
from conftest import (
    ROOT,
    committed,
    imported,
    tiny_npz,
    tiny_params,
    with_importtime,
    write_settings,
)

HEAVY = ("torch", "torchvision", "matplotlib", "pandas", "sklearn", "scipy", "seaborn",
         "medmnist", "dvc", "torchmetrics")
STAGES = {"configure": 0, "download": 1, "preprocess": 1, "train": 2, "evaluate": 2,
          "gradients": 2, "plot": 1, "report": 0, "manifest": 1}


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
def test_configure_preparing_data_and_the_report_run_without_torch(tmp_path, custom):
    """Stages that need no model start in a fraction of a second: torch and torchvision's
    import (seconds) is paid only where a model or a tensor is used. configure checks the
    model options without building a model. configure and the data stages run for real here,
    on the bundled set and on a custom npz; the report's code is checked through its imports
    and the call it makes of each run."""
    (tmp_path / "machine.yaml").write_text(committed("machine.yaml"))
    if custom:
        tiny_npz(tmp_path)
        write_settings(tmp_path, tiny_params())
    else:
        (tmp_path / "params.yaml").write_text(committed("params.yaml"))
    dataset = yaml.safe_load((tmp_path / "params.yaml").read_text())["data"]["datasets"][0]
    for stage, args in (("configure", ()), ("download", (dataset,)), ("preprocess", (dataset,))):
        proc, names = with_importtime(ROOT / "stages" / f"{stage}.py", *args, cwd=tmp_path)
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
