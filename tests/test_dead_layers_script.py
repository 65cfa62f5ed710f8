"""Tests of scripts/dead_layers.py, the instrument behind docs/findings.md section 3: on a tiny
CIFAR-10-shaped JPEG folder, it dates the death of a stage killed on purpose, leaves a healthy
model's stages alive, keeps its JSON after every epoch, and summarises runs in one line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "dead_layers.py"
CLASSES = [f"class{i}" for i in range(10)]


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


def run_args(dl, cifar: Path, out: Path, *extra: str):
    """The script's own command line, on the tiny folder: 40 images, batch 8, two epochs."""
    return dl.build_parser().parse_args([
        "--cifar", str(cifar), "--n-train", "40", "--n-val", "10", "--n-test", "10",
        "--probe-size", "16", "--probe-batches", "1", "--batch-size", "8", "--epochs", "2",
        "--out", str(out), *extra])


def test_a_stage_killed_on_purpose_is_dated_and_its_convs_end_exactly_zero(cifar, tmp_path,
                                                                           monkeypatch):
    dl = load_script()
    real_build = dl.build_model

    def build_with_dead_layer3(*args, **kwargs):
        # layer3's output batch norm made a constant -1: its ReLU never fires (the state the
        # CIFAR-10 runs end in), so layer3 and layer4 get no gradient from the first step on.
        model = real_build(*args, **kwargs)
        with torch.no_grad():
            model.layer3[1].bn2.weight.zero_()
            model.layer3[1].bn2.bias.fill_(-1.0)
        return model

    monkeypatch.setattr(dl, "build_model", build_with_dead_layer3)
    out = tmp_path / "killed.json"
    result = dl.train(run_args(dl, cifar, out), out)
    died = result["first_step_all_dead"]
    assert died["layer3.1.out"] == 1 and died["layer4.1.out"] == 1
    assert died["stem"] is None and died["layer2.1.out"] is None
    last = result["epochs"][-1]
    assert last["step"] == 10  # 40 images / batch 8, two epochs
    deep = [n for n in last["layers"] if n.startswith(("layer3.", "layer4.")) and "conv" in n]
    assert len(deep) == 8 and all(last["layers"][n]["exact_zero"] for n in deep)
    assert not last["layers"]["layer2.1.conv2"]["exact_zero"]
    assert last["dead_frac"]["layer3.1.out"] == 1.0 and last["dead_frac"]["stem"] < 1.0
    # Written after every epoch, so a run cut short keeps what it finished.
    assert len(json.loads(out.read_text())["epochs"]) == 2


def test_a_healthy_model_has_no_dead_stage_and_is_summarised(cifar, tmp_path):
    dl = load_script()
    out = tmp_path / "healthy.json"
    result = dl.train(run_args(dl, cifar, out, "--epochs", "1"), out)
    assert all(step is None for step in result["first_step_all_dead"].values())
    assert not any(row["exact_zero"] for row in result["epochs"][0]["layers"].values())
    out.write_text(json.dumps(result))
    line = dl.summary(str(out), result)
    assert "gradattn pe=none stem=imagenet adam wd=0.0001" in line
    assert "epoch 1 step 5" in line and "0/17 convs exactly 0" in line
    assert "layer3:-" in line


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
