"""A queued experiment killed mid-training resumes when queued again: its checkpoint lives in
the parent repository (DVC_ROOT), keyed by the run's identity, not in the temporary folder
the queue deletes. Real `dvc queue`, real training (bundled data, 2 epochs, tiny encoder)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import dvc, env_for, gradattn, processes_in

DATASET = "fashionmnist-mini"
METRICS = f"metrics/{DATASET}/gradattn.json"


def wait_until(done, what: str, timeout: float = 600, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while not (found := done()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return found


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def kill_queued_experiment(project: Path) -> None:
    """SIGKILL the queued experiment: its training stage, the shell DVC ran it with and DVC's
    executor (`dvc exp exec-run`), as the OOM killer or a crash would. Not the queue's worker,
    which shares their process group: it sees its task die and marks it failed.
    (`dvc queue kill` sends SIGINT, which a stage may handle; its --force kills the executor
    only, and the training goes on.)"""
    workspaces = (project / ".dvc" / "tmp" / "exps").resolve()
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cwd = (proc / "cwd").resolve()
        except OSError:  # not a process, or gone
            continue
        if b"stages/train.py" in cmdline and workspaces in cwd.parents:
            chain = [int(proc.name)]
            while b"exec-run" not in Path(f"/proc/{chain[-1]}/cmdline").read_bytes():
                chain.append(_parent(chain[-1]))
            for pid in reversed(chain):  # the executor first: it must not report the rest
                os.kill(pid, signal.SIGKILL)
            return
    raise AssertionError(f"no training process runs in {workspaces}")


def queue_and_start(project: Path) -> None:
    # `evaluate` as the target: train and test, without gradients and figures.
    gradattn("grid", "--index", "0", "--queue", "evaluate", cwd=project)
    # Not through pipes: the worker it starts would hold them open, and us, until it ends.
    subprocess.run([sys.executable, "-m", "dvc", "queue", "start"], cwd=project,
                   env=env_for(project), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True, timeout=120)


def finished(project: Path, name: str) -> bool:
    """Whether the queue holds no waiting or running `name` and one that succeeded (the
    killed attempt stays listed as failed)."""
    status = dvc("queue", "status", cwd=project).stdout
    rows = [row for row in status.splitlines() if f" {name} " in f" {row} "]
    if any(state in row for row in rows for state in ("Queued", "Running")):
        return False
    assert any("Success" in row for row in rows), status
    return True


def exp_metrics(project: Path, name: str) -> dict:
    """The experiment's evaluate metrics (a cached out: read through DVC at that revision)."""
    import dvc.api

    return json.loads(dvc.api.read(METRICS, repo=str(project), rev=name))


@pytest.mark.slow
def test_a_killed_queued_experiment_resumes_when_queued_again(tiny_project, tmp_path):
    project = tiny_project(tmp_path / "project", {
        "data": {"datasets": [DATASET]}, "models": ["gradattn"], "train": {"max_epochs": 2},
        "grid": {"seeds": [42], "pe": ["none"]}})
    checkpoints = project / "checkpoints" / DATASET  # the parent's, not the queue's temp copy
    name = f"{DATASET}-gradattn-none-s42"  # the grid's only cell

    queue_and_start(project)
    checkpoint = wait_until(lambda: next(checkpoints.glob("gradattn.*.resume.pt"), None),
                            "the first epoch's checkpoint in the parent repository")
    kill_queued_experiment(project)
    wait_until(lambda: "Running" not in dvc("queue", "status", cwd=project).stdout,
               "the killed experiment to stop")
    epoch = torch.load(checkpoint, weights_only=True)["epoch"]
    assert epoch == 1  # killed during the last epoch

    queue_and_start(project)  # the same cell, queued again
    # (DVC asked only once nothing works in the project: a `dvc queue status` is a second of
    # start-up, which polling would take from the training it waits for)
    wait_until(lambda: not processes_in(project) and finished(project, name),
               "the re-queued experiment")
    log = dvc("queue", "logs", name, cwd=project).stdout
    assert f"resuming from epoch {epoch + 1}: epochs 1-{epoch} restored" in log, log[-3000:]
    assert not checkpoint.exists()  # a finished run removes its checkpoint
    resumed = exp_metrics(project, name)

    # The same cell again, uninterrupted, in the workspace; --force replaces the experiment
    # and keeps DVC's run cache from restoring the resumed run's outputs.
    out = gradattn("grid", "--index", "0", "--force", "evaluate", cwd=project).stdout
    assert "resuming" not in out and "epoch 2/2" in out, out[-3000:]
    assert resumed == exp_metrics(project, name)
    assert resumed["epochs"] == 2
