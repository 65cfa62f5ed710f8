"""The paper's tables (1-5) as markdown, from a pandas DataFrame of runs, and the flat summary.

A *run* is one trained (dataset, model) pair; a runs frame has one row per run with the
columns `runs_frame` makes (dataset, model, label, the evaluate stage's metrics, the gradient
summary). Every table function takes such a frame and returns markdown, so a frame built
from several experiments or seeds works as well: runs sharing (dataset, label) are shown as
mean ± std (sample std) with the number of runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pandas as pd

MODEL_NAMES = {
    "resnet18": "ResNet-18",
    "gradattn": "GradAttn",
    "se_resnet18": "SE-ResNet-18",
    "cbam_resnet18": "CBAM-ResNet-18",
    "noskip18": "No-skip ResNet-18",
    "taps_mean": "Taps mean",
}
PE_NAMES = {"none": "no PE", "learnable": "learnable PE", "rope": "RoPE"}

METRIC_COLUMNS = ("top1", "top3", "top5", "precision_macro", "precision_weighted",
                  "recall_macro", "recall_weighted", "f1_macro", "f1_weighted", "ece",
                  "ece_bins", "loss", "train_val_gap", "val_top1", "best_epoch", "epochs",
                  "params", "test_images")
GRADIENT_COLUMNS = ("ghs", "vanishing", "exploding", "layers", "norm_mean", "norm_min",
                    "norm_max", "norm_std", "ghs_norm", "batches")
SUMMARY_KEYS = ("top1", "top3", "top5", "f1_macro", "ece", "train_val_gap", "best_epoch",
                "epochs", "params", "ghs", "vanishing", "exploding", "norm_mean")
COUNT_KEYS = ("best_epoch", "epochs", "params", "vanishing", "exploding")
MISSING = "–"


def model_label(model: str, options: dict | None = None) -> str:
    """Display name: 'ResNet-18', 'GradAttn (learnable PE)', ..."""
    name = MODEL_NAMES.get(model, model)
    if model == "gradattn" and options and options.get("pe"):
        name += f" ({PE_NAMES.get(options['pe'], options['pe'])})"
    return name


def runs_frame(records: Iterable[dict]) -> pd.DataFrame:
    """One row per run from records {dataset, model, label?, options?, metrics, gradients?}
    (the plot stage's plotdata/<dataset>/runs.json entries). Gradient columns are prefixed
    where they would clash: `grad_layers`, `grad_batches`; bounds become grad_low/grad_high."""
    rows = []
    for rec in records:
        row = {"dataset": rec["dataset"], "model": rec["model"],
               "label": rec.get("label") or model_label(rec["model"], rec.get("options"))}
        for key in ("experiment", "seed"):
            if key in rec:
                row[key] = rec[key]
        metrics = rec.get("metrics") or {}
        row.update({k: metrics.get(k) for k in METRIC_COLUMNS})
        grads = rec.get("gradients") or {}
        for key in GRADIENT_COLUMNS:
            column = f"grad_{key}" if key in ("layers", "batches") else key
            row[column] = grads.get(key)
        low, high = (grads.get("bounds") or [None, None])[:2]
        row["grad_low"], row["grad_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


# --- formatting ---------------------------------------------------------------------------

def _numbers(values: Iterable) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(v):
            out.append(v)
    return out


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def cell(values: Iterable, fmt: Callable[[float], str]) -> str:
    """One table cell: the value, or mean ± std (n=k) of several runs; '–' when none."""
    nums = _numbers(values)
    if not nums:
        return MISSING
    mean, std = _mean_std(nums)
    if std is None:
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std).lstrip('+')} (n={len(nums)})"


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def signed_pp(v: float) -> str:
    return f"{100 * v:+.2f}"


def three(v: float) -> str:
    return f"{v:.3f}"


def sci(v: float) -> str:
    return f"{v:.2e}"


def markdown_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A GitHub markdown table; align entries 'l' or 'r' (default: first column left)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def _groups(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(dataset, label, rows) in first-seen order of datasets and labels."""
    out = []
    for dataset in pd.unique(df["dataset"]):
        sub = df[df["dataset"] == dataset]
        for label in pd.unique(sub["label"]):
            out.append((dataset, label, sub[sub["label"] == label]))
    return out


def _pivot(df: pd.DataFrame, column: str, fmt: Callable[[float], str], *,
           best: str | None = None) -> str:
    """Datasets × models table of one column; best='max'/'min' bolds each row's best mean."""
    labels = list(pd.unique(df["label"]))
    rows = []
    for dataset in pd.unique(df["dataset"]):
        sub = df[df["dataset"] == dataset]
        means = {}
        cells = {}
        for label in labels:
            values = sub.loc[sub["label"] == label, column]
            cells[label] = cell(values, fmt)
            nums = _numbers(values)
            if nums:
                means[label] = sum(nums) / len(nums)
        if best and len(means) > 1:
            pick = max if best == "max" else min
            top = pick(means.values())
            for label, mean in means.items():
                if mean == top:
                    cells[label] = f"**{cells[label]}**"
        rows.append([dataset] + [cells[label] for label in labels])
    return markdown_table(["Dataset", *labels], rows)


# --- the tables ---------------------------------------------------------------------------

def table_top1(df: pd.DataFrame) -> str:
    """Table 1: top-1 test accuracy (%), datasets × models, best per dataset in bold."""
    return _pivot(df, "top1", pct, best="max")


def ece_bins_note(df: pd.DataFrame) -> str:
    bins = sorted({int(b) for b in _numbers(df.get("ece_bins", []))})
    if not bins:
        return "equal-width confidence bins"
    return f"{'/'.join(map(str, bins))} equal-width confidence bins"


def table_extended(df: pd.DataFrame) -> str:
    """Table 2: top-3/top-5 accuracy (%), macro F1 and ECE per dataset and model."""
    rows = [[dataset, label, cell(g["top3"], pct), cell(g["top5"], pct),
             cell(g["f1_macro"], three), cell(g["ece"], three)]
            for dataset, label, g in _groups(df)]
    return markdown_table(["Dataset", "Model", "Top-3 (%)", "Top-5 (%)", "F1 (macro)", "ECE"],
                          rows, ["l", "l", "r", "r", "r", "r"])


def table_prf(df: pd.DataFrame) -> str:
    """Table 3: precision, recall and F1, macro (M) and weighted (W) averages."""
    keys = ("precision_macro", "precision_weighted", "recall_macro", "recall_weighted",
            "f1_macro", "f1_weighted")
    rows = [[dataset, label, *(cell(g[k], three) for k in keys)]
            for dataset, label, g in _groups(df)]
    return markdown_table(["Dataset", "Model", "Precision (M)", "Precision (W)", "Recall (M)",
                           "Recall (W)", "F1 (M)", "F1 (W)"], rows, ["l", "l"] + ["r"] * 6)


def table_gap(df: pd.DataFrame) -> str:
    """Table 4: train − validation accuracy (percentage points) at the best epoch."""
    rows = []
    for dataset, label, g in _groups(df):
        train = [v + gap for v, gap in zip(g["val_top1"], g["train_val_gap"], strict=True)
                 if v is not None and gap is not None]
        rows.append([dataset, label, cell(train, pct), cell(g["val_top1"], pct),
                     cell(g["train_val_gap"], signed_pp), cell(g["best_epoch"], "{:.0f}".format),
                     cell(g["epochs"], "{:.0f}".format)])
    return markdown_table(["Dataset", "Model", "Train acc. (%)", "Val acc. (%)", "Gap (pp)",
                           "Best epoch", "Epochs run"], rows, ["l", "l"] + ["r"] * 5)


def _ve(g: pd.DataFrame) -> str:
    van, exp = _numbers(g["vanishing"]), _numbers(g["exploding"])
    if not van and not exp:
        return MISSING
    v = sum(van) / len(van) if van else 0
    e = sum(exp) / len(exp) if exp else 0
    if v == 0 and e == 0:
        return "none"
    fmt = (lambda x: f"{x:.0f}") if len(van) <= 1 else (lambda x: f"{x:.1f}")
    parts = ([f"{fmt(v)} vanishing"] if v else []) + ([f"{fmt(e)} exploding"] if e else [])
    return ", ".join(parts)


def table_gradients(df: pd.DataFrame) -> str:
    """Table 5: GHS, vanishing/exploding layers, and the mean, range and std of the norms."""
    rows = []
    for dataset, label, g in _groups(df):
        lo, hi = _numbers(g["norm_min"]), _numbers(g["norm_max"])
        span = f"{sci(min(lo))} – {sci(max(hi))}" if lo and hi else MISSING
        rows.append([dataset, label, cell(g["ghs"], three), _ve(g), cell(g["norm_mean"], sci),
                     span, cell(g["norm_std"], sci), cell(g["grad_layers"], "{:.0f}".format)])
    return markdown_table(["Dataset", "Model", "GHS", "Vanishing / exploding", "Avg norm",
                           "Range (min – max)", "Std", "Layers"],
                          rows, ["l", "l", "r", "l", "r", "r", "r", "r"])


def gradients_note(df: pd.DataFrame) -> str:
    """Which norm, bounds and batch count Table 5 used (as the gradient JSON records them)."""
    norms = sorted({str(n) for n in df["ghs_norm"].dropna()}) if "ghs_norm" in df else []
    kind = {"output": "the gradient w.r.t. each layer's output (the notebooks' choice)",
            "parameter": "the gradient w.r.t. each layer's parameters"}
    what = " / ".join(kind.get(n, n) for n in norms) or "unknown"
    lows, highs = _numbers(df.get("grad_low", [])), _numbers(df.get("grad_high", []))
    bounds = (f"healthy when {min(lows):g} < norm < {max(highs):g} (vanishing below, exploding "
              "above)" if lows and highs else "bounds unknown")
    batches = sorted({int(b) for b in _numbers(df.get("grad_batches", []))})
    nb = "/".join(map(str, batches)) or "?"
    return (f"Norm: L2 norm of {what}, averaged over {nb} training batches of the trained model; "
            f"{bounds}; GHS = healthy / analysed layers.")


# --- the whole report ---------------------------------------------------------------------

def results_markdown(df: pd.DataFrame, *, title: str = "Results of this run",
                     context: list[str] | None = None, figures: list[tuple[str, str]] | None = None
                     ) -> str:
    """results.md: a short intro, Tables 1-5 with a line each on what they show, figures."""
    datasets = ", ".join(map(str, pd.unique(df["dataset"])))
    labels = ", ".join(map(str, pd.unique(df["label"])))
    parts = [
        f"# {title}",
        "",
        f"Models **{labels}** trained and evaluated on **{datasets}**. Tables are numbered as in "
        "the GradAttn paper (Table 3 added for completeness). Accuracies are on each dataset's "
        "test split unless stated; when several runs share a dataset and model, cells show "
        "mean ± sample std over the runs (n = number of runs).",
    ]
    if context:
        parts += ["", *[f"- {line}" for line in context]]
    parts += [
        "", "## Table 1 — Top-1 accuracy (%)", "",
        "Share of test images whose highest-scoring class is right; best model per dataset in "
        "bold.", "", table_top1(df),
        "", "## Table 2 — Extended metrics", "",
        "Top-3/top-5 accuracy: the true class is among the 3/5 highest scores (not shown when a "
        "dataset has that few classes or fewer). F1 is the macro average over classes. ECE "
        f"(expected calibration error) uses {ece_bins_note(df)}: the size-weighted mean gap "
        "between confidence and accuracy per bin; lower is better calibrated.", "",
        table_extended(df),
        "", "## Table 3 — Precision, recall and F1", "",
        "Macro (M): unweighted mean over classes; weighted (W): weighted by class frequency in "
        "the test split.", "", table_prf(df),
        "", "## Table 4 — Train–validation gap", "",
        "Training minus validation accuracy at the epoch with the best validation accuracy "
        "(whose weights are kept), in percentage points; large positive values mean "
        "over-fitting. Training accuracy is measured during the epoch, with augmentation.", "",
        table_gap(df),
        "", "## Table 5 — Gradient flow (Gradient Health Score)", "",
        gradients_note(df) + " Avg norm, range and std are taken over the analysed layers.",
        "", table_gradients(df),
    ]
    if figures:
        parts += ["", "## Figures", "", *[f"- [{text}]({path})" for text, path in figures]]
    return "\n".join(parts) + "\n"


def _round(value, digits: int = 4):
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if abs(value) < 0.01 and value != 0:
            return float(f"{value:.4g}")  # small norms keep 4 significant digits
        return round(value, digits)
    return value


def summary_entries(df: pd.DataFrame) -> dict[str, dict]:
    """metrics/summary.json: {"<dataset>/<model>": {top1, ece, ghs, ...}}, flat, rounded, so
    `dvc exp show` and `dvc metrics diff` stay readable. One entry per (dataset, model); if
    several runs share one, their mean."""
    out: dict[str, dict] = {}
    for (dataset, model), g in df.groupby(["dataset", "model"], sort=False):
        entry = {}
        for key in SUMMARY_KEYS:
            if key not in g:
                continue
            nums = _numbers(g[key])
            if nums:
                value = sum(nums) / len(nums)
                whole = key in COUNT_KEYS and len(nums) == 1
                entry[key] = int(value) if whole else _round(value)
        out[f"{dataset}/{model}"] = entry
    return out
