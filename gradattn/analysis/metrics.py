"""Classification metrics of the paper's Tables 1–4, computed with torchmetrics."""

from __future__ import annotations

import torch


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, *, ece_bins: int = 10
) -> dict[str, float | None]:
    """Top-1/3/5, macro and weighted precision/recall/F1, and ECE (equal-width bins).

    Fractions in [0, 1]. Top-k with k ≥ the number of classes is always 1, so it is
    reported as None (not applicable) rather than as a meaningless perfect score.
    """
    # Imported here: torchmetrics takes seconds to import, and the other functions of this
    # module (ECE, gap: the report and plot stages, most tests) do not need it.
    import torchmetrics.functional.classification as tmc

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
    out["ece"] = expected_calibration_error(logits, labels, bins=ece_bins)
    out["ece_bins"] = ece_bins
    out["loss"] = torch.nn.functional.cross_entropy(logits.float(), labels).item()
    return out


def _confidence_bins(logits: torch.Tensor, labels: torch.Tensor, bins: int):
    """Per equal-width bin (lower, upper] of the top-1 confidence (the first bin also takes
    0), as the notebooks' `calculate_ece` (CIFAR-10 cell 4): (lower, upper, mask), and the
    confidences and correctness they index. (torchmetrics bins [lower, upper) instead.)"""
    conf, pred = logits.float().softmax(1).max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    out = []
    for i in range(bins):
        lo, hi = edges[i].item(), edges[i + 1].item()
        mask = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        out.append((lo, hi, mask))
    return out, conf, correct


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, *,
                               bins: int = 10) -> float:
    """ECE (paper eq. 6): sum over bins of |accuracy - mean confidence| x share of images."""
    binned, conf, correct = _confidence_bins(logits, labels, bins)
    n = len(conf)
    return float(sum((correct[m].mean() - conf[m].mean()).abs().item() * int(m.sum()) / n
                     for _, _, m in binned if m.any()))


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> list[dict]:
    """Per confidence bin: mean confidence, accuracy and count (for reliability diagrams)."""
    binned, conf, correct = _confidence_bins(logits, labels, bins)
    rows = []
    for lo, hi, mask in binned:
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


GAPS = ("signed", "absolute")


def train_val_gap(history: list[dict], epoch: int, *, kind: str = "signed") -> float:
    """Train minus validation accuracy at `epoch` (the evaluated one; Table 4): signed, or
    its absolute value (the paper's |train - val|, evaluate.gap absolute)."""
    if kind not in GAPS:
        raise ValueError(f"gap must be one of {', '.join(GAPS)}, got {kind!r}")
    row = next(r for r in history if r["epoch"] == epoch)
    gap = row["train_accuracy"] - row["val_accuracy"]
    return abs(gap) if kind == "absolute" else gap
