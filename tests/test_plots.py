"""Tests of gradattn.plots and gradattn.report: every figure is written as a non-empty PNG
from small synthetic inputs, and results.md / summary.json carry the right numbers."""

from __future__ import annotations

import csv
import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gradattn import plots as P
from gradattn.report import (
    model_label,
    results_markdown,
    runs_frame,
    summary_entries,
    table_gap,
    table_gradients,
    table_top1,
)

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["cat", "dog", "bird"]


def assert_png(path: Path) -> None:
    assert path.exists(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, path
    assert not list(path.parent.glob(f".{path.name}.*")), "temporary file left behind"


def history(final: float, epochs: int = 4) -> list[dict]:
    return [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e,
             "train_accuracy": final * e / epochs + 0.02, "val_accuracy": final * e / epochs,
             "lr": 1e-3, "seconds": 1.0} for e in range(1, epochs + 1)]


def per_layer() -> list[dict]:
    return [
        {"layer": "conv1", "type": "conv", "output_norm": 0.3, "parameter_norm": 1.5,
         "status": "healthy"},
        {"layer": "layer1.0.conv1", "type": "conv", "output_norm": 2e-8, "parameter_norm": 3e-7,
         "status": "vanishing"},
        {"layer": "encoder.layers.0", "type": "encoder", "output_norm": 40.0,
         "parameter_norm": 12.0, "status": "exploding"},
        {"layer": "head", "type": "linear", "output_norm": 0.05, "parameter_norm": 0.8,
         "status": "healthy"},
    ]


def record(dataset: str, model: str, top1: float, ghs: float, pe: str | None = None) -> dict:
    options = {"pe": pe} if pe else {}
    return {
        "dataset": dataset, "model": model, "label": model_label(model, options),
        "options": options,
        "metrics": {"top1": top1, "top3": 0.95, "top5": 0.99, "precision_macro": 0.7,
                    "precision_weighted": 0.71, "recall_macro": 0.72, "recall_weighted": 0.73,
                    "f1_macro": 0.6543, "f1_weighted": 0.66, "ece": 0.1234, "ece_bins": 15,
                    "loss": 0.5, "train_val_gap": 0.0321, "val_top1": 0.8, "best_epoch": 3,
                    "epochs": 4, "params": 1000, "test_images": 60},
        "gradients": {"ghs": ghs, "vanishing": 2, "exploding": 1, "layers": 20,
                      "norm_mean": 0.0123, "norm_min": 1.5e-7, "norm_max": 12.5,
                      "norm_std": 0.5, "ghs_norm": "output", "bounds": [1e-6, 10.0],
                      "batches": 10},
        "history": history(top1),
    }


def test_training_curves_and_comparison(tmp_path):
    hist = {"ResNet-18": history(0.8), "GradAttn (learnable PE)": history(0.7, epochs=6)}
    assert_png(P.plot_curves(hist, tmp_path / "curves.png", title="toy: curves"))
    top1 = {"a": {"ResNet-18": 0.8, "GradAttn (learnable PE)": 0.7},
            "b": {"ResNet-18": 0.5, "GradAttn (learnable PE)": None}}
    assert_png(P.plot_comparison({"a": hist, "b": {"ResNet-18": history(0.5)}}, top1,
                                 tmp_path / "comparison.png"))
    assert_png(P.plot_comparison({"a": hist}, {"a": top1["a"]}, tmp_path / "one.png"))


