"""One dataset's figures -> plots/<dataset>/*.png, DVC plot data and the digest of its runs
-> plotdata/<dataset>/ (the plot stage; the report stage reads the digest, see
gradattn.reporting.report).

Reads files only: metrics/<dataset>/ and predictions/<dataset>/ (which the evaluate stage
writes with what the figures need of the models and data; see gradattn.analysis.evaluation).
Each figure is drawn by gradattn.reporting.plots."""

from __future__ import annotations

import json

import numpy as np
from tqdm import tqdm

from gradattn.core import paths
from gradattn.core.errors import GradattnError
from gradattn.core.io import read_json, reading, restore_hint, write_json
from gradattn.reporting import plots as P
from gradattn.reporting.names import model_label

NEEDED = ("logits", "labels", "classes", "options", "sample_images", "sample_labels",
          "class_counts", "reliability")


def read_predictions(dataset: str, model: str) -> dict[str, np.ndarray]:
    """The evaluate stage's predictions file (its format: gradattn.analysis.evaluation)."""
    path = paths.predictions_file(dataset, model)
    if not path.exists():
        raise GradattnError(f"{path} not found: run `dvc repro evaluate@{dataset}-{model}` first")
    with reading(path, restore_hint(path, f"evaluate@{dataset}-{model}")):
        with np.load(path, allow_pickle=False) as npz:
            pred = dict(npz)
    missing = [k for k in NEEDED if k not in pred]
    if missing:
        raise GradattnError(f"{path} lacks {', '.join(missing)} (an older evaluate stage wrote "
                            f"it): run `dvc repro -f evaluate@{dataset}-{model}`")
    return pred


def plot_model(dataset: str, model: str, out, data) -> tuple[str, dict]:
    """Every per-model figure and plot-data file; returns the model's display name and the
    run's files for the digest."""
    metrics = read_json(paths.metrics_file(dataset, model))
    grads = read_json(paths.gradients_file(dataset, model))
    pred = read_predictions(dataset, model)
    classes = [str(c) for c in pred["classes"]]
    label = model_label(model, json.loads(str(pred["options"])))
    name = f"{dataset} — {label}"

    grad_file = paths.grad_history_file(dataset, model)
    grad_rows = read_json(grad_file) if grad_file.exists() else []
    if grad_rows:
        P.plot_gradient_heatmap(grad_rows, out / f"gradients_over_epochs_{model}.png",
                                title=f"{name}: parameter-gradient norm per layer and epoch\n"
                                      "(last batch of each epoch)",
                                layer_order=[r["layer"] for r in grads["per_layer"]])
    low, high = grads["bounds"]
    P.plot_layer_gradients(grads["per_layer"], out / f"gradients_{model}.png", low=low, high=high,
                           title=f"{name}: gradient norms of the trained model\n"
                                 f"GHS {grads['ghs']:.3f} ({grads['ghs_norm']} norm): "
                                 f"{grads['vanishing']} vanishing, {grads['exploding']} "
                                 f"exploding of {grads['layers']} layers "
                                 f"({grads['batches']} batches)")
    P.write_csv(data / "gradients" / f"{model}.csv", P.gradient_rows(grads["per_layer"]))

    logits, labels = pred["logits"], pred["labels"]
    reliability = [{k: row[k].item() for k in row.dtype.names} for row in pred["reliability"]]
    P.plot_reliability(reliability, out / f"reliability_{model}.png", ece=metrics.get("ece"),
                       title=f"{name}: reliability")
    P.plot_confusion(labels, logits.argmax(1), classes, out / f"confusion_{model}.png",
                     title=f"{name}: confusion matrix")
    P.write_csv(data / "confusion" / f"{model}.csv",
                P.confusion_rows(labels, logits.argmax(1), classes))
    if "attention" in pred:
        P.plot_attention(pred["attention"], out / f"attention_{model}.png",
                         title=f"{name}: attention over the five taps, mean over "
                               f"{len(labels):,} test images")
    summary = {k: v for k, v in grads.items() if k not in ("per_layer", "unused_layers")}
    record = paths.run_record_file(dataset, model, "train")
    # The report says where the runs ran (the environment the train stage recorded).
    environment = {record.as_posix(): {"environment": read_json(record).get("environment")}
                   } if record.exists() else {}
    return label, environment | {paths.metrics_file(dataset, model).as_posix(): metrics,
                   paths.gradients_file(dataset, model).as_posix(): summary,
                   paths.history_file(dataset, model).as_posix():
                       read_json(paths.history_file(dataset, model))}


def plot_dataset(dataset: str, models: list[str]) -> str:
    """Every figure, plot-data file and the digest of `dataset`'s runs of `models`; returns
    the stage's one-line summary."""
    out, data = P.PLOTS / dataset, P.PLOTDATA / dataset
    labels, files = {}, {}
    for model in tqdm(models, desc=f"plots {dataset}", unit="model"):
        labels[model], run_files = plot_model(dataset, model, out, data)
        files |= run_files
    P.plot_curves({labels[m]: files[paths.history_file(dataset, m).as_posix()] for m in models},
                  out / "curves.png", title=f"{dataset}: training curves")
    sample = read_predictions(dataset, models[0])  # every model's holds the same sample
    P.plot_overview(sample["sample_images"], sample["sample_labels"],
                    [str(c) for c in sample["classes"]], out / "overview.png",
                    counts=sample["class_counts"],
                    title=f"{dataset}: training images per class (image count)")
    write_json(data / "runs.json", files)
    n_png = len(list(out.glob("*.png")))
    return (f"plot {dataset}: {n_png} figures in {out}/, plot data in {data}/ "
            f"({len(models)} models: {', '.join(labels.values())})")
