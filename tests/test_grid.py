"""`gradattn grid`: the study's cells from params, one DVC experiment each, and the study
shared through a git remote and a DVC remote (real git, real DVC, real training)."""

from __future__ import annotations

import io
import re
import shlex
import subprocess

import pandas as pd
import pytest
from conftest import ROOT, dvc, env_for, gradattn, sh, write_settings

from gradattn.cli import main
from gradattn.core.errors import ConfigError
from gradattn.studies.grid import cells

PARAMS = {"recipe": "corrected", "data": {"datasets": ["cifar10", "pcam"]},
          "models": ["resnet18", "gradattn"], "model": {"pe": "learnable"},
          "train": {"seed": 42}, "grid": {"seeds": [1, 2, 3], "pe": ["none", "learnable", "rope"]}}


def test_cells_span_datasets_models_encodings_and_seeds():
    grid = cells(PARAMS)
    # 2 datasets x (ResNet-18 + GradAttn x 3 encodings) x 3 seeds: the paper's grid, reduced.
    assert len(grid) == 2 * (1 + 3) * 3
    assert len({c.name for c in grid}) == len(grid)
    resnet = [c for c in grid if c.model == "resnet18"]
    assert len(resnet) == 2 * 3 and all(c.pe is None for c in resnet)  # its own cell, once
    assert grid[0].name == "cifar10-resnet18-s1"
    assert grid[3].name == "cifar10-gradattn-none-s1"
    assert grid[3].overrides == ["recipe=corrected", "data.datasets=[cifar10]",
                                 "models=[gradattn]", "train.seed=1", "model.pe=none"]
    assert cells(PARAMS) == grid  # stable: the index of a cell never moves


def test_the_recipe_names_its_cells_and_missing_grid_keys_take_the_study_values():
    params = {**PARAMS, "recipe": "notebooks", "grid": {}}
    grid = cells(params)
    assert [c.name for c in grid] == [
        "cifar10-resnet18-s42-notebooks", "cifar10-gradattn-learnable-s42-notebooks",
        "pcam-resnet18-s42-notebooks", "pcam-gradattn-learnable-s42-notebooks"]
    assert "recipe=notebooks" in grid[0].overrides


