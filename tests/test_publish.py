"""gradattn table --publish: a study folder whose every number a reader can trace to the
dvc.lock entries of the run that made it; refused over an existing folder without --force."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from test_table import record_run

from gradattn.cli import main

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def _study_repo(tmp_path):
    """A git + DVC repo whose HEAD holds two runs (seeds 1 and 2) of GradAttn on d1, each in
    its own commit, with a training history for the figures."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    for seed, top1 in ((1, 0.25), (2, 0.75)):
        record_run(repo, "gradattn", seed, top1)
        history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "train_accuracy": e / 4,
                    "val_accuracy": top1 * e / 2} for e in (1, 2)]
        (repo / "metrics/d1/gradattn.history.json").write_text(json.dumps(history))
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
        subprocess.run([*GIT, "commit", "-qm", f"seed {seed}"], cwd=repo, check=True)
        subprocess.run(["git", "tag", f"seed{seed}"], cwd=repo, check=True)
    return repo


def test_publish_writes_tables_provenance_and_figures(tmp_path, capsys):
    repo = _study_repo(tmp_path)
    commands = tmp_path / "commands.sh"
    commands.write_text("dvc exp run -S train.seed=1\ndvc exp run -S train.seed=2\n")
    out = repo / "results" / "toy"
    args = ["table", "--repo", str(repo), "--no-exps", "--no-workspace", "--rev", "seed1",
            "--rev", "seed2", "--publish", str(out), "--commands", str(commands)]
    assert main(args) == 0
    assert "published 2 runs" in capsys.readouterr().err
    readme = (out / "README.md").read_text()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()
    assert f"from commit `{head}`" in readme
    assert "dvc exp run -S train.seed=1" in readme  # the commands, verbatim
    assert "Recipe: **corrected**" in readme and "Table 5" in readme
    assert "| d1 | – | – | – | 50.00 ± 35.36 (n=2) |" in readme  # Table 1, pooled over seeds
    # Each run's provenance: the dvc.lock entries of its own revision.
    rows = json.loads((out / "provenance.json").read_text())
    assert [(r["seed"], r["top1"], r["model_md5"]) for r in rows] == [
        (1, 0.25, "gradattn1"), (2, 0.75, "gradattn2")]
    assert rows[0]["data_md5"] == "aa.dir" and rows[0]["params"]["train.max_epochs"] == 1
    assert rows[0]["rev"] != rows[1]["rev"] and rows[0]["source"] == "rev seed1"
    assert "gradattn1" in readme and "aa.dir" in readme
    csv = pd.read_csv(out / "tables.csv")
    assert csv.query("metric == 'top1' and variant == 'GradAttn (RoPE)'")["n"].item() == 2
    figure = out / "curves-1-d1.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({figure.name})" in readme
    # Each run's per-epoch history, as its own revision holds it, named as in provenance.json.
    hist = json.loads((out / "histories.json").read_text())
    assert [(h["seed"], h["source"], h["variant"]) for h in hist] == [
        (r["seed"], r["source"], r["variant"]) for r in rows]
    assert [e["val_accuracy"] for e in hist[1]["history"]] == [0.375, 0.75]


def test_publish_refuses_to_overwrite_without_force(tmp_path, capsys):
    repo = _study_repo(tmp_path)
    out = repo / "results" / "toy"
    args = ["table", "--repo", str(repo), "--no-exps", "--no-workspace", "--rev", "seed1",
            "--publish", str(out)]
    assert main(args) == 0  # an earlier publication
    (out / "README.md").write_text("an earlier study\n")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists: pass --force to replace it" in err
    assert (out / "README.md").read_text() == "an earlier study\n"
    assert main([*args, "--force"]) == 0
    assert "# toy" in (out / "README.md").read_text()
    assert not [p for p in out.parent.iterdir() if p.name != "toy"]  # no temporary left


def test_publish_with_no_runs_writes_nothing(tmp_path, capsys):
    repo = _study_repo(tmp_path)
    out = repo / "results" / "empty"
    assert main(["table", "--repo", str(repo), "--no-exps", "--no-workspace",
                 "--publish", str(out)]) == 2
    assert "no runs to publish" in capsys.readouterr().err and not out.exists()


