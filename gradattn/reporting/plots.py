"""Figures as print-quality PNGs (200 dpi): the paper's Figures 2-5 and this pipeline's own.

Every function takes plain data (lists of dicts, numpy arrays) and a path, draws with
matplotlib's object API (no pyplot state, safe in tests and threads) and seaborn, and writes
the PNG atomically. The `*_rows` helpers prepare data from predictions; `write_csv` writes DVC
plot data. Nothing here reads a model or a dataset: what the figures need of those, the
evaluate stage saves (gradattn.analysis.evaluation).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from gradattn.core.io import atomic_path, write_with

DPI = 200
TAP_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
PLOTS = Path("plots")
PLOTDATA = Path("plotdata")  # DVC plot data and the per-dataset digest the report reads


@contextmanager
def _theme():
    """Seaborn's look with fonts sized for print, without touching global rcParams."""
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.3):
        yield


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG at DPI, trimmed to its content (nothing clipped), atomically."""
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight",
                                             pad_inches=0.08, facecolor="white"), suffix=".png")
    return Path(path)


def model_colours(labels: Sequence[str]) -> dict[str, tuple]:
    """One colour per model, the same in every figure of a run."""
    return dict(zip(labels, sns.color_palette("colorblind", max(len(labels), 3)), strict=False))


def _pct(values: Iterable[float]) -> list[float]:
    return [100 * v for v in values]


# --- training curves (paper Figures 3-4) --------------------------------------------------

def _curve_legend(ax, colours: dict[str, tuple], *, loc: str = "best") -> None:
    handles = [Line2D([], [], color=c, lw=2, label=label) for label, c in colours.items()]
    handles += [Line2D([], [], color="0.3", lw=1.6, ls="--", label="train"),
                Line2D([], [], color="0.3", lw=2, label="validation")]
    ax.legend(handles=handles, loc=loc, frameon=True, fontsize="small")


def _draw_accuracy(ax, histories: dict[str, list[dict]], colours: dict[str, tuple],
                   lw: float = 2) -> None:
    for label, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        ax.plot(epochs, _pct(r["train_accuracy"] for r in rows), ls="--", lw=0.8 * lw,
                color=colours[label])
        ax.plot(epochs, _pct(r["val_accuracy"] for r in rows), lw=lw, color=colours[label])
        if rows:
            best = max(rows, key=lambda r: r["val_accuracy"])
            ax.plot(best["epoch"], 100 * best["val_accuracy"], "o", ms=6, color=colours[label],
                    mec="black", mew=0.8, zorder=5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    _integer_ticks(ax)


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curve_colours(labels: Sequence[str], groups: dict[str, str] | None = None
                  ) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(legend: one colour per group, lines: each label its group's colour). Without
    `groups` every label is its own group."""
    groups = groups or {label: label for label in labels}
    legend = model_colours(list(dict.fromkeys(groups[label] for label in labels)))
    return legend, {label: legend[groups[label]] for label in labels}


def plot_curves(histories: dict[str, list[dict]], path: str | Path, *, title: str,
                groups: dict[str, str] | None = None) -> Path:
    """Loss and accuracy per epoch, train (dashed) and validation (solid), every model; the
    dot marks each model's best validation epoch (the weights it keeps). `groups` (label ->
    model) draws several runs of a model (its seeds) in its one colour, thinner, with one
    legend entry per model."""
    legend, colours = curve_colours(list(histories), groups)
    lw = 2 if len(legend) == len(histories) else 1.1
    with _theme():
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        ax_loss, ax_acc = fig.subplots(1, 2)
        for label, rows in histories.items():
            epochs = [r["epoch"] for r in rows]
            ax_loss.plot(epochs, [r["train_loss"] for r in rows], ls="--", lw=0.8 * lw,
                         color=colours[label])
            ax_loss.plot(epochs, [r["val_loss"] for r in rows], lw=lw, color=colours[label])
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("cross-entropy loss")
        ax_loss.set_title("Loss")
        _integer_ticks(ax_loss)
        _draw_accuracy(ax_acc, histories, colours, lw)
        ax_acc.set_title("Accuracy")
        _curve_legend(ax_acc, legend, loc="lower right")
        fig.suptitle(title, fontweight="bold")
        return save(fig, path)