def test_gradient_figures(tmp_path):
    layers = [r["layer"] for r in per_layer()]
    rows = [{"epoch": e, "layer": name, "norm": 10.0 ** (-i - e / 3)}
            for e in range(1, 6) for i, name in enumerate(layers)]
    assert_png(P.plot_gradient_heatmap(rows, tmp_path / "over_epochs.png", title="toy",
                                       layer_order=layers))
    assert_png(P.plot_layer_gradients(per_layer(), tmp_path / "bars.png", low=1e-6, high=10.0,
                                      title="toy"))
    data = P.gradient_rows(per_layer())
    assert data[1]["layer"] == "01 layer1.0.conv1"
    assert data[0]["log10_output_norm"] == pytest.approx(np.log10(0.3))
    P.write_csv(tmp_path / "g.csv", data)
    with open(tmp_path / "g.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4


def test_overview_reliability_confusion(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (30, 12, 12, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 10)
    assert_png(P.plot_overview(images, labels, CLASSES, tmp_path / "overview.png", title="toy",
                               per_class=4))
    grey = images[..., :1]
    assert_png(P.plot_overview(grey, labels, CLASSES, tmp_path / "grey.png", title="toy",
                               per_class=3, max_classes=2))
    logits = rng.normal(size=(30, 3)).astype(np.float32) + 2 * np.eye(3)[labels]
    bins = P.reliability_rows(logits, labels, 10)
    assert len(bins) == 10 and sum(b["count"] for b in bins) == 30
    assert_png(P.plot_reliability(bins, tmp_path / "rel.png", ece=0.1, title="toy"))
    preds = logits.argmax(1)
    assert_png(P.plot_confusion(labels, preds, CLASSES, tmp_path / "conf.png", title="toy"))
    rows = P.confusion_rows(labels, preds, CLASSES)
    assert rows[0] == {"actual": "cat", "predicted": CLASSES[preds[0]]}


def test_attention_figure_and_average():
    class Toy(torch.nn.Module):
        def forward(self, x, *, return_attention=False):
            b = x.shape[0]
            attn = torch.zeros(2, b, 5, 5)
            attn[0, :, :, 0] = 1.0  # layer 0 attends the stem
            attn[1, :, :, 4] = x[:, 0, None]  # layer 1: weight = the input value
            return torch.zeros(b, 3), attn

    assert P.returns_attention(Toy())
    assert not P.returns_attention(torch.nn.Linear(2, 2))
    batches = [(torch.ones(2, 1), None), (torch.zeros(2, 1), None)]
    mean = P.mean_attention(Toy(), batches, progress=False)
    assert mean.shape == (2, 5, 5)
    assert mean[0, :, 0] == pytest.approx(1.0)
    assert mean[1, :, 4] == pytest.approx(0.5)  # averaged over the 4 images


def test_attention_png(tmp_path):
    attn = np.random.default_rng(0).dirichlet(np.ones(5), size=(3, 5))  # (depth, 5, 5)
    assert_png(P.plot_attention(attn, tmp_path / "attention.png", title="toy"))


def test_tables_have_the_right_numbers():
    df = runs_frame([record("a", "resnet18", 0.8123, 1.0),
                     record("a", "gradattn", 0.8456, 0.75, pe="rope")])
    top1 = table_top1(df)
    assert "| Dataset | ResNet-18 | GradAttn (RoPE) |" in top1
    assert "| a | 81.23 | **84.56** |" in top1
    gap = table_gap(df)
    assert "| a | ResNet-18 | 83.21 | 80.00 | +3.21 | 3 | 4 |" in gap
    grads = table_gradients(df)
    assert "| a | GradAttn (RoPE) | 0.750 | 2 vanishing, 1 exploding | 1.23e-02 |" in grads


def test_tables_show_mean_and_std_over_runs():
    df = runs_frame([record("a", "resnet18", 0.80, 1.0), record("a", "resnet18", 0.90, 1.0)])
    assert "85.00 ± 7.07 (n=2)" in table_top1(df)


def test_results_markdown_and_summary():
    df = runs_frame([record("a", "resnet18", 0.8123, 1.0), record("b", "resnet18", 0.5, 0.9),
                     record("b", "gradattn", 0.6, 0.8, pe="learnable")])
    text = results_markdown(df, figures=[("curves", "a/curves.png")])
    for heading in ("## Table 1", "## Table 2", "## Table 4", "## Table 5"):
        assert heading in text
    assert "15 equal-width confidence bins" in text
    assert "| a | ResNet-18 | 95.00 | 99.00 | 0.654 | 0.123 |" in text
    assert "| b | – | 60.00 |" not in text
    assert "| b | 50.00 | **60.00** |" in text
    assert "| a | 81.23 | – |" in text  # GradAttn did not run on a
    assert "gradient w.r.t. each layer's output" in text and "1e-06 < norm < 10" in text
    assert "[curves](a/curves.png)" in text
    summary = summary_entries(df)
    assert set(summary) == {"a/resnet18", "b/resnet18", "b/gradattn"}
    assert summary["b/gradattn"]["top1"] == 0.6 and summary["b/gradattn"]["ghs"] == 0.8
    assert summary["a/resnet18"]["vanishing"] == 2 and summary["a/resnet18"]["epochs"] == 4
    assert all(not isinstance(v, (dict, list)) for e in summary.values() for v in e.values())


def test_runs_frame_tolerates_missing_gradients():
    rec = record("a", "resnet18", 0.8, 1.0)
    rec.pop("gradients")
    df = runs_frame([rec])
    assert isinstance(df, pd.DataFrame) and pd.isna(df.loc[0, "ghs"])
    assert "| a | ResNet-18 | – | – |" in table_gradients(df)


def test_report_stage_writes_results_summary_and_comparison(tmp_path, monkeypatch):
    """stages/report.py end to end on synthetic digests (what the plot stage writes)."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    digest = tmp_path / "plotdata" / "fashionmnist-mini" / "runs.json"
    digest.parent.mkdir(parents=True)
    digest.write_text(json.dumps([record("fashionmnist-mini", "resnet18", 0.7867, 1.0),
                                  record("fashionmnist-mini", "gradattn", 0.7733, 0.9,
                                         pe="learnable"),
                                  record("fashionmnist-mini", "noskip18", 0.1, 1.0)]))
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "stages" / "report.py"), run_name="__main__")
    text = (tmp_path / "plots" / "results.md").read_text()
    assert "| fashionmnist-mini | **78.67** | 77.33 |" in text
    assert "No-skip" not in text  # not in params.yaml's models: left out
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert summary["fashionmnist-mini/gradattn"]["top1"] == 0.7733
    assert_png(tmp_path / "plots" / "comparison.png")
