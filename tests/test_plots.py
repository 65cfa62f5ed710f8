"""Tests of gradattn.reporting.plots, gradattn.analysis.evaluation and gradattn.reporting.report:
every figure is written as a non-empty PNG from small synthetic inputs, the evaluate stage
saves what the plot stage
needs so that plot reads files only, and results.md / summary.json carry the right numbers."""

from __future__ import annotations

import csv
import json
import runpy
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, committed, copy_committed, with_importtime

from gradattn.analysis.evaluation import mean_attention, overview_sample, returns_attention
from gradattn.analysis.metrics import reliability_bins
from gradattn.config import TrainConfig
from gradattn.core import paths
from gradattn.core.io import write_json
from gradattn.models import build_model
from gradattn.prepared import load_meta
from gradattn.prepared.format import PreparedWriter
from gradattn.reporting import plots as P
from gradattn.reporting.experiments import Run
from gradattn.reporting.names import model_label
from gradattn.reporting.report import results_markdown, summary_entries
from gradattn.reporting.table import Study, markdown
from gradattn.training.trained import save_trained

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


def study(*records: dict) -> Study:
    """The runs of records, one seed each (so runs of one dataset and model pool)."""
    return Study([Run("w", r["dataset"], r["model"], r["options"], {}, seed, r["metrics"],
                      r.get("gradients")) for seed, r in enumerate(records)])


def report_tables(s: Study, *tables: int) -> str:
    """Tables as results.md lays them out."""
    return markdown(s, tables, paper_columns=False, bold_best=True)


def digest(*records: dict) -> dict:
    """plotdata/<dataset>/runs.json of records: their run files, keyed by path."""
    files = {}
    for r in records:
        d, m = r["dataset"], r["model"]
        files[paths.metrics_file(d, m).as_posix()] = r["metrics"]
        files[paths.gradients_file(d, m).as_posix()] = r["gradients"]
        files[paths.history_file(d, m).as_posix()] = r["history"]
    return files


def test_seeds_of_one_model_share_its_colour_and_its_one_legend_entry(tmp_path):
    runs = {f"{model}, seed {seed}": model for model in ("ResNet-18", "GradAttn (no PE)")
            for seed in (42, 43, 44)}
    legend, lines = P.curve_colours(list(runs), runs)
    assert list(legend) == ["ResNet-18", "GradAttn (no PE)"]
    assert legend["ResNet-18"] != legend["GradAttn (no PE)"]
    assert all(lines[label] == legend[model] for label, model in runs.items())
    alone, same = P.curve_colours(["a", "b"])  # no groups: each label its own entry
    assert list(alone) == ["a", "b"] and same == alone
    assert_png(P.plot_curves({label: history(0.8) for label in runs}, tmp_path / "seeds.png",
                             title="toy: seeds", groups=runs))


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
    bins = reliability_bins(torch.as_tensor(logits), torch.as_tensor(labels), 10)
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

    assert returns_attention(Toy())
    assert not returns_attention(torch.nn.Linear(2, 2))
    batches = [(torch.ones(2, 1), None), (torch.zeros(2, 1), None)]
    mean = mean_attention(Toy(), batches, progress=False)
    assert mean.shape == (2, 5, 5)
    assert mean[0, :, 0] == pytest.approx(1.0)
    assert mean[1, :, 4] == pytest.approx(0.5)  # averaged over the 4 images


def test_attention_png(tmp_path):
    attn = np.random.default_rng(0).dirichlet(np.ones(5), size=(3, 5))  # (depth, 5, 5)
    assert_png(P.plot_attention(attn, tmp_path / "attention.png", title="toy"))


def test_tables_have_the_right_numbers():
    s = study(record("a", "resnet18", 0.8123, 1.0),
              record("a", "gradattn", 0.8456, 0.75, pe="rope"))
    top1 = report_tables(s, 1)
    assert "| Dataset | ResNet-18 | GradAttn (RoPE) |" in top1
    assert "| a | 81.23 | **84.56** |" in top1
    gap = report_tables(s, 4)
    assert "| a | ResNet-18 | 83.21 | 80.00 | +3.21 | 3 | 4 |" in gap
    grads = report_tables(s, 5)
    assert "| a | GradAttn (RoPE) | 0.750 | 2 vanishing, 1 exploding | 1.23e-02 |" in grads


def test_tables_show_mean_and_std_over_runs():
    s = study(record("a", "resnet18", 0.80, 1.0), record("a", "resnet18", 0.90, 1.0))
    assert "85.00 ± 7.07 (n=2)" in report_tables(s, 1)


def test_results_markdown_and_summary():
    s = study(record("a", "resnet18", 0.8123, 1.0), record("b", "resnet18", 0.5, 0.9),
              record("b", "gradattn", 0.6, 0.8, pe="learnable"))
    text = results_markdown(s, figures=[("curves", "a/curves.png")])
    for heading in ("## Table 1", "## Table 2", "## Table 4", "## Table 5"):
        assert heading in text
    assert "15 equal-width confidence bins" in text
    assert "| a | ResNet-18 | 95.00 | 99.00 | 0.654 | 0.123 |" in text
    assert "| b | – | 60.00 |" not in text
    assert "| b | 50.00 | **60.00** |" in text
    assert "| a | 81.23 | – |" in text  # GradAttn did not run on a
    assert "GradAttn (no PE)" not in text  # results.md shows the models that ran, no others
    assert "gradient w.r.t. each layer's output" in text and "1e-06 < norm < 10" in text
    assert "[curves](a/curves.png)" in text
    summary = summary_entries(s)
    assert set(summary) == {"a/resnet18", "b/resnet18", "b/gradattn"}
    assert summary["b/gradattn"]["top1"] == 0.6 and summary["b/gradattn"]["ghs"] == 0.8
    assert summary["a/resnet18"] == {"top1": 0.8123, "f1_macro": 0.6543, "ece": 0.1234,
                                     "ghs": 1.0, "epochs": 4}  # the headline only
    assert all(not isinstance(v, (dict, list)) for e in summary.values() for v in e.values())


def test_tables_tolerate_missing_gradients():
    rec = record("a", "resnet18", 0.8, 1.0)
    rec.pop("gradients")
    s = study(rec, record("a", "gradattn", 0.7, 1.0, pe="rope"))
    assert "| a | ResNet-18 | – | – |" in report_tables(s, 5)
    assert summary_entries(s)["a/resnet18"]["top1"] == 0.8
    assert "No gradient files" in report_tables(study(rec), 5)