def plot_comparison(histories: dict[str, dict[str, list[dict]]],
                    top1: dict[str, dict[str, float | None]], path: str | Path) -> Path:
    """Paper Figures 3-4 for every dataset: train/val accuracy curves of every model, and a
    bar chart of test top-1 accuracy per dataset and model."""
    datasets = list(histories)
    labels = list(dict.fromkeys(lab for d in datasets for lab in histories[d]))
    colours = model_colours(labels)
    with _theme():
        if len(datasets) == 1:  # curves and bars side by side
            fig = Figure(figsize=(12, 4.8), layout="constrained")
            axes = fig.subplot_mosaic([["c0", "bars"]], width_ratios=[1.5, 1])
        else:  # a grid of curves, the bars below across the whole width
            ncols = min(len(datasets), 3)
            nrows = math.ceil(len(datasets) / ncols)
            fig = Figure(figsize=(5.2 * ncols + 0.5, 4.0 * nrows + 3.8), layout="constrained")
            mosaic = [[f"c{r * ncols + c}" if r * ncols + c < len(datasets) else "."
                       for c in range(ncols)] for r in range(nrows)] + [["bars"] * ncols]
            axes = fig.subplot_mosaic(mosaic, height_ratios=[4.0] * nrows + [3.2])
        for i, dataset in enumerate(datasets):
            ax = axes[f"c{i}"]
            _draw_accuracy(ax, histories[dataset], colours)
            ax.set_title(dataset)
        if len(datasets) == 1:  # with several panels the bars' legend names the models
            _curve_legend(axes["c0"], colours, loc="lower right")
        ax = axes["bars"]
        width = 0.8 / max(len(labels), 1)
        for j, label in enumerate(labels):
            xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(datasets))]
            vals = [top1.get(d, {}).get(label) for d in datasets]
            heights = [100 * v if v is not None else 0 for v in vals]
            bars = ax.bar(xs, heights, width=width * 0.95, color=colours[label], label=label)
            ax.bar_label(bars, labels=[f"{h:.1f}" if v is not None else "" for h, v
                                       in zip(heights, vals, strict=True)],
                         padding=2, fontsize="small")
        ax.set_xticks(range(len(datasets)), datasets)
        ax.grid(axis="x", visible=False)
        ax.set_ylabel("test top-1 (%)")
        ax.set_ylim(0, 118)
        ax.set_title("Test top-1 accuracy")
        ax.legend(loc="upper left", ncols=min(len(labels), 3), fontsize="small")
        fig.suptitle("Accuracy per epoch (train dashed, validation solid, dot: best validation "
                     "epoch)\nand test top-1 accuracy, per dataset", fontweight="bold")
        return save(fig, path)


# --- gradients (paper Figure 5, Table 5) --------------------------------------------------

def plot_gradient_heatmap(rows: list[dict], path: str | Path, *, title: str,
                          layer_order: Sequence[str] | None = None) -> Path:
    """Layer × epoch heat map of parameter-gradient norms (log colour scale); rows are
    {epoch, layer, norm} as the train stage's grad_history.json. A norm of exactly 0 (a dead
    layer: no gradient at all) is drawn red, apart from the colour scale."""
    epochs = sorted({r["epoch"] for r in rows})
    layers = list(layer_order) if layer_order else list(dict.fromkeys(r["layer"] for r in rows))
    grid = np.full((len(layers), len(epochs)), np.nan)
    li = {name: i for i, name in enumerate(layers)}
    ei = {e: j for j, e in enumerate(epochs)}
    for r in rows:
        if r["layer"] in li and r["norm"] is not None:
            grid[li[r["layer"]], ei[r["epoch"]]] = r["norm"]
    positive = grid[np.isfinite(grid) & (grid > 0)]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    masked = np.where(np.isfinite(grid) & (grid > 0), grid, np.nan)
    with _theme():
        fig = Figure(figsize=(max(6.5, 0.45 * len(epochs) + 4.5), 0.26 * len(layers) + 1.8),
                     layout="constrained")
        ax = fig.subplots()
        sns.heatmap(masked, ax=ax, cmap="viridis", norm=norm, xticklabels=epochs,
                    yticklabels=layers, cbar_kws={"label": "parameter-gradient L2 norm (log)"},
                    linewidths=0.3, linecolor="white")
        zero = np.where(grid == 0, 1.0, np.nan)
        if np.isfinite(zero).any():
            sns.heatmap(zero, ax=ax, cmap=ListedColormap(["#d62728"]), cbar=False,
                        xticklabels=epochs, yticklabels=layers, linewidths=0.3,
                        linecolor="white")
            ax.legend(handles=[Patch(color="#d62728", label="exactly 0 (dead)")],
                      loc="upper left", bbox_to_anchor=(0, -0.08), frameon=False,
                      fontsize="small")
        ax.set_xlabel("epoch")
        ax.set_ylabel("layer (input → output)")
        ax.tick_params(axis="y", labelsize="small", rotation=0)
        ax.tick_params(axis="x", rotation=0)
        ax.set_title(title)
        return save(fig, path)


