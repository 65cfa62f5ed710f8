"""Classification metrics of the paper's Tables 1–4, computed with torchmetrics."""

from __future__ import annotations

import torch
import torchmetrics.functional.classification as tmc


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, *, ece_bins: int = 15
) -> dict[str, float | None]:
    """Top-1/3/5, macro and weighted precision/recall/F1, and ECE (equal-width bins).

    Fractions in [0, 1]. Top-k with k ≥ the number of classes is always 1, so it is
    reported as None (not applicable) rather than as a meaningless perfect score.
    """
    k = logits.shape[1]
    probs = logits.float().softmax(1)
    out: dict[str, float | None] = {}
    for top in (1, 3, 5):
        out[f"top{top}"] = (
            tmc.multiclass_accuracy(probs, labels, num_classes=k, top_k=top, average="micro").item()
            if top == 1 or top < k
            else None
        )
    for name, fn in (
        ("precision", tmc.multiclass_precision),
        ("recall", tmc.multiclass_recall),
        ("f1", tmc.multiclass_f1_score),
    ):
        for average in ("macro", "weighted"):
            out[f"{name}_{average}"] = fn(probs, labels, num_classes=k, average=average).item()
    out["ece"] = tmc.multiclass_calibration_error(
        probs, labels, num_classes=k, n_bins=ece_bins, norm="l1"
    ).item()
    out["ece_bins"] = ece_bins
    out["loss"] = torch.nn.functional.cross_entropy(logits.float(), labels).item()
    return out


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> list[dict]:
    """Per confidence bin: mean confidence, accuracy and count (for reliability diagrams)."""
    conf, pred = logits.float().softmax(1).max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    rows = []
    for i in range(bins):
        lo, hi = edges[i].item(), edges[i + 1].item()
        mask = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        n = int(mask.sum())
        rows.append(
            {
                "bin_low": round(lo, 4),
                "bin_high": round(hi, 4),
                "count": n,
                "confidence": conf[mask].mean().item() if n else None,
                "accuracy": correct[mask].mean().item() if n else None,
            }
        )
    return rows


def train_val_gap(history: list[dict], best_epoch: int) -> float:
    """Train minus validation accuracy at the best epoch (Table 4)."""
    row = next(r for r in history if r["epoch"] == best_epoch)
    return row["train_accuracy"] - row["val_accuracy"]
