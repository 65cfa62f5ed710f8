"""The tests give the same result in a used workspace: one where `dvc exp run` left an
experiment's settings and results (README's workflow). They read the study's state as
committed (conftest.committed / copy_committed) and the code from the working tree."""

from __future__ import annotations

import copy
import re
import shutil
import sys

import pytest
import yaml
from conftest import (
    ROOT,
    STUDY_STATE,
    TINY_PARAMS,
    committed,
    deep_update,
    dvc,
    env_for,
    sh,
)

# `ROOT / "params.yaml"` and the like: the user's workspace, which an experiment rewrites.
_STATE_PATHS = "|".join(map(re.escape, STUDY_STATE))
WORKSPACE_STATE = re.compile(rf"ROOT\s*/\s*[\"'](?:{_STATE_PATHS})\b")

# The quick tests that read the study's state, and the fixture check below (the slow tests
# build their projects with those fixtures). The first four failed in a used workspace.
READ_THE_STUDY = [
    "tests/test_config.py::test_defaults_are_the_papers_protocol",
    "tests/test_params_file.py",
    "tests/test_docs.py::test_docs_params_explains_every_key_of_params_yaml",
    "tests/test_plots.py::test_report_stage_writes_results_summary_and_comparison",
    "tests/test_untrusted_input.py::test_the_dvc_cache_is_never_linked_into_the_workspace",
    "tests/test_used_workspace.py::test_test_projects_start_from_the_committed_params",
]
EXPERIMENT = ["-S", "model.pe=rope", "-S", "train.max_epochs=1", "-S", "gradients.batches=2"]


def test_no_test_reads_the_study_state_from_the_workspace():
    assert WORKSPACE_STATE.search('yaml.safe_load((ROOT / "params.yaml").read_text())')
    assert WORKSPACE_STATE.search("shutil.copytree(ROOT / 'configs', tmp_path)")
    assert not WORKSPACE_STATE.search('ROOT / "stages" / "report.py"')  # code: working tree
    offenders = [f"{path.name}:{n}: {line.strip()}"
                 for path in sorted((ROOT / "tests").glob("*.py"))
                 if path.name != "test_used_workspace.py"  # its own examples above
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if WORKSPACE_STATE.search(line)]
    assert not offenders, "read these from git HEAD (conftest.committed):\n" + "\n".join(
        offenders)


def test_test_projects_start_from_the_committed_params(tiny_project, dvc_repo, tmp_path):
    shipped = yaml.safe_load(committed("params.yaml"))
    assert (yaml.safe_load((dvc_repo.path / "params.yaml").read_text())
            == deep_update(copy.deepcopy(shipped), TINY_PARAMS))
    tiny = yaml.safe_load((tiny_project(tmp_path / "tiny") / "params.yaml").read_text())
    assert tiny["model"]["pe"] == shipped["model"]["pe"]
    assert tiny["recipe"] == shipped["recipe"] and tiny["train"]["seed"] == shipped["train"]["seed"]


@pytest.mark.slow
def test_the_tests_that_read_the_study_pass_with_an_experiment_applied(tmp_path):
    """A copy of the committed project, the code under test laid over it, and a real
    `dvc exp run` applied to its workspace (configure only: it rewrites params.yaml, configs/
    and dvc.lock as the whole pipeline would, in seconds); then those tests, there."""
    clone = tmp_path / "clone"
    clone.mkdir()
    sh("git", "archive", "--format=tar", "-o", tmp_path / "head.tar", "HEAD", cwd=ROOT)
    shutil.unpack_archive(tmp_path / "head.tar", clone)
    sh("git", "init", "-q", cwd=clone)
    sh("git", "add", "-A", cwd=clone)
    sh("git", "commit", "-qm", "the committed project", cwd=clone)
    # The developer's code, edits and new tests included, is what is tested.
    for name in ("gradattn", "stages", "tests", "dvc.yaml", "pyproject.toml"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, clone / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, clone / name)

    dvc("exp", "run", "configure", *EXPERIMENT, cwd=clone)
    changed = sh("git", "status", "--porcelain", "--", *STUDY_STATE, cwd=clone).stdout
    assert {"params.yaml", "dvc.lock", "configs/models/gradattn.json"} <= {
        line[3:] for line in changed.splitlines()}
    assert "pe: rope" in (clone / "params.yaml").read_text()

    proc = sh(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
              *READ_THE_STUDY,
              cwd=clone, env=env_for(clone), check=False)
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary
