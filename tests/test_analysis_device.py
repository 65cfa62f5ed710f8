"""Evaluation and gradient analysis on the training device give the CPU's numbers.

The stages run them where training ran (`train.device`, resolve_device): on a GPU, with the
split resident on it and TF32 off (gradattn.core.device.exact_fp32), so they agree with the
CPU's to rounding — the tolerances below are the ones docs/gpu.md states. Without a GPU the
same code runs on the CPU stand-in of the GPU's data path (resident batches)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from training_helpers import META, tiny

from gradattn.analysis.evaluation import mean_attention
from gradattn.analysis.gradients import analyse_gradients
from gradattn.analysis.metrics import classification_metrics
from gradattn.core.device import exact_fp32
from gradattn.models import build_model
from gradattn.prepared.batches import Batches
from gradattn.training.trained import predict

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
LOGITS_RTOL = 1e-4  # of the largest logit: fp32 summed in another order
NORM_RTOL = 1e-3  # per-layer gradient norms (a backward pass: more sums)


def _data(n=96, size=8, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    return images, rng.integers(0, 3, n)


def _on(device: str, images, labels, meta=META, **kw) -> Batches:
    # The CPU stand-in: the resident path a GPU takes, on the CPU.
    return Batches(images, labels, meta, batch_size=32, device=device, resident=True, **kw)


@DEVICES
def test_evaluation_on_the_device_matches_the_cpu(device):
    images, labels = _data()
    model = tiny(dropout=0.2)
    reference = classification_metrics(*predict(model, Batches(images, labels, META,
                                                               batch_size=32)), ece_bins=10)
    ref_logits, _ = predict(model, Batches(images, labels, META, batch_size=32))
    moved = copy.deepcopy(model).to(device)
    with exact_fp32():
        logits, got_labels = predict(moved, _on(device, images, labels))
    assert logits.device.type == "cpu" and torch.equal(got_labels, torch.from_numpy(labels))
    assert (logits - ref_logits).abs().max() <= LOGITS_RTOL * ref_logits.abs().max()
    metrics = classification_metrics(logits, got_labels, ece_bins=10)
    assert metrics.keys() == reference.keys()
    for key, value in reference.items():  # argmax and bins agree at this tolerance
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


@DEVICES
def test_gradient_analysis_on_the_device_matches_the_cpu(device):
    images, labels = _data(n=64)
    model = tiny(dropout=0.0)
    kw = dict(num_batches=2, low=1e-6, high=10.0, seed=42, progress=False)
    host = Batches(images, labels, META, batch_size=32, shuffle=True)
    reference = analyse_gradients(copy.deepcopy(model), host.epoch(42), **kw)
    got = analyse_gradients(copy.deepcopy(model).to(device),
                            _on(device, images, labels, shuffle=True).epoch(42), **kw)
    assert got["ghs"] == reference["ghs"] and got["layers"] == reference["layers"]
    assert got["vanishing"] == reference["vanishing"]
    assert [r["layer"] for r in got["per_layer"]] == [r["layer"] for r in reference["per_layer"]]
    for mine, row in zip(got["per_layer"], reference["per_layer"], strict=True):
        for kind in ("output_norm", "parameter_norm"):
            assert mine[kind] == pytest.approx(row[kind], rel=NORM_RTOL), (row["layer"], kind)
        assert mine["status"] == row["status"]


@DEVICES
def test_gradattn_attention_on_the_device_matches_the_cpu(device):
    images, labels = _data(n=16, size=32, channels=3)
    meta = {"mean": [0.5] * 3, "std": [0.25] * 3}
    torch.manual_seed(0)
    model = build_model("gradattn", num_classes=3, in_channels=3, dim=16, depth=1, heads=2,
                        ff_dim=32)
    reference = mean_attention(model, Batches(images, labels, meta, batch_size=8).epoch(),
                               progress=False)
    with exact_fp32():
        got = mean_attention(copy.deepcopy(model).to(device),
                             _on(device, images, labels, meta).epoch(), progress=False)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-6)


def test_exact_fp32_turns_tf32_off_for_the_block_only():
    cudnn = torch.backends.cudnn
    before = cudnn.allow_tf32
    with exact_fp32():
        assert not cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert cudnn.allow_tf32 == before
