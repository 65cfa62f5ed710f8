"""Evaluate one trained (dataset, model) pair on its test split: metrics JSON, and the
predictions file with all the figures need of the model and data (gradattn.analysis.evaluation)."""

from dataclasses import asdict

import numpy as np

from gradattn.core import paths
from gradattn.core.io import write_json, write_with
from gradattn.core.records import write_run_record
from gradattn.core.settings import load_resolved, read_recipe
from gradattn.core.stage import stage_args, stage_entry


def main() -> None:
    dataset, model_name = stage_args("dataset", "model")
    cfg = load_resolved("evaluate")
    # Imported once the arguments and settings are checked: a wrong call or a bad
    # params.yaml answers at once, without torch.
    from gradattn.analysis.evaluation import evaluate

    metrics, arrays = evaluate(dataset, model_name, batch_size=cfg.batch_size,
                               ece_bins=cfg.ece_bins, gap=cfg.gap)
    write_run_record(dataset, model_name, "evaluate", read_recipe(), asdict(cfg),
                     evaluated_epoch=metrics["evaluated_epoch"],
                     best_epoch=metrics["best_epoch"])
    write_with(paths.predictions_file(dataset, model_name),
               lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")
    write_json(paths.metrics_file(dataset, model_name), metrics)
    print(
        f"evaluate {dataset}/{model_name}: top-1 {metrics['top1']:.4f}, "
        f"F1 (macro) {metrics['f1_macro']:.4f}, ECE {metrics['ece']:.4f} "
        f"({cfg.ece_bins} bins), train-val gap {metrics['train_val_gap']:+.4f} ({cfg.gap}, "
        f"epoch {metrics['evaluated_epoch']}) "
        f"on {metrics['test_images']:,} test images"
        + (", attention over the taps saved" if "attention" in arrays else "")
    )


if __name__ == "__main__":
    stage_entry(main)