def plot_layer_gradients(per_layer: list[dict], path: str | Path, *, low: float, high: float,
                         title: str) -> Path:
    """Per-layer output- and parameter-gradient norms as bars on a log axis, with the
    vanishing (< low) and exploding (> high) regions shaded; layers top (input) to bottom."""
    names = [r["layer"] for r in per_layer]
    kinds = (("output_norm", "w.r.t. layer output", "#0173b2"),
             ("parameter_norm", "w.r.t. layer parameters", "#de8f05"))
    y = np.arange(len(names))
    values = [v for r in per_layer for k, _, _ in kinds if (v := r.get(k)) and v > 0]
    lo = min([low / 10, *values]) if values else low / 10
    hi = max([high * 10, *values]) if values else high * 10
    with _theme():
        fig = Figure(figsize=(9.5, 0.3 * len(names) + 2.0), layout="constrained")
        ax = fig.subplots()
        ax.axvspan(lo / 10, low, color="#d55e00", alpha=0.10, lw=0)
        ax.axvspan(high, hi * 10, color="#d55e00", alpha=0.10, lw=0)
        for j, (key, label, colour) in enumerate(kinds):
            vals = [r.get(key) or 0 for r in per_layer]
            # Bars start at the axis floor so tiny (vanishing) norms still show as bars.
            ax.barh(y + (j - 0.5) * 0.4, [max(v, lo / 10) - lo / 10 for v in vals], left=lo / 10,
                    height=0.38, color=colour, label=label)
        for bound, text in ((low, f"vanishing < {low:g}"), (high, f"exploding > {high:g}")):
            ax.axvline(bound, color="#d55e00", ls="--", lw=1.5)
            ax.text(bound, -0.9, text, color="#d55e00", ha="center", va="bottom",
                    fontsize="small")
        ax.set_xscale("log")
        ax.set_xlim(lo / 10, hi * 10)
        ax.set_ylim(len(names) - 0.4, -1.2)
        ax.set_yticks(y, names)
        for tick, r in zip(ax.get_yticklabels(), per_layer, strict=True):
            if r.get("status") not in (None, "healthy"):
                tick.set_color("#d55e00")
                tick.set_fontweight("bold")
        ax.tick_params(axis="y", labelsize="small")
        ax.set_xlabel("gradient L2 norm (log scale), mean over analysed batches")
        ax.grid(axis="y", visible=False)
        # Below the axes: inside, it would hide bars.
        fig.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)
        ax.set_title(title)
        return save(fig, path)


def gradient_rows(per_layer: list[dict]) -> list[dict]:
    """DVC bar-plot data: layers numbered in module order (DVC sorts names), log10 norms."""
    def log10(v):
        return math.log10(v) if v and v > 0 else None

    return [{"layer": f"{i:02d} {r['layer']}", "log10_output_norm": log10(r.get("output_norm")),
             "log10_parameter_norm": log10(r.get("parameter_norm")),
             "output_norm": r.get("output_norm"), "parameter_norm": r.get("parameter_norm"),
             "status": r.get("status")} for i, r in enumerate(per_layer)]


# --- data and predictions -----------------------------------------------------------------