@pytest.mark.parametrize("grid, words", [
    ({"seeds": []}, "grid.seeds = [] is not allowed: a non-empty list of integer seeds"),
    ({"seeds": ["a"]}, "grid.seeds = ['a'] is not allowed"),
    ({"pe": ["sine"]}, "grid.pe holds 'sine', which is not allowed: choose from none, "
                       "learnable, rope"),
    ({"sedes": [1]}, "grid.sedes is not a grid key: the grid section takes seeds and pe"),
])
def test_a_bad_grid_section_is_one_line_naming_the_key(grid, words):
    with pytest.raises(ConfigError) as err:
        cells({**PARAMS, "grid": grid})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_list_count_and_an_index_out_of_range(tmp_path, monkeypatch, capsys):
    write_settings(tmp_path, PARAMS)
    monkeypatch.chdir(tmp_path)
    assert main(["grid", "--count"]) == 0
    assert capsys.readouterr().out == "24\n"
    assert main(["grid", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 24 and lines[6].startswith("6\tcifar10-gradattn-learnable-s1\t")
    assert main(["grid", "--index", "24"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--index 24 is out of range: this grid has 24 cells, 0-23" in err
    assert "gradattn grid --count" in err


def test_pushing_without_remotes_says_what_to_set_up_before_any_training(tmp_path):
    repo = tmp_path / "p"
    repo.mkdir()
    write_settings(repo, PARAMS)
    sh("git", "init", "-q", cwd=repo)
    dvc("init", "-q", cwd=repo)
    env = {**env_for(repo), "PYTHONPATH": str(ROOT)}  # the code under test, not in `repo`
    err = gradattn("grid", "--index", "0", "--push", cwd=repo, check=False, env=env)
    assert err.returncode == 2 and err.stderr.count("\n") == 1, err.stderr
    assert "no git remote 'origin' to push experiments to: add one with `git remote add " \
           "origin <url>`" in err.stderr

    sh("git", "remote", "add", "origin", tmp_path / "origin.git", cwd=repo)
    # DVC pushing by itself (DVC_EXP_AUTO_PUSH) is checked the same way, without --push.
    err = gradattn("grid", "--index", "0", cwd=repo, check=False,
                   env={**env, "DVC_EXP_AUTO_PUSH": "true"})
    assert err.returncode == 2 and err.stderr.count("\n") == 1, err.stderr
    assert "no default DVC remote to push the experiment's data to: add one with " \
           "`dvc remote add -d storage <url>`" in err.stderr
    assert not (repo / "dvc.lock").exists()  # nothing ran


@pytest.mark.slow
def test_two_workers_share_a_grid_through_git_and_a_dvc_remote(tiny_project, tmp_path):
    """Two worker clones each run two cells and push; an analyst pulls and pools them."""
    origin, store = tmp_path / "origin.git", tmp_path / "dvc-store"
    sh("git", "init", "-q", "--bare", origin, cwd=tmp_path)
    project = tiny_project(tmp_path / "project", {
        "models": ["resnet18", "gradattn"], "grid": {"seeds": [1, 2], "pe": ["none"]}})
    sh("git", "remote", "add", "origin", origin, cwd=project)
    dvc("remote", "add", "-d", "storage", store, cwd=project)
    sh("git", "commit", "-qam", "remotes", cwd=project)
    sh("git", "push", "-q", "origin", "HEAD", cwd=project)
    names = gradattn("grid", "--list", cwd=project).stdout.split("\n")
    names = [line.split("\t")[1] for line in names if line]
    assert names == ["tiny-resnet18-s1", "tiny-resnet18-s2",
                     "tiny-gradattn-none-s1", "tiny-gradattn-none-s2"]

    # Worker A takes the even cells, B the odd ones (a strided array): every model's two
    # seeds come from different machines.
    workers = {"a": (0, 2), "b": (1, 3)}
    for worker, indices in workers.items():
        clone = tmp_path / worker
        sh("git", "clone", "-q", origin, clone, cwd=tmp_path)
        for index in indices:
            # `evaluate`: train and test only, no figures (they do not enter the table).
            gradattn("grid", "--index", index, "--push", "evaluate", cwd=clone)
    # A task run again (a resubmitted array) skips its finished cell and pushes it again.
    again = gradattn("grid", "--index", 1, "--push", "evaluate", cwd=tmp_path / "b")
    assert "tiny-resnet18-s2 is already an experiment here: skipped" in again.stderr
    assert "Running stage" not in again.stdout

    analyst = tmp_path / "analyst"
    sh("git", "clone", "-q", origin, analyst, cwd=tmp_path)
    dvc("exp", "pull", "origin", cwd=analyst)
    listed = dvc("exp", "list", "--name-only", cwd=analyst).stdout.split()
    assert sorted(listed) == sorted(names)
    assert len(list(store.rglob("*"))) > 0  # the trained models went to the DVC remote
    table = gradattn("table", "--format", "csv", "--table", "1", "--no-workspace",
                     cwd=analyst).stdout
    df = pd.read_csv(io.StringIO(table)).set_index("variant")
    ran = df[df["n"] > 0]  # Table 1 lists every encoding's column; these cells ran
    assert set(ran.index) == {"ResNet-18", "GradAttn (no PE)"}, df
    # Seed 1 from worker A pooled with seed 2 from worker B.
    assert (ran["n"] == 2).all() and (ran["seeds"] == "1 2").all(), df


def test_the_slurm_array_script_runs_gradattn_grid():
    script = ROOT / "scripts/slurm/grid.sbatch"
    text = script.read_text()
    assert "gradattn grid --index \"$SLURM_ARRAY_TASK_ID\"" in text
    assert "#SBATCH --gres=gpu:1" in text
    proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("doc, least", [("docs/scale.md", 6), ("docs/running.md", 5),
                                        ("docs/reproduce.md", 6), ("docs/gpu.md", 5),
                                        ("README.md", 2)])
def test_every_gradattn_command_printed_in_the_docs_is_accepted(doc, least):
    """Each `gradattn ...` line of a page's code blocks parses as printed (shell variables
    stand for a number; `|` or `>` ends a command)."""
    from gradattn.cli import parser

    text = (ROOT / doc).read_text()
    commands = re.findall(r"^[ ]*(gradattn [^#|>\n]+)", text, re.M)
    assert len(commands) >= least, commands
    for command in commands:
        words = shlex.split(re.sub(r'"?\$\w+"?', "0", command))
        try:
            parser().parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"{doc} prints a command gradattn refuses: {command}")


def test_the_listing_is_a_jobs_file_for_cpu_lanes(tmp_path, monkeypatch, capsys):
    """docs/running.md: `gradattn grid --list | cut -f2- > study.jobs` gives scripts/cpu_lanes.sh
    one job per cell, named as the cell, its -S words as a shell reads them."""
    write_settings(tmp_path, PARAMS)
    monkeypatch.chdir(tmp_path)
    assert main(["grid", "--list"]) == 0
    listing = capsys.readouterr().out
    (tmp_path / "listing").write_text(listing)
    sh("bash", "-c", "cut -f2- listing > study.jobs", cwd=tmp_path)
    jobs = tmp_path / "study.jobs"
    status = sh("bash", ROOT / "scripts/cpu_lanes.sh", "status", jobs, tmp_path / "lanes",
                cwd=tmp_path).stdout.splitlines()
    all_cells = cells(PARAMS)
    assert status == [f"{c.name}: waiting" for c in all_cells]
    for line, cell in zip(jobs.read_text().splitlines(), all_cells, strict=True):
        words = shlex.split(line)[1:]
        assert words[::2] == ["-S"] * len(cell.overrides) and words[1::2] == cell.overrides
    assert any("[" in s for c in all_cells for s in c.overrides)  # quoted: no glob for a shell
