"""A training killed mid-run resumes from its checkpoint to the uninterrupted result, driven
by real `dvc` commands in a temporary git repo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

DATASET = "fashionmnist-mini"


def _kill_when_checkpointed(repo, args, checkpoint, timeout=600):
    """Start `dvc repro`, SIGKILL its whole process group once a file matches `checkpoint`."""
    log = repo.path.parent / "killed-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            args,
            cwd=repo.path,
            env=repo.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while not list(checkpoint.parent.glob(checkpoint.name)):
        assert proc.poll() is None, f"finished before a checkpoint was written:\n{log.read_text()}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_mid_training_resumes_to_the_same_result(dvc_repo):
    dvc_repo.set_params({"models": ["gradattn"], "train": {"max_epochs": 3}})
    train = f"train@{DATASET}-gradattn"
    # Keyed by the run's identity: gradattn.<run_id>.resume.pt
    checkpoint = dvc_repo.path / f"checkpoints/{DATASET}/gradattn.*.resume.pt"
    # `evaluate` as the target: train and evaluate, without the figures downstream.
    _kill_when_checkpointed(
        dvc_repo, [sys.executable, "-m", "dvc", "repro", "evaluate"], checkpoint
    )
    assert not (dvc_repo.path / f"models/{DATASET}/gradattn.pt").exists()

    out = dvc_repo.dvc("repro", "evaluate").stdout
    assert "resuming from epoch 2" in out, out[-3000:]
    assert not list(checkpoint.parent.glob(checkpoint.name))
    resumed_metrics = (dvc_repo.path / f"metrics/{DATASET}/gradattn.json").read_text()
    resumed_history = json.loads(
        (dvc_repo.path / f"metrics/{DATASET}/gradattn.history.json").read_text()
    )

    out = dvc_repo.dvc("repro", "--force", "--single-item", train).stdout
    assert "resuming" not in out
    dvc_repo.dvc("repro", f"evaluate@{DATASET}-gradattn")
    fresh_history = json.loads(
        (dvc_repo.path / f"metrics/{DATASET}/gradattn.history.json").read_text()
    )
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert [r["epoch"] for r in fresh_history] == [1, 2, 3]
    assert strip(resumed_history) == strip(fresh_history)
    assert (dvc_repo.path / f"metrics/{DATASET}/gradattn.json").read_text() == resumed_metrics