def plot_overview(images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                  path: str | Path, *, title: str, counts: Sequence[int] | None = None,
                  per_class: int = 8, max_classes: int = 20) -> Path:
    """Paper Figure 2: a row of sample images per class (uint8 N×H×W×C; the evaluate stage
    picks them, gradattn.analysis.evaluation.overview_sample), the first per_class of each
    of the first max_classes classes; counts[c] (default: its images here) is printed beside
    the class."""
    shown = list(range(min(len(classes), max_classes)))
    picks = {c: np.flatnonzero(labels == c)[:per_class] for c in shown}
    counts = [int((labels == c).sum()) for c in shown] if counts is None else counts
    per_class = max(1, max(len(p) for p in picks.values()))  # no empty columns
    h, w = images.shape[1:3]
    cell = 0.95 * min(1.0, max(0.6, 48 / max(h, w)))
    label_w = 1.9
    with _theme():
        fig = Figure(figsize=(label_w + cell * per_class, cell * len(shown) + 0.9))
        gs = fig.add_gridspec(len(shown), per_class, left=label_w / (label_w + cell * per_class),
                              right=0.995, top=1 - 0.7 / (cell * len(shown) + 0.9), bottom=0.005,
                              wspace=0.05, hspace=0.05)
        for r, c in enumerate(shown):
            for k in range(per_class):
                ax = fig.add_subplot(gs[r, k])
                ax.set_axis_off()
                if k < len(picks[c]):
                    img = np.asarray(images[picks[c][k]])
                    if img.shape[-1] == 1:
                        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255)
                    else:
                        ax.imshow(img)
                if k == 0:
                    ax.text(-0.08, 0.5, f"{classes[c]} ({int(counts[c]):,})",
                            transform=ax.transAxes, ha="right", va="center", fontsize="small")
        more = (f" (first {len(shown)} of {len(classes)} classes)"
                if len(shown) < len(classes) else "")
        fig.suptitle(f"{title}{more}", fontweight="bold", y=1 - 0.15 / (cell * len(shown) + 0.9),
                     va="top")
        return save(fig, path)


def plot_reliability(rows: list[dict], path: str | Path, *, ece: float | None,
                     title: str) -> Path:
    """Reliability diagram: accuracy per equal-width confidence bin against the diagonal of
    perfect calibration, the gap shaded, and how many test images fall in each bin. `rows`:
    gradattn.analysis.metrics.reliability_bins' (an empty bin's accuracy and confidence are
    None or NaN)."""
    lows = np.array([r["bin_low"] for r in rows])
    highs = np.array([r["bin_high"] for r in rows])
    width = highs - lows
    acc = np.array([r["accuracy"] if r["accuracy"] is not None else np.nan for r in rows])
    conf = np.array([r["confidence"] if r["confidence"] is not None else np.nan for r in rows])
    counts = np.array([r["count"] for r in rows])
    with _theme():
        fig = Figure(figsize=(6.2, 6.8), layout="constrained")
        ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        ax.bar(lows, np.nan_to_num(acc), width=width, align="edge", color="#0173b2",
               edgecolor="white", label="accuracy")
        gap_lo, gap_hi = np.fmin(acc, conf), np.fmax(acc, conf)
        # Hatched, unfilled: readable both above a bar (over-confident) and across it.
        ax.bar(lows, np.nan_to_num(gap_hi - gap_lo), bottom=np.nan_to_num(gap_lo), width=width,
               align="edge", fill=False, hatch="///", edgecolor="#d55e00", lw=1.2,
               label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=1.5, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left", fontsize="small")
        ece_text = f"ECE {ece:.3f}, " if ece is not None else ""
        ax.set_title(f"{title}\n{ece_text}{len(rows)} equal-width bins")
        ax_n.bar(lows, counts, width=width, align="edge", color="0.55", edgecolor="white")
        ax_n.set_xlabel("confidence (max softmax probability)")
        ax_n.set_ylabel("images")
        return save(fig, path)


def plot_confusion(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str],
                   path: str | Path, *, title: str) -> Path:
    """Confusion matrix, each row normalised to the true class's share (recall on the
    diagonal); counts annotated when there are few classes."""
    k = len(classes)
    counts = np.zeros((k, k), dtype=int)
    np.add.at(counts, (np.asarray(labels), np.asarray(preds)), 1)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    annotate = k <= 15
    names = list(classes) if k <= 40 else False
    size = min(max(5.5, 0.55 * k + 2.5), 16)
    with _theme():
        fig = Figure(figsize=(size + 1.2, size), layout="constrained")
        ax = fig.subplots()
        sns.heatmap(100 * share, ax=ax, cmap="Blues", vmin=0, vmax=100, square=True,
                    annot=counts if annotate else False, fmt="d",
                    annot_kws={"fontsize": "x-small" if k > 8 else "small"},
                    xticklabels=names, yticklabels=names,
                    cbar_kws={"label": "% of the true class", "shrink": 0.8})
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.tick_params(axis="x", rotation=45, labelsize="small")
        ax.tick_params(axis="y", rotation=0, labelsize="small")
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
            tick.set_rotation_mode("anchor")
        acc = np.trace(counts) / max(counts.sum(), 1)
        note = " (numbers: image counts)" if annotate else ""
        ax.set_title(f"{title}\ntop-1 {100 * acc:.2f}% on {counts.sum():,} test images{note}")
        return save(fig, path)