def test_report_stage_writes_results_summary_and_comparison(tmp_path, monkeypatch):
    """stages/report.py end to end on synthetic digests (what the plot stage writes)."""
    copy_committed("params.yaml", tmp_path)
    copy_committed("configs", tmp_path)  # configure's output (in git)
    file = tmp_path / "plotdata" / "fashionmnist-mini" / "runs.json"
    file.parent.mkdir(parents=True)
    env = {"cpu": "Intel Xeon", "threads": 2, "gpu": None, "python": "3.12.1", "torch": "2.9.0",
           "torchvision": "0.24.0", "numpy": "2.3.0", "precision": "fp32", "fast": "off",
           "gradattn_commit": "0123456789abcdef+modified"}
    file.write_text(json.dumps(digest(record("fashionmnist-mini", "resnet18", 0.7867, 1.0),
                                      record("fashionmnist-mini", "gradattn", 0.7733, 0.9,
                                             pe="learnable"),
                                      record("fashionmnist-mini", "noskip18", 0.1, 1.0))
                               | {"metrics/fashionmnist-mini/resnet18.train.run.json":
                                  {"environment": env}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["report.py"])  # the stage takes no arguments
    runpy.run_path(str(ROOT / "stages" / "report.py"), run_name="__main__")
    text = (tmp_path / "plots" / "results.md").read_text()
    assert "| fashionmnist-mini | **78.67** | 77.33 |" in text
    assert "No-skip" not in text  # not in params.yaml's models: left out
    # The protocol as the recipe resolved it, not params.yaml's `auto`.
    assert "- Data: fashionmnist-mini: official split (seed 0)" in text
    assert "the best epoch's weights evaluated" in text and "auto" not in text
    # What is reproducible, that the bundled study is a smoke test, and where it ran.
    assert "bit for bit on the same machine" in text and "a smoke test" in text
    assert "`results/`" in text
    assert ("- Environment (train stage): Intel Xeon, 2 threads; Python 3.12.1, torch 2.9.0, "
            "torchvision 0.24.0, numpy 2.3.0; fp32, fast path off; gradattn "
            "0123456789ab+modified.") in text
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert summary["fashionmnist-mini/gradattn"]["top1"] == 0.7733
    assert_png(tmp_path / "plots" / "comparison.png")


def test_overview_sample_is_seeded_and_capped():
    labels = np.repeat(np.arange(25), [3] + [10] * 24)
    picks = overview_sample(labels, 25, per_class=8, max_classes=20)
    assert np.array_equal(picks, overview_sample(labels, 25, per_class=8, max_classes=20))
    shown = labels[picks]
    assert set(shown) == set(range(20))  # the first 20 classes only
    assert np.bincount(shown).tolist() == [3] + [8] * 19  # all of a small class, else 8
    assert all(np.all(np.diff(picks[shown == c]) > 0) for c in range(20))  # distinct, in order


def _stage(name: str, *args: str) -> None:
    sys.argv = [name, *args]
    runpy.run_path(str(ROOT / "stages" / f"{name}.py"), run_name="__main__")


def test_evaluate_saves_what_plot_needs_and_plot_reads_files_only(tmp_path, monkeypatch):
    """stages/evaluate.py on a real (untrained) GradAttn and prepared data; then models/ and
    data/ are deleted and stages/plot.py (a process of its own, without torch) still draws
    every figure, attention included."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv)
    params = yaml.safe_load(committed("params.yaml"))
    params["models"] = ["gradattn"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rng = np.random.default_rng(0)
    classes = ["cat", "dog", "bird"]
    with PreparedWriter("toy", classes, root=paths.PREPARED) as writer:
        for split, n in (("train", 40), ("val", 9), ("test", 12)):
            writer.write_split(split, rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                               np.arange(n) % 3)
        writer.commit()
    meta = load_meta("toy", paths.PREPARED)
    options = {"pe": "rope", "dim": 16, "depth": 2, "heads": 2, "ff_dim": 32}
    torch.manual_seed(0)
    net = build_model("gradattn", num_classes=3, in_channels=1, **options)
    config = {"dataset": "toy", "model": "gradattn", "model_options": options,
              "train": asdict(TrainConfig(device="cpu").resolve("corrected", "toy"))}
    save_trained(paths.model_file("toy", "gradattn"), net, config, meta, best_epoch=3, epochs=4)
    write_json(paths.history_file("toy", "gradattn"), history(0.5))

    _stage("evaluate", "toy", "gradattn")
    with np.load(paths.predictions_file("toy", "gradattn")) as npz:
        pred = dict(npz)
    assert pred["attention"].shape == (2, 5, 5)  # (depth, query tap, key tap)
    assert pred["attention"].sum(-1) == pytest.approx(np.ones((2, 5)), abs=1e-5)  # softmax rows
    assert pred["logits"].shape == (12, 3) and list(pred["classes"]) == classes
    assert json.loads(str(pred["options"]))["pe"] == "rope"
    assert pred["class_counts"].tolist() == [14, 13, 13]
    assert np.bincount(pred["sample_labels"]).tolist() == [8, 8, 8]
    metrics = json.loads((tmp_path / paths.metrics_file("toy", "gradattn")).read_text())
    assert metrics["test_images"] == 12 and metrics["best_epoch"] == 3
    # The reliability diagram's bins are the ECE's: the plot stage needs no torch for them.
    bins = pred["reliability"]
    assert len(bins) == metrics["ece_bins"] and bins["count"].sum() == 12
    full = bins[bins["count"] > 0]
    ece = float(np.sum(np.abs(full["accuracy"] - full["confidence"]) * full["count"]) / 12)
    assert ece == pytest.approx(metrics["ece"], abs=1e-6)
    assert np.isnan(bins["accuracy"][bins["count"] == 0]).all()

    grads = record("toy", "gradattn", 0.5, 0.75)["gradients"] | {"per_layer": per_layer()}
    write_json(paths.gradients_file("toy", "gradattn"), grads)
    shutil.rmtree(tmp_path / "models")
    shutil.rmtree(tmp_path / "data")
    proc, imports = with_importtime(ROOT / "stages/plot.py", "toy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "matplotlib" in imports and not imports & {"torch", "torchvision"}  # start-up: 2 s less
    for name in ("attention_gradattn", "overview", "curves", "reliability_gradattn",
                 "confusion_gradattn", "gradients_gradattn"):
        assert_png(tmp_path / "plots" / "toy" / f"{name}.png")
    runs = json.loads((tmp_path / "plotdata" / "toy" / "runs.json").read_text())
    assert runs["metrics/toy/gradattn.json"] == metrics
    assert "per_layer" not in runs["metrics/toy/gradattn.gradients.json"]
    assert runs["metrics/toy/gradattn.history.json"] == history(0.5)


def test_gradient_heatmap_draws_dead_layers_apart(tmp_path, monkeypatch):
    # A layer whose norm is exactly 0 from epoch 2 on gets the "dead" legend; none without.
    import importlib.util

    figures = []
    real_save = P.save
    monkeypatch.setattr(P, "save", lambda fig, path: figures.append(fig) or real_save(fig, path))
    rows = [{"epoch": e, "layer": layer, "norm": 0.0 if (layer == "deep" and e > 1) else 0.1}
            for e in (1, 2, 3) for layer in ("shallow", "deep")]
    assert_png(P.plot_gradient_heatmap(rows, tmp_path / "dead.png", title="toy"))
    alive = [{**r, "norm": 0.1} for r in rows]
    P.plot_gradient_heatmap(alive, tmp_path / "alive.png", title="toy")
    legends = [[t.get_text() for ax in f.axes if ax.get_legend()
                for t in ax.get_legend().get_texts()] for f in figures]
    assert legends == [["exactly 0 (dead)"], []]
    # The script names the first epoch from which a layer stayed at exactly 0.
    path = Path(__file__).resolve().parents[1] / "scripts/grad_history_figure.py"
    spec = importlib.util.spec_from_file_location("grad_history_figure", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.first_dead_epochs(rows) == {"deep": 2}
    revived = rows + [{"epoch": 4, "layer": "deep", "norm": 0.1}]
    assert script.first_dead_epochs(revived) == {}
