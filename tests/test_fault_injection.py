"""SIGKILL `dvc repro` at seeded random moments in every stage of the bundled study, rerun,
and check the result equals an uninterrupted run's, with no temporary files left behind."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import DvcRepo

DATASET = "fashionmnist-mini"
MODEL = "gradattn"
STAGES = ["configure", f"manifest@{DATASET}", f"download@{DATASET}", f"preprocess@{DATASET}",
          f"train@{DATASET}-{MODEL}", f"evaluate@{DATASET}-{MODEL}",
          f"gradients@{DATASET}-{MODEL}", f"plot@{DATASET}", "report"]
# Pipeline order; training (the stage with a checkpoint to resume) is killed three times.
KILL_PLAN = STAGES[:5] + [STAGES[4]] * 2 + STAGES[5:]
SEED = 12


def repro(repo: DvcRepo, log: list[tuple[float, str]], kill_in: str | None = None,
          delay: float = 0.0, *args: str) -> tuple[int, str | None]:
    """Run `dvc repro`, logging (time, line). With `kill_in`, SIGKILL its whole process group
    `delay` seconds after that stage starts. Returns (exit code, stage running when killed)."""
    env = dict(repo.env, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *args], cwd=repo.path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
    reader.start()
    current, deadline = None, None
    while True:
        try:
            line = lines.get(timeout=0.05)
            log.append((time.monotonic(), line.rstrip()))
            if line.startswith("Running stage"):
                current = line.split("'")[1]
                if current == kill_in and deadline is None:
                    deadline = time.monotonic() + delay
        except queue.Empty:
            if proc.poll() is not None and not reader.is_alive():
                break
        if deadline is not None and time.monotonic() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            reader.join(5)
            return -9, current
    return proc.returncode, None


def stage_seconds(log: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds from each stage's start to its command's last summary line (which starts with
    the stage's name), i.e. the time its command runs, without DVC's bookkeeping after it."""
    seconds, name, start = {}, None, 0.0
    for t, line in log:
        if line.startswith("Running stage"):
            name, start = line.split("'")[1], t
        elif name and line.startswith((name.split("@")[0] + " ", name.split("@")[0] + ":")):
            seconds[name] = t - start
    return seconds


def results(repo: Path) -> dict:
    """Every metric file (history without its timings) and the model's sha256."""
    out = {}
    for path in sorted((repo / "metrics").rglob("*.json")):
        data = json.loads(path.read_text())
        if path.name.endswith(".history.json"):
            data = [{k: v for k, v in row.items() if k != "seconds"} for row in data]
        out[str(path.relative_to(repo))] = data
    model = repo / f"models/{DATASET}/{MODEL}.pt"
    out["model sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    return out


def leftovers(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for pattern in (".*.tmp*", ".*tmp-*")
                  for p in repo.rglob(pattern) if ".git" not in p.relative_to(repo).parts)


@pytest.mark.slow
def test_sigkill_in_every_stage_then_rerun_gives_the_uninterrupted_result(dvc_repo, tmp_path):
    dvc_repo.set_params({"models": [MODEL], "train": {"max_epochs": 2}})
    dvc_repo.commit("one model, two epochs")
    faulted = DvcRepo(tmp_path / "faulted")
    shutil.copytree(dvc_repo.path, faulted.path, symlinks=True)  # before any run: no run cache

    t0 = time.monotonic()
    log: list[tuple[float, str]] = []
    assert repro(dvc_repo, log)[0] == 0, "\n".join(line for _, line in log[-40:])
    seconds = stage_seconds(log)
    reference_s = time.monotonic() - t0
    assert set(seconds) == set(STAGES), seconds
    expected = results(dvc_repo.path)

    rng = random.Random(SEED)
    kills = []
    t0 = time.monotonic()
    for target in KILL_PLAN:
        delay = rng.uniform(0.0, seconds[target])
        code, killed_in = repro(faulted, [], target, delay)
        kills.append((target, round(delay, 2), killed_in or f"finished ({code})"))
        # On a busy machine the stage can finish before its moment (the kill then lands in a
        # later one): run that stage again on its own, killing it sooner.
        while killed_in != target:
            delay /= 2
            code, killed_in = repro(faulted, [], target, delay, "--force", "--single-item",
                                    target)
            kills.append((target, round(delay, 2), killed_in or f"finished ({code})"))
    log = []
    code, _ = repro(faulted, log)
    faulted_s = time.monotonic() - t0
    report = (f"reference run {reference_s:.0f}s, stage seconds "
              f"{ {k: round(v, 1) for k, v in seconds.items()} }; faulted runs {faulted_s:.0f}s; "
              f"kills (target, delay s, stage running): {kills}")
    print(report)
    assert code == 0, "\n".join(line for _, line in log[-40:])
    assert results(faulted.path) == expected, report
    assert leftovers(faulted.path) == [], report
    assert sum(1 for *_, where in kills if where in STAGES) >= 10, report
    assert {where for *_, where in kills} >= set(STAGES), report
    status = faulted.dvc("status", "--json").stdout
    # Up to date but for the check of the source files, which always runs.
    assert json.loads(status) == {f"manifest@{DATASET}": ["always changed"]}, status
