"""Evaluate one trained (dataset, model) pair on its test split: metrics JSON + predictions."""

import numpy as np

from gradattn import paths
from gradattn.config import load_params
from gradattn.io import read_json, write_json, write_with
from gradattn.metrics import classification_metrics, train_val_gap
from gradattn.models import count_parameters
from gradattn.runs import dataset_meta, load_trained, make_batches
from gradattn.stage import run, stage_args
from gradattn.train import predict, resolve_device


def main() -> None:
    dataset, model_name = stage_args("dataset", "model")
    cfg = load_params().evaluate
    model, record = load_trained(dataset, model_name)
    device = resolve_device(record["run_config"]["train"]["device"])
    model.to(device)
    meta = dataset_meta(dataset)
    test = make_batches(dataset, "test", meta, batch_size=cfg.batch_size, device=device)
    logits, labels = predict(model, test)
    history = read_json(paths.history_file(dataset, model_name))
    best = record["best_epoch"]
    metrics = classification_metrics(logits, labels, ece_bins=cfg.ece_bins)
    metrics.update(
        {
            "train_val_gap": train_val_gap(history, best),
            "val_top1": next(r["val_accuracy"] for r in history if r["epoch"] == best),
            "best_epoch": best,
            "epochs": len(history),
            "params": count_parameters(model),
            "test_images": len(labels),
        }
    )
    write_with(
        paths.predictions_file(dataset, model_name),
        lambda tmp: np.savez_compressed(tmp, logits=logits.numpy(), labels=labels.numpy()),
        suffix=".npz",
    )
    write_json(paths.metrics_file(dataset, model_name), metrics)
    print(
        f"evaluate {dataset}/{model_name}: top-1 {metrics['top1']:.4f}, "
        f"F1 (macro) {metrics['f1_macro']:.4f}, ECE {metrics['ece']:.4f} "
        f"({cfg.ece_bins} bins), train-val gap {metrics['train_val_gap']:+.4f} "
        f"on {len(labels):,} test images"
    )


if __name__ == "__main__":
    run(main)