def test_an_unreadable_commands_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    repo = _study_repo(tmp_path)
    out = repo / "results" / "toy"
    args = ["table", "--repo", str(repo), "--no-exps", "--no-workspace", "--rev", "seed1",
            "--publish", str(out), "--commands", str(tmp_path / "missing.sh")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.sh: No such file or directory" in err
    assert not out.exists()


# --- a destructive publish touches only what the user named -----------------------------------

def _on_disk(top):
    """Every file and folder under `top` with its bytes: what a refused command must not
    change."""
    return {str(p.relative_to(top)): p.read_bytes() if p.is_file() else None
            for p in sorted(top.rglob("*"))}


def _published(repo, name="toy"):
    """results/<name>, a real earlier publication of the repo's seed1 run."""
    args = ["table", "--repo", str(repo), "--no-exps", "--no-workspace", "--rev", "seed1",
            "--publish", str(repo / "results" / name)]
    assert main(args) == 0
    return repo / "results" / name


@pytest.mark.parametrize("target", [".", "..", "", "results", "results/..", "results/toy/..",
                                    "/", "README.md", "metrics", "metrics/d1/gradattn.json",
                                    "results/.hidden"])
def test_publish_never_replaces_what_it_did_not_write(tmp_path, monkeypatch, capsys, target):
    # The project, a folder above it, results/ itself, a file, a folder publish did not
    # write: refused with one line, even with --force, before anything is read or removed.
    repo = _study_repo(tmp_path)
    _published(repo)
    (repo / "README.md").write_text("the project's own README\n")
    (tmp_path / "beside-the-project.txt").write_text("a user's file\n")
    before = _on_disk(tmp_path)
    capsys.readouterr()
    monkeypatch.chdir(repo)
    assert main(["table", "--no-exps", "--no-workspace", "--rev", "seed1", "--publish", target,
                 "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --publish ") and err.count("\n") == 1, err
    assert "nothing was" in err and "written)" in err
    assert _on_disk(tmp_path) == before  # nothing deleted, nothing written


def test_publish_dot_force_on_the_command_line_is_refused(tmp_path):
    # The reported case, as a user types it: `gradattn table --publish . --force` once
    # emptied the whole project.
    repo = _study_repo(tmp_path)
    before = _on_disk(tmp_path)
    done = subprocess.run([sys.executable, "-m", "gradattn.cli", "table", "--rev",
                           "seed1", "--no-exps", "--publish", ".", "--force"], cwd=repo,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "is the project" in done.stderr, done.stderr
    assert _on_disk(tmp_path) == before


def test_force_replaces_an_earlier_publication_only(tmp_path, capsys):
    repo = _study_repo(tmp_path)
    out = _published(repo)
    args = ["table", "--repo", str(repo), "--no-exps", "--no-workspace", "--rev", "seed2",
            "--publish", str(out), "--force"]
    (out / "notes.txt").write_text("mine\n")  # something publish does not write
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not an earlier publication (it holds notes.txt)" in err
    assert (out / "notes.txt").read_text() == "mine\n"
    (out / "notes.txt").unlink()
    assert main(args) == 0  # README.md, tables.csv, provenance.json and figures: replaced
    assert [r["seed"] for r in json.loads((out / "provenance.json").read_text())] == [2]


def test_a_link_is_refused(tmp_path, capsys):
    repo = _study_repo(tmp_path)
    out = _published(repo)
    link = repo / "results" / "link"
    link.symlink_to(out, target_is_directory=True)
    capsys.readouterr()
    assert main(["table", "--repo", str(repo), "--no-exps", "--no-workspace", "--rev", "seed1",
                 "--publish", str(link), "--force"]) == 2
    assert "is a link, not a folder" in capsys.readouterr().err
    assert link.is_symlink() and (out / "README.md").is_file()


def test_a_later_publish_removes_what_a_killed_one_left(tmp_path, capsys):
    from gradattn.core.io import _HOST

    repo = _study_repo(tmp_path)
    results = repo / "results"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is now free: the process that left the temporaries is gone
    left = results / f".toy.tmp-{dead.pid}@{_HOST}-abc123"
    (left / "half").mkdir(parents=True)
    live = results / f".toy.tmp-{os.getpid()}@{_HOST}-def456"  # a publish still writing
    live.mkdir()
    other = results / f".other.tmp-{dead.pid}@{_HOST}-ghi789"  # another study's
    other.mkdir()
    _published(repo)
    assert not left.exists() and live.is_dir() and other.is_dir()


# --- a run in progress in the working tree is not published half-finished ---------------------

def _wait_for(condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_publish_refuses_while_dvc_reproduces_the_working_tree(tmp_path, capsys):
    repo = _study_repo(tmp_path)
    # A slow stage of its own dvc.yaml (the study's dvc.lock is a stand-in DVC cannot run).
    (repo / "work").mkdir()
    (repo / "work" / "dvc.yaml").write_text(
        "stages:\n  slow:\n    cmd: sleep 60 && echo done > out.txt\n    outs: [out.txt]\n")
    rwlock = repo / ".dvc" / "tmp" / "rwlock"
    repro = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "work/dvc.yaml"], cwd=repo,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # its own group: the stage's sleep too
    try:
        _wait_for(lambda: rwlock.is_file() and "out.txt" in rwlock.read_text())
        out = repo / "results" / "toy"
        args = ["table", "--repo", str(repo), "--no-exps", "--rev", "seed1", "--publish",
                str(out)]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "a DVC command is running in the working tree" in err
        assert f"pid {repro.pid}:" in err and "repro" in err and "--no-workspace" in err
        assert not out.exists()
        assert main(["table", "--repo", str(repo), "--no-exps"]) == 2  # the table too
        capsys.readouterr()
        assert main([*args, "--no-workspace"]) == 0  # the advice works: the commits are whole
        assert "published 1 runs" in capsys.readouterr().err
    finally:
        os.killpg(repro.pid, signal.SIGTERM)
        repro.wait()


@pytest.mark.parametrize("argv, busy", [(["dvc", "repro"], True),
                                        (["dvc", "exp", "run", "--temp"], False),
                                        (["dvc", "queue", "start"], False)])
def test_the_repository_lock_held_between_stages_counts_only_for_the_working_tree(
        tmp_path, argv, busy):
    from gradattn.reporting.experiments import workspace_run

    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    assert workspace_run(tmp_path) is None
    # A process holding DVC's repository lock as DVC does (zc.lockfile, its pid inside),
    # with a DVC command line: between two stages of `dvc repro`, or while a --temp
    # experiment's copy is set up (which leaves the working tree alone).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, zc.lockfile; held = zc.lockfile.LockFile("
         "'.dvc/tmp/lock'); print('held', flush=True); time.sleep(60)", *argv],
        cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        found = workspace_run(tmp_path)
        assert (found is not None) == busy, found
        if busy:
            assert found.startswith(f"pid {holder.pid}: ") and found.endswith("dvc repro")
    finally:
        holder.kill()
        holder.wait()
    assert workspace_run(tmp_path) is None  # a lock file left behind is no run
