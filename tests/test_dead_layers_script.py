"""Tests of scripts/dead_layers.py, the instrument behind docs/findings.md section 3: on a tiny
CIFAR-10-shaped JPEG folder, trained through the library's `fit` (its per-step hook counted),
it dates the death of a stage killed on purpose (and, with --no-decay-norm, leaves that stage's
batch norms untouched by the decay), leaves a healthy model's stages alive, records the command,
commit and environment in its JSON, keeps that JSON after every epoch and resumes a killed run
to what an uninterrupted one writes, and summarises runs in one line."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from gradattn.core.records import code_commit

SCRIPT = ROOT / "scripts" / "dead_layers.py"
COMPARE = ROOT / "scripts" / "dead_layers_compare.py"
CLASSES = [f"class{i}" for i in range(10)]


def script_env() -> dict[str, str]:
    """The environment a script of scripts/ runs in: the repository importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def load_script():
    spec = importlib.util.spec_from_file_location("dead_layers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cifar(tmp_path: Path) -> Path:
    """The JPEG copy's layout: train/<class>/*.jpg and test/<class>/*.jpg, 32x32 RGB."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar"
    for split, n in (("train", 6), ("test", 2)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.jpg")
    return root


def argv(cifar: Path, out: Path, *extra: str) -> list[str]:
    """The script's own command line, on the tiny folder: 40 images, batch 8, two epochs."""
    return ["--cifar", str(cifar), "--n-train", "40", "--n-val", "10", "--n-test", "10",
            "--probe-size", "16", "--probe-batches", "1", "--batch-size", "8", "--epochs", "2",
            "--out", str(out), *extra]


def run_args(dl, cifar: Path, out: Path, *extra: str):
    return dl.build_parser().parse_args(argv(cifar, out, *extra))


@pytest.mark.parametrize("decay_norm", ["--decay-norm", "--no-decay-norm"])
def test_a_stage_killed_on_purpose_is_dated_and_its_convs_end_exactly_zero(cifar, tmp_path,
                                                                           monkeypatch,
                                                                           decay_norm):
    dl = load_script()
    real_build = dl.build_model
    steps = []
    real_on_step = dl.Probes.on_step

    def build_with_dead_layer3(*args, **kwargs):
        # layer3's output batch norm made a constant -1: its ReLU never fires (the state the
        # CIFAR-10 runs end in), so layer3 and layer4 get no gradient from the first step on.
        model = real_build(*args, **kwargs)
        with torch.no_grad():
            model.layer3[1].bn2.weight.zero_()
            model.layer3[1].bn2.bias.fill_(-1.0)
        return model

    def counted_on_step(self):  # fit's per-step hook, counted
        steps.append(self.step)
        real_on_step(self)

    monkeypatch.setattr(dl, "build_model", build_with_dead_layer3)
    monkeypatch.setattr(dl.Probes, "on_step", counted_on_step)
    out = tmp_path / "killed.json"
    result = dl.train(run_args(dl, cifar, out, decay_norm), out)
    assert steps == list(range(10))  # fit called the hook once a step: 40 / 8, two epochs
    died = result["first_step_all_dead"]
    assert died["layer3.1.out"] == 1 and died["layer4.1.out"] == 1
    assert died["stem"] is None and died["layer2.1.out"] is None
    last = result["epochs"][-1]
    assert last["step"] == 10
    deep = [n for n in last["layers"] if n.startswith(("layer3.", "layer4.")) and "conv" in n]
    assert len(deep) == 8 and all(last["layers"][n]["exact_zero"] for n in deep)
    assert not last["layers"]["layer2.1.conv2"]["exact_zero"]
    assert last["dead_frac"]["layer3.1.out"] == 1.0 and last["dead_frac"]["stem"] < 1.0
    # Written after every epoch, so a run cut short keeps what it finished.
    assert len(json.loads(out.read_text())["epochs"]) == 2
    # No data gradient reaches layer3/layer4: only the decay moves their parameters. The
    # convs' weights shrink either way; batch norm's gamma and beta only when decayed.
    first = result["epochs"][0]
    assert last["layers"]["layer4.0.conv1"]["weight"] < first["layers"]["layer4.0.conv1"]["weight"]
    bn = last["bn"]["layer3.1.bn2"]
    if decay_norm == "--no-decay-norm":
        assert bn["beta_mean"] == -1.0 and bn["gamma_absmax"] == 0.0
        assert all(last["bn"][f"layer4.{i}.bn{j}"]["gamma_mean"] == 1.0
                   for i in (0, 1) for j in (1, 2))
        assert result["protocol"]["optimizer"].endswith("none on batch/layer norm γ/β and biases")
    else:
        assert bn["beta_mean"] > -1.0
        assert all(last["bn"][f"layer4.{i}.bn{j}"]["gamma_mean"] < 1.0
                   for i in (0, 1) for j in (1, 2))
    # The overlay of runs dates the constant output the dead stage feeds layer4's batch norms.
    png = tmp_path / "compare.png"
    compared = subprocess.run([sys.executable, str(COMPARE), str(out), "--png", str(png)],
                              capture_output=True, text=True, env=script_env())
    assert compared.returncode == 0, compared.stderr
    assert "killed: layer4.1.bn2 input variance below ε from epoch 1, exactly 0 from epoch 1 " \
        in compared.stdout
    assert png.read_bytes().startswith(b"\x89PNG")


def test_a_healthy_model_has_no_dead_stage_and_its_json_says_what_ran(cifar, tmp_path):
    dl = load_script()
    out = tmp_path / "healthy.json"
    args = argv(cifar, out, "--epochs", "1", "--no-plateau")
    dl.main(args)
    result = json.loads(out.read_text())
    assert all(step is None for step in result["first_step_all_dead"].values())
    assert not any(row["exact_zero"] for row in result["epochs"][0]["layers"].values())
    # What ran: the command, the code and the machine, and the protocol's switches.
    assert result["command"] == shlex.join(["python", "scripts/dead_layers.py", *args])
    env = result["environment"]
    assert env["gradattn_commit"] == code_commit() and torch.__version__.startswith(env["torch"])
    assert env["threads"] == 1 and env["device"] == "cpu" and env["precision"] == "fp32"
    assert result["script"]["sha256"] == hashlib.sha256(SCRIPT.read_bytes()).hexdigest()
    assert result["protocol"]["plateau"] == "off"
    assert result["protocol"]["early_stopping"].startswith("after 7 epochs")
    assert result["train_config"]["plateau_patience"] > result["train_config"]["max_epochs"]
    assert result["images"] == {"train": 40, "val": 10, "test": 10}
    assert "test_acc" in result and not out.with_name(out.name + ".ckpt").exists()
    line = dl.summary(str(out), result)
    assert "gradattn pe=none stem=imagenet adam wd=0.0001 no-plateau seed=42" in line
    assert "epoch 1 step 5" in line and "0/17 convs exactly 0" in line
    assert "layer3:-" in line


def test_a_run_killed_part_way_resumes_to_what_an_uninterrupted_one_writes(cifar, tmp_path,
                                                                            monkeypatch):
    dl = load_script()
    whole = tmp_path / "whole.json"
    dl.train(run_args(dl, cifar, whole), whole)
    out = tmp_path / "cut.json"
    real_on_step = dl.Probes.on_step

    def killed_in_epoch_2(self):
        if self.step == 7:
            raise KeyboardInterrupt
        real_on_step(self)

    monkeypatch.setattr(dl.Probes, "on_step", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        dl.train(run_args(dl, cifar, out), out)
    assert len(json.loads(out.read_text())["epochs"]) == 1
    monkeypatch.setattr(dl.Probes, "on_step", real_on_step)
    dl.train(run_args(dl, cifar, out), out)

    def measured(path: Path) -> dict:
        run = json.loads(path.read_text())
        for row in run["epochs"]:
            row.pop("seconds")
        return {k: run[k] for k in ("epochs", "first_step_all_dead", "test_acc", "best_epoch")}

    assert measured(out) == measured(whole)
    # The part that ran before the kill is named too (here the same code and machine).
    earlier = json.loads(out.read_text())["earlier_parts"]
    assert len(earlier) == 1 and earlier[0]["environment"]["threads"] == 1


@pytest.mark.slow  # the shell runner end to end: a real training
def test_the_ablation_runner_skips_finished_runs_and_runs_the_rest(cifar, tmp_path):
    jobs = tmp_path / "tiny.jobs"
    jobs.write_text("# two runs on the tiny folder\n"
                    "common --n-train 40 --n-val 10 --n-test 10 --probe-size 16 "
                    "--probe-batches 1 --batch-size 8 --epochs 1 --device cpu\n"
                    "finished --model gradattn --pe none\n"
                    "nodecay  --model gradattn --pe none --weight-decay 0\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "finished.json").write_text(json.dumps({"args": {}, "epochs": [], "test_acc": 0.5}))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "dead_layers_ablations.sh"), str(out),
                           str(cifar), str(jobs)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    assert f"finished: done already ({out}/finished.json)" in proc.stdout
    assert "nodecay started" in proc.stdout and "nodecay finished" in proc.stdout
    run = json.loads((out / "nodecay.json").read_text())
    assert run["args"]["weight_decay"] == 0 and "test_acc" in run
    assert run["command"].endswith(f"--weight-decay 0 --out {out}/nodecay.json")
    assert "nodecay.json: gradattn pe=none stem=imagenet adam wd=0 seed=42" in (
        out / "summary.txt").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU is")
def test_asking_for_a_gpu_where_there_is_none_is_a_one_line_error(cifar, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cifar", str(cifar), "--device",
                           "cuda", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: --device cuda asked for, but torch sees no CUDA GPU here; use --device cpu or "
        "run on a machine with one"]
    assert not out.exists()


def test_comparing_a_json_with_no_finished_epoch_is_a_one_line_error(tmp_path):
    started = tmp_path / "started.json"
    started.write_text(json.dumps({"args": {}, "epochs": []}))
    png = tmp_path / "c.png"
    proc = subprocess.run([sys.executable, str(COMPARE), str(started), "--png", str(png)],
                          capture_output=True, text=True, env=script_env())
    assert proc.returncode == 2 and not png.exists()
    assert proc.stderr.strip().count("\n") == 0 and "no finished epoch yet" in proc.stderr


def fake_run(path: Path, seed: int, gamma: float, var: float, **settings) -> Path:
    """The fields of a dead_layers.py JSON that the overlay reads, for one epoch (10)."""
    args = {"model": "gradattn", "pe": "none", "weight_decay": 1e-4, "seed": seed,
            "out": str(path), "cifar": "/somewhere", **settings}
    row = {"epoch": 10, "val_acc": 0.7, "dead_frac": {"layer4.1.out": 0.5},
           "bn": {"layer4.1.bn2": {"gamma_mean": gamma, "in_var_median": var}}}
    path.write_text(json.dumps({"args": args, "epochs": [row]}))
    return path


def test_the_overlay_pairs_each_arm_with_the_baseline_seed_for_seed(tmp_path):
    runs = [fake_run(tmp_path / "base42.json", 42, 0.02, 1e-6),
            fake_run(tmp_path / "base43.json", 43, 0.03, 1e-5),
            fake_run(tmp_path / "wd0-42.json", 42, 0.86, 100.0, weight_decay=0),
            fake_run(tmp_path / "wd0-43.json", 43, 0.80, 10.0, weight_decay=0),
            fake_run(tmp_path / "wd0-44.json", 44, 5.0, 1.0, weight_decay=0),  # no baseline 44
            fake_run(tmp_path / "dead42.json", 42, 0.0, 0.0, pe="rope")]
    proc = subprocess.run([sys.executable, str(COMPARE), *map(str, runs), "--png",
                           str(tmp_path / "o.png"), "--paired-at", "10"],
                          capture_output=True, text=True, env=script_env())
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split(" − ")[0]: ln for ln in proc.stdout.splitlines() if " − baseline" in ln}
    assert set(lines) == {"weight_decay=0", "pe=rope"}
    # γ: differences 0.84 and 0.77, mean 0.805 ± t(0.975, 1) · 0.0495 / √2 = ± 0.445;
    # log10 of the variance: 8 and 6, mean 7 ± 12.7 · √2 / √2.
    assert "n = 2 (seeds 42, 43)" in lines["weight_decay=0"]
    assert "gamma +0.805 [+0.36, +1.25]" in lines["weight_decay=0"]
    assert "log10 var +7 [-5.71, +19.7]" in lines["weight_decay=0"]
    assert "n = 1 (seeds 42)" in lines["pe=rope"]
    assert "gamma -0.02 (no interval below two seeds)" in lines["pe=rope"]
    assert "log10 var: a variance exactly 0, not paired" in lines["pe=rope"]
    twice = subprocess.run([sys.executable, str(COMPARE), str(runs[0]), str(runs[0]), "--png",
                            str(tmp_path / "t.png"), "--paired-at", "10"],
                           capture_output=True, text=True, env=script_env())
    assert twice.returncode == 2 and "a second run of the same arm and seed" in twice.stderr
    assert not (tmp_path / "t.png").exists()  # refused before anything was drawn