def confusion_rows(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> list[dict]:
    """DVC confusion-template data: one {actual, predicted} row per test image."""
    return [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(labels, preds,
                                                                           strict=True)]


# --- attention over the five taps ---------------------------------------------------------

def plot_attention(attn: np.ndarray, path: str | Path, *, title: str,
                   taps: Sequence[str] = TAP_NAMES) -> Path:
    """Per encoder layer the 5×5 attention (query tap → key tap), and a summary of how much
    attention each tap receives per layer (mean over queries): which depth the model uses."""
    depth = attn.shape[0]
    received = attn.mean(axis=1)  # (depth, 5): mean over queries
    vmax = float(attn.max())
    with _theme():
        fig = Figure(figsize=(3.6 * depth + 4.8, 4.4), layout="constrained")
        axes = fig.subplots(1, depth + 1, width_ratios=[1] * depth + [1.25])
        for i in range(depth):
            ax = axes[i]
            sns.heatmap(attn[i], ax=ax, cmap="magma", vmin=0, vmax=vmax, square=True,
                        annot=True, fmt=".2f", annot_kws={"fontsize": "x-small"},
                        xticklabels=taps, yticklabels=taps, cbar=False)
            ax.set_title(f"encoder layer {i}")
            ax.set_xlabel("key (attended tap)")
            ax.set_ylabel("query tap" if i == 0 else "")
            ax.tick_params(axis="x", rotation=45, labelsize="small")
            ax.tick_params(axis="y", rotation=0, labelsize="small")
        ax = axes[-1]
        sns.heatmap(received, ax=ax, cmap="magma", vmin=0, vmax=vmax, annot=True, fmt=".2f",
                    annot_kws={"fontsize": "small"}, xticklabels=taps,
                    yticklabels=[f"layer {i}" for i in range(depth)],
                    cbar_kws={"label": "attention weight"})
        ax.set_title("attention received per tap\n(mean over queries)")
        ax.set_xlabel("tap (input → output depth)")
        ax.tick_params(axis="x", rotation=45, labelsize="small")
        ax.tick_params(axis="y", rotation=0)
        fig.suptitle(title, fontweight="bold")
        return save(fig, path)


# --- DVC plot data ------------------------------------------------------------------------

def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """Rows of dicts as CSV (header from the first row), atomically."""
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


# --- a changed DVC plot, before and after (gradattn compare) ----------------------------------

def plot_revisions(series: dict[str, list[tuple[float, float]]], path: str | Path, *,
                   x: str, y: str, title: str) -> Path:
    """One line per revision (label → (x, y) points) on shared axes: a data plot of two
    revisions drawn as one PNG, for a report that must not need a browser or a CDN. Labels
    "rev · file · field" (compare.numeric_series: several lines per revision) share the
    revision's colour and tell the lines apart by dashes."""
    revs = list(dict.fromkeys(label.split(" · ")[0] for label in series))
    colours = dict(zip(revs, ("0.55", *sns.color_palette("colorblind")), strict=False))
    lines = list(dict.fromkeys(label.partition(" · ")[2] for label in series))
    dashes = dict(zip(lines, ("-", "--", ":", "-."), strict=False))
    with _theme():
        fig = Figure(figsize=(6.4, 3.8), layout="constrained")
        ax = fig.subplots()
        for label, points in series.items():
            points = sorted(points)
            rev, _, line = label.partition(" · ")
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, lw=2,
                    color=colours.get(rev), ls=dashes.get(line, "-"), label=label)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        if all(float(p[0]).is_integer() for points in series.values() for p in points):
            _integer_ticks(ax)  # epochs
        ax.legend(frameon=True, fontsize="small")
        ax.set_title(title, fontsize="medium")
        return save(fig, path)
