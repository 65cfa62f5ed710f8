"""A researcher's seed sweep with real DVC, on a stale baseline: HEAD's params.yaml says
2 epochs while its committed metrics (and dvc.lock) come from a 1-epoch run. Then
`dvc exp run --queue` over 2 encodings × 2 seeds and `dvc queue start`.

- The run cache restores training: ResNet-18 does not depend on `model.pe`, so it trains once
  per seed (2 times in 4 experiments), counted from the queue's logs, not from numbers.
- `gradattn table` pools the experiments' own runs (numbers equal to a recomputation from each
  experiment's dvc.lock and the DVC cache, read here without gradattn) and shows HEAD's stale
  1-epoch run apart, never in the 2-epoch cells.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import pipeline_env, processes_in

from gradattn.cli import main

SEEDS = (42, 43)  # two give a std and a paired difference; each seed costs ~50 s of CI
ENCODINGS = ("none", "rope")
# The code and data hash columns of `dvc exp show` (docs/reproduce.md).
DROP = ("Created|State|Executor|gradattn/|stages/|configs/|data/|models/|plotdata|predictions/"
        "|metrics/")


def _run(cmd, cwd, timeout=1800) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=pipeline_env(cwd),
                          timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _dvc(repo, *args) -> str:
    return _run([sys.executable, "-m", "dvc", *args], repo)


def _git(repo, *args) -> str:
    return _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], repo)


def set_max_epochs(repo: Path, epochs: int) -> None:
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["train"]["max_epochs"] = epochs
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def wait_for_queue(repo: Path, timeout: float = 1800) -> list[str]:
    """Names of the finished experiments, once nothing is queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        # While DVC's queue worker or an experiment works inside the project, it is not done:
        # checked in /proc, not by a `dvc queue status` (a second of DVC start-up) every time.
        if not processes_in(repo):
            status = _dvc(repo, "queue", "status")
            if not re.search(r"\b(Queued|Running)\b", status):
                break
        assert time.monotonic() < deadline, "the queue did not finish in time"
        time.sleep(2)
    # Task  Name  Created  Status, one row per experiment; then a blank line, "Worker status".
    rows = [line.split() for line in status.split("\n\n")[0].splitlines()[1:]]
    assert rows and all(row[-1] == "Success" for row in rows), status
    return [row[1] for row in rows]


def recorded_top1(repo: Path, rev: str, model: str) -> tuple[int, float]:
    """(seed, top-1) of one run of an experiment, straight from git and the DVC cache: its
    dvc.lock names the md5 of metrics/tiny/<model>.json, the cache holds that file."""
    lock = yaml.safe_load(_git(repo, "show", f"{rev}:dvc.lock"))["stages"]
    seed = lock[f"train@tiny-{model}"]["params"]["params.yaml"]["train.seed"]
    md5 = next(o["md5"] for o in lock[f"evaluate@tiny-{model}"]["outs"]
               if o["path"] == f"metrics/tiny/{model}.json")
    cached = repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    return seed, json.loads(cached.read_text())["top1"]


