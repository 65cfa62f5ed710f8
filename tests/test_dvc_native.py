"""DVC sees what it should: the key that changed, the stages a change re-runs, the code each
stage runs, and training as it happens. Real `dvc` commands in a temporary git repo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, running_stages

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
    assert running_stages(dvc_repo.dvc("repro").stdout) == {f"manifest@{DATASET}"}

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


def downstream_of_training(models=("resnet18", "gradattn")) -> set[str]:
    return ({f"{stage}@{DATASET}-{m}" for stage in ("evaluate", "gradients") for m in models}
            | {f"plot@{DATASET}", "report"})


@pytest.mark.slow
def test_status_names_the_key_and_dry_run_lists_what_then_runs(reproduced_repo):
    dvc_repo = reproduced_repo  # reproduced and committed (the session's one baseline run)

    # `dvc exp show` as docs/reproduce.md counts it (the same keys, stages and metrics as the
    # default study), and without the settings of the machine (machine.yaml).
    header = dvc_repo.dvc("exp", "show", "--md", "--no-pager").stdout.splitlines()[0]
    documented = re.search(r"the default study \(`dvc exp show --md` after `dvc repro`\) \| "
                           r"(\d+) \|", (ROOT / "docs/reproduce.md").read_text())
    assert documented and header.count("|") - 1 == int(documented.group(1)), header
    assert "data.sources" not in header and "grid." not in header

    # A native param: `dvc status` names the leaf key. `dvc repro --dry` lists the stages
    # whose own inputs changed (DVC cannot know before running them whether their outputs
    # change); what then runs is those and the stages downstream of them, nothing else.
    # (evaluate.ece_bins: both models' evaluate stages, no training; a train key re-trains,
    # which the model.pe step below and tests/test_sweep.py show.)
    dvc_repo.set_params({"evaluate": {"ece_bins": 15}})
    status = dvc_repo.dvc("status").stdout
    assert "evaluate.ece_bins" in status
    dry = running_stages(dvc_repo.dvc("repro", "--dry").stdout)
    ran = running_stages(dvc_repo.dvc("repro").stdout)
    assert {f"evaluate@{DATASET}-resnet18", f"evaluate@{DATASET}-gradattn"} <= dry <= ran
    assert ran - dry <= {f"plot@{DATASET}", "report"}
    assert not {s for s in ran if s.startswith(("configure", "preprocess", "train", "gradients"))}
    dvc_repo.commit("15 bins")

    # A GradAttn-only option: status names model.pe (under configure, which resolves each
    # model's own options); only GradAttn's stages re-run, never ResNet-18's.
    dvc_repo.set_params({"model": {"pe": "rope"}})
    assert "model.pe" in dvc_repo.dvc("status").stdout
    dry = running_stages(dvc_repo.dvc("repro", "--dry").stdout)
    # report names runs by their settings; manifest@ always runs (it lists the source files)
    assert dry == {"configure", "report", f"manifest@{DATASET}"}
    ran = running_stages(dvc_repo.dvc("repro").stdout)
    assert dry <= ran
    assert ran - {"configure", f"manifest@{DATASET}", f"train@{DATASET}-gradattn"} <= (
        downstream_of_training(models=("gradattn",)))
    assert {"configure", f"train@{DATASET}-gradattn", f"evaluate@{DATASET}-gradattn",
            f"gradients@{DATASET}-gradattn"} <= ran
    assert not {s for s in ran if s.endswith("-resnet18")}
    dvc_repo.commit("rope")

    # Editing the prediction code in gradattn/training/trained.py: evaluate is out of date.
    train_py = dvc_repo.path / "gradattn" / "training" / "trained.py"
    text = train_py.read_text()
    marker = "def predict("
    assert marker in text
    train_py.write_text(text.replace(marker, "# edited\n" + marker))
    status = dvc_repo.dvc("status").stdout
    assert f"evaluate@{DATASET}-gradattn" in status and f"evaluate@{DATASET}-resnet18" in status


def _rows(node) -> list[dict]:
    """Every data row (a dict with an "epoch") anywhere in DVC's rendered plot JSON."""
    if isinstance(node, dict):
        if "epoch" in node and "val_accuracy" in node:
            return [node]
        return [row for value in node.values() for row in _rows(value)]
    if isinstance(node, list):
        return [row for value in node for row in _rows(value)]
    return []


@pytest.mark.slow
def test_history_and_epoch_lines_appear_while_training_runs(reproduced_repo):
    dvc_repo = reproduced_repo  # its data prepared: only training runs here
    dvc_repo.set_params({"train": {"max_epochs": 3}, "models": ["resnet18"]})
    dvc_repo.commit("three epochs")
    history = dvc_repo.path / "metrics" / DATASET / "resnet18.history.json"
    # The train stage only: what follows it (evaluate, gradients, figures) shows nothing new.
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "exp", "run", f"train@{DATASET}-resnet18"],
        cwd=dvc_repo.path, env=dvc_repo.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()

    def epochs_written() -> int:
        try:
            return len(json.loads(history.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    try:
        deadline = time.monotonic() + 600
        while epochs_written() < 2:
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGSTOP)  # hold training right after epoch 2
        time.sleep(1.0)
        assert epochs_written() == 2
        # The epoch lines reached the pipe as they happened, not at the end.
        assert any(line.startswith("epoch 1/3:") for line in lines), "".join(lines)[-3000:]
        target = history.relative_to(dvc_repo.path).as_posix()
        shown = json.loads(dvc_repo.dvc("plots", "show", "--json", target).stdout)
        assert not shown.get("errors"), shown["errors"]
        assert list(shown["data"]) == [target]
        epochs = {int(row["epoch"]) for row in _rows(shown["data"][target])}
        assert epochs == {1, 2}
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=600) == 0
    reader.join(timeout=10)
    assert epochs_written() == 3  # epoch 3 ran after the hold
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 3
    last = epoch_lines[-1]
    assert "best " in last and "patience " in last and " left" in last
    assert any("images/s" in line for line in lines)
