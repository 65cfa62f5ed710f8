"""The DVC pipeline end to end, driven by real `dvc` commands in a temporary git repo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import running_stages

DATASET = "fashionmnist-mini"
METRIC_KEYS = {
    "top1",
    "top3",
    "top5",
    "precision_macro",
    "precision_weighted",
    "recall_macro",
    "recall_weighted",
    "f1_macro",
    "f1_weighted",
    "ece",
    "train_val_gap",
    "best_epoch",
    "epochs",
    "params",
}


@pytest.mark.slow
def test_repro_then_rope_experiment_reruns_only_gradattn(reproduced_repo):
    # The session's one `dvc repro` of the baseline (conftest): what it ran, its results.
    dvc_repo = reproduced_repo
    assert running_stages(dvc_repo.baseline) >= {
        "configure",
        f"download@{DATASET}",
        f"preprocess@{DATASET}",
        f"train@{DATASET}-resnet18",
        f"train@{DATASET}-gradattn",
        f"evaluate@{DATASET}-resnet18",
        f"evaluate@{DATASET}-gradattn",
    }
    for model in ("resnet18", "gradattn"):
        metrics = json.loads((dvc_repo.path / f"metrics/{DATASET}/{model}.json").read_text())
        assert METRIC_KEYS <= metrics.keys()
        assert 0.0 <= metrics["top1"] <= 1.0 and metrics["epochs"] == 1
        history = json.loads(
            (dvc_repo.path / f"metrics/{DATASET}/{model}.history.json").read_text()
        )
        assert [row["epoch"] for row in history] == [1]
    assert not dvc_repo.run("git", "status", "--porcelain").stdout  # committed, as it ran

    # Nothing changed (in this copy of the project): nothing runs but the check of the source
    # files (always; it changed nothing, so download and all after it stay cached).
    assert running_stages(dvc_repo.dvc("repro").stdout) == {f"sources@{DATASET}"}

    out = dvc_repo.dvc("exp", "run", "-S", "model.pe=rope").stdout
    ran = running_stages(out)
    assert {f"train@{DATASET}-gradattn", f"evaluate@{DATASET}-gradattn"} <= ran
    assert not any("resnet18" in stage for stage in ran), ran

    # The one DVC metrics file: the headline of each model; ResNet-18's did not change.
    diff = json.loads(dvc_repo.dvc("metrics", "diff", "--json").stdout)
    assert list(diff) == ["metrics/summary.json"]
    changed = {key.rsplit(".", 1)[0] for key in diff["metrics/summary.json"]}
    assert changed == {f"{DATASET}/gradattn"}
    plots = json.loads(dvc_repo.dvc("plots", "diff", "HEAD", "--json").stdout)["data"]
    history_plots = [k for k in plots if k.endswith("gradattn.history.json")]
    assert history_plots, plots.keys()
    revisions = {rev for k in history_plots for entry in plots[k] for rev in entry["revisions"]}
    assert {"HEAD", "workspace"} <= revisions, plots[history_plots[0]]


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
