"""Advice that works: each restore hint the project prints is run as printed, in a real DVC
project, and the problem is gone; the table after switching data.datasets works once `dvc
repro` ran; `gradattn study run`'s flags are checked against the machine."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, dvc, env_for, gradattn, python, sh

from gradattn.core.io import restore_hint


# --- which hint each output gets, checked against dvc.yaml -------------------------------------
def outputs() -> list[tuple[str, bool]]:
    """(path of every out/metric/plot in dvc.yaml, with ${...} as `x`, whether DVC caches it)."""
    found = []
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        body = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for out in body.get(kind) or []:
                path, opts = (out, {}) if isinstance(out, str) else next(iter(out.items()))
                path = re.sub(r"\$\{[^}]+\}", "x", path)
                found.append((path, (opts or {}).get("cache", True)))
    return found


def test_each_output_gets_a_hint_that_can_restore_it():
    assert len(outputs()) > 10
    for path, cached in outputs():
        hint = restore_hint(path, "stage@x")
        if cached:
            assert f"`dvc checkout --force {path}`" in hint, path
        elif path.startswith("configs") or path.startswith("data/manifests/"):
            # Not cached: committed to git (.gitignore does not list them).
            assert f"`git checkout -- {path}`" in hint, path
        else:  # only a rerun makes it again
            assert "checkout" not in hint and "`dvc repro -f stage@x`" in hint, path


# --- every printed restore hint, run as printed -----------------------------------------------
@pytest.fixture(scope="module")
def reproduced(tiny_project, tmp_path_factory) -> Path:
    """A tiny project after `dvc repro`, committed (configs/ and dvc.lock are in git)."""
    repo = tiny_project(tmp_path_factory.mktemp("advice") / "p", {"models": ["resnet18"]})
    dvc("repro", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "results", cwd=repo)
    return repo


def damage(path: Path) -> bytes:
    """Cut the file in half (outputs checked out from the cache may be read-only)."""
    whole = path.read_bytes()
    os.chmod(path, 0o644)
    path.write_bytes(whole[: len(whole) // 2])
    return whole


CASES = {
    # damaged file: the stage that reads it and prints the hint
    "data/prepared/tiny/meta.json": ["stages/train.py", "tiny", "resnet18"],
    "configs/tiny/prepare.json": ["stages/preprocess.py", "tiny"],
    "models/tiny/resnet18.pt": ["stages/evaluate.py", "tiny", "resnet18"],
    "metrics/tiny/resnet18.json": ["stages/plot.py", "tiny"],
    "metrics/tiny/resnet18.history.json": ["stages/plot.py", "tiny"],
}


@pytest.mark.slow
@pytest.mark.parametrize("damaged", list(CASES))
def test_every_printed_restore_hint_works_as_printed(reproduced, tmp_path, damaged):
    project = tmp_path / "p"
    shutil.copytree(reproduced, project, symlinks=True)
    original = damage(project / damaged)
    failed = python(*CASES[damaged], cwd=project, env=env_for(project))
    lines = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert failed.returncode == 2 and len(lines) == 1, failed.stderr  # (and progress bars)
    assert "damaged" in lines[0] and "Traceback" not in failed.stderr
    commands = re.findall(r"`((?:dvc checkout|git checkout|dvc repro)[^`]*)`", lines[0])
    assert commands, lines[0]
    for command in commands:  # each alternative the line offers, on a fresh copy
        trial = tmp_path / f"try-{commands.index(command)}"
        shutil.copytree(project, trial, symlinks=True)
        argv = shlex.split(command)
        if argv[0] == "dvc":
            done = dvc(*argv[1:], cwd=trial, check=False)
        else:
            done = sh(*argv, cwd=trial, check=False)
        assert done.returncode == 0, f"`{command}` failed:\n{done.stdout}\n{done.stderr}"
        if "history.json" not in damaged:
            assert (trial / damaged).read_bytes() == original, command
            continue
        # Made again by a rerun (its seconds differ): the stage that refused it reads it now.
        again = python(*CASES[damaged], cwd=trial, env=env_for(trial))
        assert again.returncode == 0, (command, again.stderr)


@pytest.mark.slow  # its project is reproduced by real `dvc repro` (a minute)
def test_a_checkout_without_force_is_refused_for_a_modified_output(reproduced, tmp_path):
    """Why the hints say --force: DVC will not overwrite a modified output without it."""
    project = tmp_path / "p"
    shutil.copytree(reproduced, project, symlinks=True)
    damage(project / "metrics/tiny/resnet18.json")
    assert dvc("checkout", "metrics/tiny/resnet18.json", cwd=project, check=False).returncode


# --- the table after a dataset switch ---------------------------------------------------------
@pytest.mark.slow
def test_the_table_works_after_switching_datasets_and_repro(reproduced, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(reproduced, project, symlinks=True)
    shutil.copy(project / "tiny.npz", project / "other.npz")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["datasets"] = ["other"]
    params["data"]["custom"]["other"] = {"format": "npz", "path": "other.npz"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("repro", cwd=project)
    # dvc.lock keeps tiny's entries and metrics/tiny/ stays, but configs/tiny/ is gone: the
    # table holds the pipeline's datasets only, with or without a commit.
    table = gradattn("table", "--no-exps", "--table", "1", cwd=project)
    assert "| other |" in table.stdout and "| tiny |" not in table.stdout
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "other", cwd=project)
    assert "| other |" in gradattn("table", "--table", "1", cwd=project).stdout
    # The earlier results are still there, by revision.
    old = gradattn("table", "--no-exps", "--no-workspace", "--rev", "HEAD~1", "--table", "1",
                   cwd=project)
    assert "| tiny |" in old.stdout


# --- study flags checked against the machine --------------------------------------------------
def fake_gpus(tmp_path: Path, monkeypatch, count: int) -> None:
    """An nvidia-smi on PATH that lists `count` GPUs (none: no nvidia-smi at all)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if count:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: Fake (UUID: GPU-{i})'\n"
                                               for i in range(count)))
        smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")


@pytest.mark.parametrize("gpus_here, args, expected", [
    (0, ["--gpus", "4"], "--gpus 4: this machine shows 0 GPU(s) (`nvidia-smi -L`): pass "
                         "--gpus 0 (the CPU) or leave --gpus out"),
    (2, ["--gpus", "4"], "--gpus 4: this machine shows 2 GPU(s) (`nvidia-smi -L`): pass "
                         "--gpus 1..2 or leave --gpus out"),
    (0, ["--mps"], "--mps shares a CUDA GPU among the cells"),
    (2, ["--mps", "--gpus", "0"], "--mps shares a CUDA GPU among the cells"),
    (2, ["--mps", "--dry"], "--mps shares a CUDA GPU among the cells"),
])
def test_study_flags_are_checked_against_the_machine(tmp_path, monkeypatch, capsys, gpus_here,
                                                     args, expected):
    from gradattn.cli import main

    fake_gpus(tmp_path, monkeypatch, gpus_here)
    monkeypatch.chdir(tmp_path)
    assert main(["study", "run", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "results").exists() and not (tmp_path / ".dvc").exists()


def test_the_advice_for_too_many_gpus_is_accepted(tmp_path, monkeypatch, capsys):
    """Following it (--gpus 2 on a machine with two) passes the check: the study goes on to
    its next one (here: no DVC project)."""
    from gradattn.cli import main

    fake_gpus(tmp_path, monkeypatch, 2)
    monkeypatch.chdir(tmp_path)
    assert main(["study", "run", "--gpus", "2", "--mps"]) == 2
    assert "no .dvc/ here" in capsys.readouterr().err