@pytest.mark.slow
def test_seed_sweep_on_a_stale_baseline(tiny_project, tmp_path, capsys):
    repo = tmp_path / "sweep"
    tiny_project(repo, {"models": ["resnet18", "gradattn"], "model": {"pe": "learnable"}})
    _dvc(repo, "repro")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one epoch")
    head_top1 = {m: recorded_top1(repo, "HEAD", m)[1] for m in ("resnet18", "gradattn")}
    set_max_epochs(repo, 2)  # committed without reproducing: params say 2, the results 1
    _git(repo, "commit", "-qam", "two epochs (not reproduced)")

    _dvc(repo, "exp", "run", "--queue", "-S", f"model.pe={','.join(ENCODINGS)}",
         "-S", f"train.seed={','.join(map(str, SEEDS))}")
    _dvc(repo, "queue", "start")
    names = wait_for_queue(repo)
    assert len(names) == len(SEEDS) * len(ENCODINGS), names

    # Training runs, counted from each experiment's log.
    trained = {"resnet18": 0, "gradattn": 0}
    restored = {"resnet18": 0, "gradattn": 0}
    for name in names:
        log = _dvc(repo, "queue", "logs", name)
        for model in trained:
            trained[model] += log.count(f"Running stage 'train@tiny-{model}'")
            restored[model] += log.count(f"Stage 'train@tiny-{model}' is cached - skipping run")
    assert trained == {"resnet18": len(SEEDS), "gradattn": len(SEEDS) * len(ENCODINGS)}
    assert restored["resnet18"] == len(SEEDS) * (len(ENCODINGS) - 1)

    # `dvc exp show`: one DVC metrics file, five headline numbers per dataset and model.
    shown = json.loads(_dvc(repo, "exp", "show", "--json"))
    for exp in (r for b in shown for e in (b.get("experiments") or []) for r in e["revs"]):
        metrics = exp["data"]["metrics"]
        assert list(metrics) == ["metrics/summary.json"]
        assert {k: sorted(v) for k, v in metrics["metrics/summary.json"]["data"].items()} == {
            f"tiny/{m}": ["ece", "epochs", "f1_macro", "ghs", "top1"]
            for m in ("resnet18", "gradattn")}
    columns = {}
    for args in ((), ("--only-changed",), ("--only-changed", "--drop", DROP)):
        header = _dvc(repo, "exp", "show", "--md", *args).splitlines()[0]
        columns[args] = header.count("|") - 1
        with capsys.disabled():  # shown with -s (docs/reproduce.md quotes them)
            print(f"dvc exp show --md {' '.join(args)}: {columns[args]} columns")
    # A PE x seed sweep fits a screen: code is a few folder columns, not one per module.
    assert columns[("--only-changed",)] <= 25

    # The experiments' own runs, recomputed without gradattn.
    shown = json.loads(_dvc(repo, "exp", "show", "--json"))
    revs = [r["rev"] for b in shown for e in (b.get("experiments") or []) for r in e["revs"]]
    assert len(revs) == len(names)
    expected: dict[str, dict[int, float]] = {}
    for rev in revs:
        pe = yaml.safe_load(_git(repo, "show", f"{rev}:params.yaml"))["model"]["pe"]
        for model, column in (("resnet18", "ResNet-18"),
                              ("gradattn", {"none": "GradAttn (no PE)",
                                            "rope": "GradAttn (RoPE)"}[pe])):
            seed, top1 = recorded_top1(repo, rev, model)
            if seed in expected.get(column, {}):  # ResNet-18 restored: the same run
                assert expected[column][seed] == top1
            expected.setdefault(column, {})[seed] = top1

    assert main(["table", "--repo", str(repo), "--format", "csv", "--table", "1"]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    two = df[df.setting == "train.max_epochs=2"].set_index("variant")
    one = df[df.setting == "train.max_epochs=1"].set_index("variant")
    assert set(df.setting) == {"train.max_epochs=1", "train.max_epochs=2"}
    for column, by_seed in expected.items():
        values = [by_seed[s] for s in SEEDS]
        row = two.loc[column]
        assert (row["n"], row["seeds"]) == (len(SEEDS), " ".join(map(str, SEEDS)))
        assert row["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert row["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        if column != "ResNet-18":  # paired by seed with ResNet-18
            diffs = [by_seed[s] - expected["ResNet-18"][s] for s in SEEDS]
            assert row["diff_mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
    # HEAD's stale run is shown as what it was: one 1-epoch run per model, apart.
    assert one.loc["ResNet-18", "n"] == 1
    assert one.loc["ResNet-18", "mean"] == pytest.approx(head_top1["resnet18"], abs=1e-12)
    assert one.loc["GradAttn (learnable PE)", "mean"] == pytest.approx(head_top1["gradattn"],
                                                                       abs=1e-12)
    assert set(df.recipe) == {"corrected"}

    assert main(["table", "--repo", str(repo), "--table", "1"]) == 0
    md = capsys.readouterr().out
    assert re.search(r"^# Setting \d: train.max_epochs=2$", md, re.M)
    assert "Recipe: **corrected**" in md
    with capsys.disabled():
        print(md)  # shown with -s: an example for the docs
