"""Figures of one dataset -> plots/<dataset>/*.png, DVC plot data and the digest of its runs
-> plotdata/<dataset>/ (the report stage reads the digest; see stages/report.py)."""

import numpy as np
from tqdm import tqdm

from gradattn import paths
from gradattn import plots as P
from gradattn.config import TrainConfig, load_params
from gradattn.data import load_split
from gradattn.io import read_json, write_json
from gradattn.report import model_label
from gradattn.runs import dataset_meta, load_run_config, load_trained, make_batches
from gradattn.stage import run, stage_args
from gradattn.train import resolve_device


def plot_model(dataset: str, model: str, label: str, meta: dict, out, data, params) -> dict:
    """Every per-model figure and plot-data file; returns the run's digest record."""
    metrics = read_json(paths.metrics_file(dataset, model))
    history = read_json(paths.history_file(dataset, model))
    grads = read_json(paths.gradients_file(dataset, model))
    classes = meta["classes"]
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

    pred = np.load(paths.predictions_file(dataset, model))
    logits, labels = pred["logits"], pred["labels"]
    P.plot_reliability(P.reliability_rows(logits, labels, params.evaluate.ece_bins),
                       out / f"reliability_{model}.png", ece=metrics.get("ece"),
                       title=f"{name}: reliability")
    P.plot_confusion(labels, logits.argmax(1), classes, out / f"confusion_{model}.png",
                     title=f"{name}: confusion matrix")
    P.write_csv(data / "confusion" / f"{model}.csv",
                P.confusion_rows(labels, logits.argmax(1), classes))

    net, record = load_trained(dataset, model)
    if P.returns_attention(net):
        device = resolve_device(TrainConfig(**record["run_config"]["train"]).device)
        test = make_batches(dataset, "test", meta, batch_size=params.evaluate.batch_size,
                            device=device)
        attn = P.mean_attention(net.to(device), test.epoch(), total=len(test))
        P.plot_attention(attn, out / f"attention_{model}.png",
                         title=f"{name}: attention over the five taps, mean over "
                               f"{test.num_images:,} test images")
    summary = {k: v for k, v in grads.items() if k not in ("per_layer", "unused_layers")}
    return {"dataset": dataset, "model": model, "label": label,
            "options": record["options"], "metrics": metrics, "gradients": summary,
            "history": history}


def main() -> None:
    (dataset,) = stage_args("dataset")
    params = load_params()
    meta = dataset_meta(dataset)
    out, data = P.PLOTS / dataset, P.PLOTDATA / dataset
    records = []
    for model in tqdm(params.models, desc=f"plots {dataset}", unit="model"):
        label = model_label(model, load_run_config(dataset, model)["model_options"])
        records.append(plot_model(dataset, model, label, meta, out, data, params))
    P.plot_curves({r["label"]: r["history"] for r in records}, out / "curves.png",
                  title=f"{dataset}: training curves")
    images, labels = load_split(dataset, "train", paths.PREPARED)
    P.plot_overview(images, labels, meta["classes"], out / "overview.png",
                    title=f"{dataset}: training images per class (image count)")
    write_json(data / "runs.json", records)
    n_png = len(list(out.glob("*.png")))
    print(f"plot {dataset}: {n_png} figures in {out}/, plot data in {data}/ "
          f"({len(records)} models: {', '.join(r['label'] for r in records)})")


if __name__ == "__main__":
    run(main)
