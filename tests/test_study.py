"""`gradattn study run`: the grid's cells packed onto slots (one environment per slot, so one
GPU per worker), a failed cell retried once and reported, and `--dry` end to end on the CPU
(real DVC experiments in a temporary git repository, published into results/<study>-dry)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pandas as pd
import pytest
from conftest import dvc, gradattn, gradattn_here, sh

from gradattn.core.durations import human_duration
from gradattn.studies.study import Job, schedule, start


def test_cells_are_packed_onto_slots_and_a_failure_is_retried_once(tmp_path):
    marker = tmp_path / "flaky-ran"

    def job(name: str, script: str) -> Job:
        # Each job notes the GPU its slot gave it.
        return Job(name, ["sh", "-c", f'echo "$CUDA_VISIBLE_DEVICES" > {tmp_path}/{name}.gpu; '
                          + script])

    jobs = [job("ok", "exit 0"),
            job("flaky", f"[ -e {marker} ] && exit 0; touch {marker}; exit 3"),
            job("broken", "echo broken; exit 1"),
            job("ok2", "exit 0")]
    lines: list[str] = []
    slots = [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    outcome = schedule(jobs, slots, tmp_path / "logs", say=lines.append, poll_seconds=0.05)
    assert sorted(outcome.done) == ["flaky", "ok", "ok2"]
    assert list(outcome.failed) == ["broken"]
    assert outcome.failed["broken"].name == "broken.try2.log"
    assert outcome.failed["broken"].read_text() == "broken\n"
    assert sorted(outcome.retried) == ["broken", "flaky"]
    gpus = {j.name: (tmp_path / f"{j.name}.gpu").read_text().strip() for j in jobs}
    assert set(gpus.values()) == {"0", "1"} and gpus["ok"] == "0"
    assert lines[0] == "study: started ok on GPU 0 [0/4 done, 1 running, 0 failed]"
    assert any("flaky failed (exit 3" in line and "runs once more" in line for line in lines)
    assert any(line.startswith("study: broken failed again (exit 1") for line in lines)
    assert lines[-1].endswith("[3/4 done, 0 running, 1 failed, about 0s left]")
    assert any("left]" in line and "about" in line for line in lines)


@pytest.mark.slow
def test_dry_study_runs_every_cell_as_an_experiment_and_publishes(tiny_project, tmp_path):
    repo = tiny_project(tmp_path / "p", {"models": ["resnet18", "gradattn"],
                                         "grid": {"seeds": [42], "pe": ["learnable"]}})
    done = gradattn("study", "run", "--dry", cwd=repo)
    err = done.stderr
    assert "study study-dry: 2 cells on the CPU, 2 at a time" in err
    assert "[2/2 done, 0 running, 0 failed" in err
    assert "published 2 runs: results/study-dry/README.md" in err

    names = dvc("exp", "list", "--name-only", cwd=repo).stdout.split()
    assert sorted(names) == ["tiny-gradattn-learnable-s42-dry", "tiny-resnet18-s42-dry"]
    out = repo / "results/study-dry"
    readme = (out / "README.md").read_text()
    assert "gradattn study run --dry" in readme  # the commands that made it
    assert "dvc exp run --temp -n tiny-resnet18-s42-dry" in readme
    assert sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip() in readme  # its commit
    rows = pd.read_csv(out / "tables.csv")
    assert set(rows["dataset"]) == {"tiny-dry"}
    assert set(rows["model"]) == {"resnet18", "gradattn"}
    runs = json.loads((out / "provenance.json").read_text())
    assert all(r["params"]["train.max_epochs"] == 1 for r in runs) and len(runs) == 2

    again = gradattn("study", "run", "--dry", cwd=repo, check=False)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "results/study-dry exists: pass --force" in again.stderr


def test_the_study_command_is_on_the_gradattn_command():
    import subprocess

    done = subprocess.run([sys.executable, "-m", "gradattn.cli", "study", "run",
                           "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--per-gpu K" in done.stdout and "--dry" in done.stdout


def test_starts_are_staggered(tmp_path):
    jobs = [Job(n, [sys.executable, "-c", f"import time; open({str(tmp_path / n)!r}, 'w')"
                    ".write(repr(time.time()))"]) for n in ("a", "b")]
    outcome = schedule(jobs, [{}, {}], tmp_path / "logs", say=lambda _: None,
                       poll_seconds=0.02, stagger_seconds=0.5)
    assert sorted(outcome.done) == ["a", "b"]
    assert all((tmp_path / n).exists() for n in ("a", "b"))  # both ran
    # When each was started (the scheduler's clock, just before its Popen): the children's own
    # timestamps would add their Python start-up, which a busy machine makes jitter by 0.1 s.
    assert jobs[1].started - jobs[0].started >= 0.5


def test_outside_a_dvc_project_is_one_line(tmp_path, monkeypatch, capsys):
    from gradattn.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["study", "run", "--dry"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no .dvc/ here" in err


@pytest.mark.parametrize("seconds, text", [(5, "5s"), (59.4, "59s"), (59.6, "1m00s"),
                                           (187, "3m07s"), (3599, "59m59s"), (3600, "1h00m"),
                                           (7325, "2h02m")])
def test_durations_read_as_people_write_them(seconds, text):
    # The study's ETA and the training loop's "at most ... left" share this one formatter.
    assert human_duration(seconds) == text


def _on_disk(top):
    return {str(p.relative_to(top)): p.read_bytes() if p.is_file() else None
            for p in sorted(top.rglob("*"))}


def _project_with_a_study(tmp_path):
    """A folder that looks like the project (.dvc/, code) with one published study."""
    repo = tmp_path / "project"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "params.yaml").write_text("models: [resnet18]\n")
    earlier = repo / "results" / "earlier"
    earlier.mkdir(parents=True)
    for name in ("README.md", "provenance.json", "tables.csv"):
        (earlier / name).write_text(f"{name} of an earlier study\n")
    (tmp_path / "beside.txt").write_text("a user's file beside the project\n")
    return repo


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", ".hidden", "/tmp"])
def test_a_study_name_that_is_not_one_folder_is_refused(tmp_path, name):
    # `--name ""` or `.` with --force once replaced all of results/ by the study.
    repo = _project_with_a_study(tmp_path)
    before = _on_disk(tmp_path)
    for extra in ([], ["--dry"]):
        done = gradattn_here("study", "run", "--name", name, "--force", *extra, cwd=repo)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"error: --name {name!r} is not allowed")
        assert _on_disk(tmp_path) == before  # nothing deleted, nothing written


def test_force_never_replaces_a_folder_a_study_did_not_write(tmp_path):
    repo = _project_with_a_study(tmp_path)
    mine = repo / "results" / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("my notes\n")
    before = _on_disk(tmp_path)
    done = gradattn_here("study", "run", "--name", "mine", "--force", cwd=repo)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "results/mine is not an earlier publication (it holds notes.md)" in done.stderr
    assert _on_disk(tmp_path) == before  # refused before any cell ran


def test_a_cell_can_be_stopped_even_when_the_study_was_started_ignoring_ctrl_c():
    # `cmd &` in a script or `nohup` starts the study with SIGINT ignored, which children
    # inherit; `stop` stops a cell with SIGINT, so each cell must start with it at its default.
    ignores = [sys.executable, "-c",
               "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        plain = subprocess.run(ignores, capture_output=True, text=True).stdout
        cell = start(ignores, stdout=subprocess.PIPE, text=True).communicate()[0]
    finally:
        signal.signal(signal.SIGINT, previous)
    assert plain.split() == ["True"]  # what a plain child inherits
    assert cell.split() == ["False"]  # a cell: Python's own Ctrl-C handler, so SIGINT stops it
