"""The evaluate stage's work: a trained model on its test split gives the metrics, and
everything the figures need of the model and the data, so the plot stage reads files only.

`predictions/<dataset>/<model>.npz` (one per run, written by stages/evaluate.py) holds:

- `logits` float32 (N, K) and `labels` int64 (N,): the test split's predictions;
- `classes` str (K,): the class names;
- `options` str: the model's options as JSON (its display name depends on them);
- `attention` float32 (depth, 5, 5), only for models with attention over the taps (GradAttn):
  the attention weights averaged over heads and every test image, row = query tap,
  column = key tap, taps in depth order (stem, layer1 … layer4);
- `sample_images` uint8 (M, H, W, C) and `sample_labels` int64 (M,): at most 8 random
  training images of each of the first 20 classes (paper Figure 2), and `class_counts`
  int64 (K,): training images per class;
- `reliability` (evaluate.ece_bins,): the reliability diagram's bins, the ECE's own
  (gradattn.analysis.metrics.reliability_bins), a structured array of `bin_low`, `bin_high`,
  `confidence`, `accuracy` (NaN for an empty bin) and `count`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable

import numpy as np
import torch
from tqdm import tqdm

from gradattn.analysis.metrics import classification_metrics, reliability_bins, train_val_gap
from gradattn.core import paths
from gradattn.core.device import exact_fp32, resolve_device
from gradattn.core.io import read_json
from gradattn.models import count_parameters
from gradattn.prepared import load_meta, load_split
from gradattn.prepared.batches import make_batches
from gradattn.training.trained import load_trained, predict


def returns_attention(model: torch.nn.Module) -> bool:
    """Whether model(x, return_attention=True) is supported (GradAttn, not the controls)."""
    try:
        return "return_attention" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def mean_attention(model: torch.nn.Module, batches: Iterable, *, total: int | None = None,
                   progress: bool = True) -> np.ndarray:
    """Attention weights (depth, 5, 5), averaged over heads and every image: row = query tap,
    column = key tap. Eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    total_w, n = None, 0
    try:
        for x, _ in tqdm(batches, total=total, desc="attention", unit="batch", leave=False,
                         disable=None if progress else True):
            _, attn = model(x, return_attention=True)  # (depth, B, 5, 5)
            s = attn.float().sum(dim=1).cpu()
            total_w = s if total_w is None else total_w + s
            n += attn.shape[1]
    finally:
        model.train(was_training)
    if total_w is None:
        raise ValueError("no batches to average attention over")
    return (total_w / n).numpy()


def overview_sample(labels: np.ndarray, num_classes: int, *, per_class: int = 8,
                    max_classes: int = 20, seed: int = 0) -> np.ndarray:
    """Indices of at most per_class random images of each of the first max_classes classes,
    class by class, ascending within a class."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(min(num_classes, max_classes)):
        idx = np.flatnonzero(labels == c)
        picks.append(np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)))
    return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)


RELIABILITY_FIELDS = [("bin_low", "f8"), ("bin_high", "f8"), ("confidence", "f8"),
                      ("accuracy", "f8"), ("count", "i8")]


def reliability_array(rows: list[dict]) -> np.ndarray:
    """reliability_bins' rows as one structured array (an npz holds no dicts; NaN: None)."""
    nan = float("nan")
    return np.array([tuple(nan if row[k] is None else row[k] for k, _ in RELIABILITY_FIELDS)
                     for row in rows], dtype=RELIABILITY_FIELDS)


def evaluate(dataset: str, model_name: str, *, batch_size: int, ece_bins: int,
             gap: str = "signed") -> tuple[dict, dict[str, np.ndarray]]:
    """(metrics, arrays of the predictions file) of one trained run on its test split.

    The model evaluated holds the weights training kept (train.weights: the best epoch's or
    the last one's); the train-val gap and val_top1 are those of that epoch."""
    model, record = load_trained(dataset, model_name)
    device = resolve_device(record["run_config"]["train"]["device"])
    model.to(device)
    meta = load_meta(dataset)
    test = make_batches(dataset, "test", meta, batch_size=batch_size, device=device)
    with exact_fp32():  # on a GPU: the CPU's numbers up to rounding
        logits, labels = predict(model, test)
    history = read_json(paths.history_file(dataset, model_name))
    best = record["best_epoch"]
    evaluated = record.get("weights_epoch", best)  # older checkpoints: always the best
    metrics = classification_metrics(logits, labels, ece_bins=ece_bins)
    metrics.update({
        "train_val_gap": train_val_gap(history, evaluated, kind=gap),
        "val_top1": next(r["val_accuracy"] for r in history if r["epoch"] == evaluated),
        "best_epoch": best,
        "evaluated_epoch": evaluated,
        "epochs": len(history),
        "params": count_parameters(model),
        "test_images": len(labels),
    })
    images, train_labels = load_split(dataset, "train", paths.PREPARED)
    picks = overview_sample(train_labels, len(meta["classes"]))
    arrays = {
        "logits": logits.numpy(), "labels": labels.numpy(),
        "classes": np.asarray(meta["classes"], dtype=str),
        "options": np.asarray(json.dumps(record["options"], sort_keys=True)),
        "sample_images": np.asarray(images[picks]), "sample_labels": train_labels[picks],
        "class_counts": np.bincount(train_labels, minlength=len(meta["classes"])),
        "reliability": reliability_array(reliability_bins(logits, labels, ece_bins)),
    }
    if returns_attention(model):
        with exact_fp32():
            arrays["attention"] = mean_attention(model, test.epoch(), total=len(test))
    return metrics, arrays
