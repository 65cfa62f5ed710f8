"""scripts/cpu_lanes.sh: a study's experiments in lanes (clones sharing one DVC cache), each
job once, every run with one thread, a failed job retried by the next `run`, and `gather`
bringing every lane's experiments into lane-0. Real git and DVC, on a toy one-stage project."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import ROOT, dvc, env_for, sh

pytestmark = pytest.mark.slow

# The stage writes what it ran with: its param, the thread count it was given, its own folder.
STAGE = """import json, os, sys, time, yaml
p = yaml.safe_load(open("params.yaml"))
if p["x"] < 0:
    sys.exit(3)
if p["x"] == 9:  # a long training: says it started, then waits to be stopped
    open(os.environ["STARTED"], "w").close()
    time.sleep(120)
json.dump({"x": p["x"], "tag": p["tag"], "threads": os.environ.get("OMP_NUM_THREADS"),
           "cwd": os.getcwd()}, open("out.json", "w"))
"""


def _project(tmp_path):
    repo = tmp_path / "project"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts/cpu_lanes.sh", repo / "scripts")
    (repo / "params.yaml").write_text("x: 0\ntag: none\n")
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: python stage.py\n    deps: [stage.py]\n"
        "    params: [x, tag]\n    metrics: [{out.json: {cache: false}}]\n")
    sh("git", "init", "-q", cwd=repo)
    dvc("init", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "toy", cwd=repo)
    return repo


def _lanes(repo, *args, check=True):
    return sh("bash", "scripts/cpu_lanes.sh", *args, cwd=repo, check=check,
              env={**env_for(repo), "TAG": "from-env"})


def test_lanes_run_each_job_once_and_gather(tmp_path):
    repo = _project(tmp_path)
    jobs = tmp_path / "study.jobs"
    jobs.write_text("# a comment\ncommon -S tag=$TAG\n"
                    "a -S x=1\nb -S x=2\nbad -S x=-1\nc -S x=3\n")
    study = tmp_path / "study"
    first = _lanes(repo, "run", jobs, study, "2")
    assert "bad FAILED" in first.stdout
    assert sorted(p.name for p in (study / "state").glob("*.done")) == ["a.done", "b.done",
                                                                        "c.done"]
    # Each job ran in a lane's own clone, with its -S (the common one expanded), one thread.
    for name in ("a", "b", "c"):
        lane = (study / "state" / f"{name}.claim" / "lane").read_text().strip()
        shown = dvc("exp", "show", "--json", cwd=study / f"lane-{lane}").stdout
        assert f'"{name}"' in shown
    # (which lane took which job depends on timing; a lane whose last job failed has no out)
    outs = {k: json.loads((study / f"lane-{k}" / "out.json").read_text()) for k in (0, 1)
            if (study / f"lane-{k}" / "out.json").exists()}
    assert outs and all(o["threads"] == "1" and o["tag"] == "from-env" for o in outs.values())
    assert all(o["cwd"] == str(study / f"lane-{k}") for k, o in outs.items())

    # A rerun skips what is done and tries the failed job again (the fix: its -S).
    jobs.write_text(jobs.read_text().replace("bad -S x=-1", "bad -S x=4"))
    again = _lanes(repo, "run", jobs, study, "2")
    assert "bad done" in again.stdout and " a started" not in again.stdout
    status = _lanes(repo, "status", jobs, study).stdout.splitlines()
    assert status == ["a: done", "b: done", "bad: done", "c: done"]

    # A run in progress in both lanes (its exec refs): gather leaves lane-0's alone.
    def head(k):
        return sh("git", "rev-parse", "HEAD", cwd=study / f"lane-{k}").stdout.strip()
    for k in (0, 1):
        sh("git", "update-ref", "refs/exps/exec/EXEC_BRANCH", head(k), cwd=study / f"lane-{k}")
    sh("git", "commit", "-q", "--allow-empty", "-m", "lane-1 moves on", cwd=study / "lane-1")
    sh("git", "update-ref", "refs/exps/exec/EXEC_BRANCH", head(1), cwd=study / "lane-1")
    gathered = _lanes(repo, "gather", jobs, study)
    assert "lane-0 holds 4 experiment ref(s)" in gathered.stdout
    exec_ref = sh("git", "rev-parse", "refs/exps/exec/EXEC_BRANCH", cwd=study / "lane-0")
    assert exec_ref.stdout.strip() == head(0) != head(1)
    for k in (0, 1):
        sh("git", "update-ref", "-d", "refs/exps/exec/EXEC_BRANCH", cwd=study / f"lane-{k}")
    names = dvc("exp", "list", "--name-only", cwd=study / "lane-0").stdout.split()
    assert sorted(names) == ["a", "b", "bad", "c"]


def test_bad_input_is_one_line(tmp_path):
    repo = _project(tmp_path)
    jobs = tmp_path / "dup.jobs"
    jobs.write_text("a -S x=1\na -S x=2\n")
    for args, says in ((["run", jobs, tmp_path / "s"], "appears twice"),
                       (["run", tmp_path / "none.jobs", tmp_path / "s"], "not found"),
                       (["run", jobs, tmp_path / "s", "0"], "LANES = '0'"),
                       (["walk", jobs, tmp_path / "s"], "'walk' is not an action")):
        out = _lanes(repo, *args, check=False)
        assert out.returncode == 2 and says in out.stderr and out.stderr.count("\n") == 1
    (repo / "params.yaml").write_text("x: 5\ntag: none\n")  # uncommitted: a study runs a commit
    jobs.write_text("a -S x=1\n")
    out = _lanes(repo, "run", jobs, tmp_path / "s2", check=False)
    assert out.returncode == 2 and "uncommitted changes" in out.stderr


def test_a_stopped_study_stops_and_does_not_count_its_job_failed(tmp_path):
    repo = _project(tmp_path)
    jobs = tmp_path / "study.jobs"
    jobs.write_text("long -S x=9\nnext -S x=1\n")
    study, started = tmp_path / "study", tmp_path / "started"
    driver = subprocess.Popen(["bash", "scripts/cpu_lanes.sh", "run", str(jobs), str(study), "1"],
                              cwd=repo, env={**env_for(repo), "STARTED": str(started)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    deadline = time.monotonic() + 300
    while not started.exists():
        assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read()
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGTERM)  # what `kill` or a closing session sends
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode != 0
    assert "long FAILED" not in out and "next started" not in out, out
    assert not (study / "state" / "long.failed").exists()
    assert (study / "state" / "long.claim").is_dir()
    assert not (study / "state" / "next.claim").exists()
    status = _lanes(repo, "status", jobs, study).stdout.splitlines()
    assert status == ["long: claimed by lane 0", "next: waiting"]
