"""The paper's Tables 1-5 over many runs, pooled over seeds, and Table 6 (each model's paired
difference from ResNet-18 where ≥ 3 seeds ran): the one table builder, used by
`gradattn table` (workspace, experiments, revisions) and by the report stage (results.md of
the workspace's runs).

Runs (gradattn.reporting.experiments) that differ only in their seed are pooled: mean ± sample std
(ddof=1) and n. The same run often shows up in several revisions (an experiment that changed
only `model.pe` gets ResNet-18's metrics back from DVC's run cache, byte for byte), so each
(setting, dataset, variant, seed) counts once. With ≥ 3 seeds in common, a Table 1 cell also
shows its difference from ResNet-18 with a 95 % t-interval of the per-seed differences
(paired by seed). Runs of different settings get tables of their own.

Markdown shows percentages; CSV is one tidy row per (setting, dataset, variant, metric) with
raw fractions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import pandas as pd

from gradattn.core.settings import MODELS, PE_CHOICES
from gradattn.reporting.experiments import Run, distinct
from gradattn.reporting.names import model_label
from gradattn.reporting.stats import LEVEL, NO_DIFFERENCE, mean_std, numbers, paired_difference

BASELINE = "resnet18"
MIN_PAIRED = 3  # seeds in common before a cell shows its difference from ResNet-18
# The paper's Table 1 columns: shown even when nothing ran for them.
PAPER_VARIANTS = (("resnet18", {}), *(("gradattn", {"pe": pe}) for pe in PE_CHOICES))
MODEL_ORDER = MODELS
PE_ORDER = PE_CHOICES
# The paper's dataset order; other datasets follow, alphabetically.
DATASET_ORDER = ("tinyimagenet", "svhn", "cifar10", "fashionmnist", "tissuemnist", "bloodmnist",
                 "pcam", "padufes")
MISSING = "–"


@dataclass(frozen=True)
class Table:
    title: str
    metrics: tuple[str, ...]  # what the CSV holds for it


TABLES = {
    1: Table("Table 1 — Top-1 accuracy (%)", ("top1",)),
    2: Table("Table 2 — Extended metrics", ("top3", "top5", "f1_macro", "ece")),
    3: Table("Table 3 — Precision, recall and F1",
             ("precision_macro", "precision_weighted", "recall_macro", "recall_weighted",
              "f1_macro", "f1_weighted")),
    4: Table("Table 4 — Train–validation gap",
             ("val_top1", "train_val_gap", "best_epoch", "epochs")),
    5: Table("Table 5 — Gradient flow (Gradient Health Score)",
             ("ghs", "vanishing", "dead", "exploding", "norm_mean", "norm_min", "norm_max",
              "norm_std")),
    6: Table("Table 6 — Differences from ResNet-18, paired by seed",
             ("top1", "f1_macro", "ece", "train_val_gap", "best_epoch", "ghs")),
}

Variant = tuple[str, dict]  # (model, options)


# --- the study: distinct runs, their settings and variants -----------------------------------

def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _describe(items: list[dict]) -> list[str]:
    """For each dict, 'k=v, ...' over the keys whose values differ among the dicts."""
    flats = [_flat(d) for d in items]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
    return [", ".join(f"{k}={f.get(k)}" for k in varying) for f in flats]


def _setting_items(settings: list[dict]) -> list[list[tuple[str, object]]]:
    """For each setting, the (key, value) pairs that tell it apart from the others: keys whose
    values differ among the settings, leaving out those this one does not set (None)."""
    flats = [_flat(s) for s in settings]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
    return [[(k, f[k]) for k in varying if f.get(k) is not None] for f in flats]


HEADING_WIDTH = 100  # a longer setting label becomes a list under its heading


def _setting_heading(number: int, items: list[tuple[str, object]]) -> list[str]:
    label = ", ".join(f"{k}={v}" for k, v in items)
    if len(label) + len(f"# Setting {number}: ") <= HEADING_WIDTH:
        return [f"# Setting {number}: {label}" if label else f"# Setting {number}", ""]
    return [f"# Setting {number}", "", *(f"- {k}={v}" for k, v in items), ""]


def _dataset_rank(name: str) -> tuple:
    norm = re.sub(r"[^a-z0-9]", "", name.lower())
    for i, prefix in enumerate(DATASET_ORDER):
        if norm.startswith(prefix):
            return (i, name)
    return (len(DATASET_ORDER), name)


def _variant_rank(model: str, options: dict) -> tuple:
    m = MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)
    pe = options.get("pe")
    p = PE_ORDER.index(pe) if pe in PE_ORDER else len(PE_ORDER)
    return (m, model, p, json.dumps(options, sort_keys=True, default=str))


@dataclass
class Study:
    """Distinct runs, labelled, with the settings they fall in (each gets its own tables)."""
    runs: list[Run]

    def __post_init__(self):
        self.runs = distinct(self.runs)
        settings = []
        for run in self.runs:
            if run.setting not in settings:
                settings.append(run.setting)
        self.settings = settings
        self.setting_items = _setting_items(settings) if len(settings) > 1 else [[]]
        self.setting_labels = [", ".join(f"{k}={v}" for k, v in items)
                               for items in self.setting_items]
        variants: list[Variant] = []
        for run in self.runs:
            if (run.model, run.options) not in variants:
                variants.append((run.model, run.options))
        variants.sort(key=lambda v: _variant_rank(*v))
        self.variants = variants
        # A variant's label is model_label, plus the options that tell apart variants which
        # would otherwise share it (e.g. two GradAttn widths).
        base = [model_label(m, o) for m, o in variants]
        self.labels = {}
        for label in dict.fromkeys(base):
            same = [v for v, b in zip(variants, base, strict=True) if b == label]
            extra = _describe([o for _, o in same]) if len(same) > 1 else [""] * len(same)
            for (m, o), e in zip(same, extra, strict=True):
                self.labels[self._vkey(m, o)] = f"{label} [{e}]" if e else label

    @staticmethod
    def _vkey(model: str, options: dict) -> str:
        return json.dumps([model, options], sort_keys=True, default=str)

    def label(self, model: str, options: dict) -> str:
        return self.labels.get(self._vkey(model, options)) or model_label(model, options)

    def columns(self, setting: dict, paper_columns: bool = True) -> list[Variant]:
        """The variants shown for a setting: those that ran in it, plus (paper_columns) the
        paper's four (a paper variant stands for itself when nothing of its kind ran)."""
        ran = [v for v in self.variants
               if any(r.setting == setting and (r.model, r.options) == v for r in self.runs)]
        cols = list(ran)
        for model, opts in PAPER_VARIANTS if paper_columns else ():
            if not any(m == model and all(o.get(k) == v for k, v in opts.items())
                       for m, o in ran):
                cols.append((model, opts))
        cols.sort(key=lambda v: _variant_rank(*v))
        return cols

    def datasets(self, setting: dict) -> list[str]:
        return sorted({r.dataset for r in self.runs if r.setting == setting}, key=_dataset_rank)

    def runs_in(self, setting: dict, dataset: str, variant: Variant) -> list[Run]:
        return [r for r in self.runs if r.setting == setting and r.dataset == dataset
                and (r.model, r.options) == variant]

    def values(self, setting: dict, dataset: str, variant: Variant,
               metric: str) -> dict[int, float]:
        """seed → value of one cell."""
        return {r.seed: v for r in self.runs_in(setting, dataset, variant)
                for v in numbers([r.value(metric)])}

    def baseline(self, setting: dict, dataset: str, variant: Variant) -> Variant | None:
        """The ResNet-18 run a variant is compared with: same setting and dataset, and the same
        values of the options both take (the stem). None if none or ambiguous."""
        model, options = variant
        if model == BASELINE:
            return None
        found = [v for v in self.variants if v[0] == BASELINE
                 and all(options.get(k, x) == x for k, x in v[1].items())
                 and self.values(setting, dataset, v, "top1")]
        return found[0] if len(found) == 1 else None

    def difference(self, setting: dict, dataset: str, variant: Variant, metric: str):
        """The paired-by-seed difference of a cell from its ResNet-18 baseline."""
        base = self.baseline(setting, dataset, variant)
        if base is None:
            return NO_DIFFERENCE
        return paired_difference(self.values(setting, dataset, variant, metric),
                                 self.values(setting, dataset, base, metric))

    def tidy(self, metrics: Iterable[str]) -> pd.DataFrame:
        """One row per (setting, dataset, variant, metric): n, mean, std, seeds, and the paired
        difference from ResNet-18 (diff_*), all raw numbers; missing cells have n = 0."""
        rows = []
        for s, setting in enumerate(self.settings):
            for dataset in self.datasets(setting):
                for variant in self.columns(setting):
                    for metric in metrics:
                        vals = self.values(setting, dataset, variant, metric)
                        n, mean, std = mean_std(vals.values())
                        diff = self.difference(setting, dataset, variant, metric)
                        rows.append({
                            "setting": self.setting_labels[s],
                            "recipe": setting.get("recipe", ""), "dataset": dataset,
                            "variant": self.label(*variant), "model": variant[0],
                            "pe": variant[1].get("pe", ""), "metric": metric, "n": n,
                            "mean": mean, "std": std,
                            "seeds": " ".join(map(str, sorted(vals))),
                            "diff_n": diff.n, "diff_mean": diff.mean,
                            "diff_low": diff.low, "diff_high": diff.high,
                        })
        return pd.DataFrame(rows)


# --- cells ------------------------------------------------------------------------------------

def cell(values: Iterable, fmt: Callable[[float], str]) -> str:
    """One table cell: the value, or mean ± std (n=k) of several runs; '–' when none."""
    n, mean, std = mean_std(values)
    if n == 0:
        return MISSING
    if n == 1:
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std).lstrip('+')} (n={n})"


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def signed_pp(v: float) -> str:
    return f"{100 * v:+.2f}"


def three(v: float) -> str:
    return f"{v:.3f}"


def sci(v: float) -> str:
    return f"{v:.2e}"


def whole(v: float) -> str:
    return f"{v:.0f}"


def markdown_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A GitHub markdown table; align entries 'l' or 'r' (default: first column left)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


# --- the tables: each (study, setting, columns) → markdown -------------------------------------

def _top1(study: Study, setting: dict, cols: list[Variant], bold_best: bool) -> str:
    """Table 1: datasets × variants of top-1 (%), with the paired difference from ResNet-18;
    bold_best bolds each dataset's best mean."""
    rows = []
    for dataset in study.datasets(setting):
        vals = [study.values(setting, dataset, v, "top1") for v in cols]
        texts = [cell(v.values(), pct) for v in vals]
        means = [mean_std(v.values())[1] if v else None for v in vals]
        ran = [m for m in means if m is not None]
        if bold_best and len(ran) > 1:
            texts = [f"**{t}**" if m == max(ran) else t for t, m in zip(texts, means, strict=True)]
        for i, (variant, v) in enumerate(zip(cols, vals, strict=True)):
            d = study.difference(setting, dataset, variant, "top1")
            if len(v) >= MIN_PAIRED and d.n >= MIN_PAIRED:
                texts[i] += (f"; Δ {signed_pp(d.mean)} pp "
                             f"[{signed_pp(d.low)}, {signed_pp(d.high)}]")
        rows.append([dataset, *texts])
    return markdown_table(["Dataset", *(study.label(*v) for v in cols)], rows)


def _long(study: Study, setting: dict, cols: list[Variant], header: list[str], align: list[str],
          row: Callable[[Callable[[str], dict[int, float]], list[Run]], list[str]]) -> str:
    """One row per (dataset, variant), '–' where it did not run; row(values, runs) gives the
    cells after dataset and model, values(metric) being seed → value."""
    rows = []
    for dataset in study.datasets(setting):
        for v in cols:
            values = partial(study.values, setting, dataset, v)
            rows.append([dataset, study.label(*v),
                         *row(values, study.runs_in(setting, dataset, v))])
    return markdown_table(["Dataset", "Model", *header], rows, ["l", "l", *align])


def _extended(study: Study, setting: dict, cols: list[Variant]) -> str:
    """Table 2: top-3/top-5 accuracy (%), macro F1 and ECE."""
    return _long(study, setting, cols, ["Top-3 (%)", "Top-5 (%)", "F1 (macro)", "ECE"], ["r"] * 4,
                 lambda val, _: [cell(val("top3").values(), pct), cell(val("top5").values(), pct),
                                 cell(val("f1_macro").values(), three),
                                 cell(val("ece").values(), three)])


PRF = ("precision_macro", "precision_weighted", "recall_macro", "recall_weighted", "f1_macro",
       "f1_weighted")


def _prf(study: Study, setting: dict, cols: list[Variant]) -> str:
    """Table 3: precision, recall and F1, macro (M) and weighted (W) averages."""
    return _long(study, setting, cols, ["Precision (M)", "Precision (W)", "Recall (M)",
                                        "Recall (W)", "F1 (M)", "F1 (W)"], ["r"] * 6,
                 lambda val, _: [cell(val(k).values(), three) for k in PRF])


def _gap(study: Study, setting: dict, cols: list[Variant]) -> str:
    """Table 4: train and validation accuracy at the best epoch, their gap (pp), epochs."""
    def row(val, _):
        v, gap = val("val_top1"), val("train_val_gap")
        train = [v[s] + gap[s] for s in v.keys() & gap.keys()]
        return [cell(train, pct), cell(v.values(), pct), cell(gap.values(), signed_pp),
                cell(val("best_epoch").values(), whole), cell(val("epochs").values(), whole)]

    return _long(study, setting, cols, ["Train acc. (%)", "Val acc. (%)", "Gap (pp)",
                                        "Best epoch", "Epochs run"], ["r"] * 5, row)


# Table 6's columns: (metric, header, how a difference is written). Not in the paper: each of
# its claims (accuracy, calibration, over-fitting, convergence, gradient health) as an interval.
PAIRED = (("top1", "Δ top-1 (pp)", signed_pp), ("f1_macro", "Δ F1 (macro)", lambda v: f"{v:+.3f}"),
          ("ece", "Δ ECE", lambda v: f"{v:+.3f}"), ("train_val_gap", "Δ gap (pp)", signed_pp),
          ("best_epoch", "Δ best epoch", lambda v: f"{v:+.1f}"),
          ("ghs", "Δ GHS", lambda v: f"{v:+.3f}"))


def _paired(study: Study, setting: dict, cols: list[Variant]) -> str | None:
    """Table 6: each variant minus ResNet-18 on the same seeds, mean [95 % interval], for the
    metrics of the paper's claims; None when no variant has MIN_PAIRED seeds in common."""
    rows = []
    for dataset in study.datasets(setting):
        for v in cols:
            diffs = [study.difference(setting, dataset, v, m) for m, _, _ in PAIRED]
            if max(d.n for d in diffs) < MIN_PAIRED:
                continue
            rows.append([dataset, study.label(*v), str(max(d.n for d in diffs)),
                         *(f"{fmt(d.mean)} [{fmt(d.low)}, {fmt(d.high)}]" if d.n >= MIN_PAIRED
                           else MISSING for d, (_, _, fmt) in zip(diffs, PAIRED, strict=True))])
    if not rows:
        return None
    return markdown_table(["Dataset", "Model", "Seeds", *(h for _, h, _ in PAIRED)], rows,
                          ["l", "l", "r", *["r"] * len(PAIRED)])


def _vanishing_exploding(val) -> str:
    van, exp, dead = val("vanishing"), val("exploding"), val("dead")
    if not van and not exp:
        return MISSING
    v, e, d = (mean_std(x.values())[1] if x else 0 for x in (van, exp, dead))
    if v == 0 and e == 0:
        return "none"
    fmt = whole if len(van) <= 1 else (lambda x: f"{x:.1f}")
    # Dead layers (exactly zero gradient on every batch) are among the vanishing ones.
    return ", ".join(([f"{fmt(v)} vanishing" + (f" ({fmt(d)} dead)" if d else "")] if v else [])
                     + ([f"{fmt(e)} exploding"] if e else []))


def _gradients(study: Study, setting: dict, cols: list[Variant]) -> str:
    """Table 5: GHS, vanishing/exploding layers, and the mean, range and std of the norms."""
    def row(val, runs):
        lo, hi = val("norm_min").values(), val("norm_max").values()
        span = f"{sci(min(lo))} – {sci(max(hi))}" if lo and hi else MISSING
        layers = [r.gradients.get("layers") for r in runs if r.gradients]
        return [cell(val("ghs").values(), three), _vanishing_exploding(val),
                cell(val("norm_mean").values(), sci), span, cell(val("norm_std").values(), sci),
                cell(layers, whole)]

    return _long(study, setting, cols, ["GHS", "Vanishing / exploding", "Avg norm",
                                        "Range (min – max)", "Std", "Layers"],
                 ["r", "l", "r", "r", "r", "r"], row)


# --- notes: what each table shows, with the facts the runs record -----------------------------

def ece_bins_note(runs: list[Run]) -> str:
    bins = sorted({int(b) for b in numbers(r.metrics.get("ece_bins") for r in runs)})
    if not bins:
        return "equal-width confidence bins"
    return f"{'/'.join(map(str, bins))} equal-width confidence bins"


def gradients_note(runs: list[Run]) -> str:
    """Which norm, bounds and batch count Table 5 used (as the gradient JSON records them)."""
    grads = [r.gradients for r in runs if r.gradients]
    kind = {"output": "the gradient w.r.t. each layer's output (the notebooks' choice)",
            "parameter": "the gradient w.r.t. each layer's parameters"}
    norms = sorted({str(g["ghs_norm"]) for g in grads if g.get("ghs_norm") is not None})
    what = " / ".join(kind.get(n, n) for n in norms) or "unknown"
    bounds = [g.get("bounds") or [None, None] for g in grads]
    lows, highs = numbers(b[0] for b in bounds), numbers(b[1] for b in bounds)
    healthy = (f"healthy when {min(lows):g} < norm < {max(highs):g} (vanishing below, "
               "exploding above)" if lows and highs else "bounds unknown")
    batches = "/".join(map(str, sorted({int(b) for b in numbers(g.get("batches")
                                                                  for g in grads)}))) or "?"
    splits = " / ".join(sorted({_gradient_split(g) for g in grads}))
    return (f"Norm: L2 norm of {what}, averaged over {batches} {splits} batches of the trained "
            f"model; {healthy}; GHS = healthy / analysed layers. Dead: layers whose gradient is "
            "exactly zero on every analysed batch (counted among the vanishing). Avg norm, "
            "range and std are taken over the analysed layers.")


def _gradient_split(gradients: dict) -> str:
    """Which split the gradient analysis ran on: recorded as `split` (and at the head of its
    `data` line: 'test split, first 20 batches ...'); training for files that say neither."""
    split = gradients.get("split") or str(gradients.get("data", "")).split(" split", 1)[0]
    return {"train": "training", "val": "validation", "test": "test-split"}.get(split, "training")


RECIPES = {"corrected": "this project's protocol",
           "notebooks": "the authors' notebooks' protocol, per dataset"}


def recipe_line(setting: dict) -> str:
    """Which recipe produced the numbers below (docs/deviations.md says what each does)."""
    recipe = str(setting.get("recipe", "corrected"))
    what = RECIPES.get(recipe, "")
    return (f"Recipe: **{recipe}**" + (f" ({what})" if what else "")
            + " — every number below comes from runs made with it (docs/deviations.md).")


POOL_NOTE = ("Cells: mean ± sample std over seeds (n = seeds) when several ran; '–': not run. "
             f"Δ: difference from ResNet-18 on the same dataset and seeds with its "
             f"{LEVEL:.0%} confidence interval (t-interval of the per-seed differences), shown "
             f"when ≥ {MIN_PAIRED} seeds ran for both; an interval that spans 0 is noise.")


def _section(number: int, study: Study, setting: dict, cols: list[Variant],
             bold_best: bool) -> list[str] | None:
    """A table's lines under its title; None for Table 6 when it has no row (too few seeds)."""
    runs = [r for r in study.runs if r.setting == setting]
    if number == 1:
        best = "; best model per dataset in bold" if bold_best else ""
        return [f"Share of test images whose highest-scoring class is right{best}.", "",
                _top1(study, setting, cols, bold_best)]
    if number == 2:
        return ["Top-3/top-5 accuracy: the true class is among the 3/5 highest scores (not shown "
                "when a dataset has that few classes or fewer). F1 is the macro average over "
                f"classes. ECE (expected calibration error) uses {ece_bins_note(runs)}: the "
                "size-weighted mean gap between confidence and accuracy per bin; lower is "
                "better calibrated.", "", _extended(study, setting, cols)]
    if number == 3:
        return ["Macro (M): unweighted mean over classes; weighted (W): weighted by class "
                "frequency in the test split.", "", _prf(study, setting, cols)]
    if number == 4:
        return [f"Training minus validation accuracy {gap_epoch_note(runs)}, in percentage "
                "points; large positive values mean over-fitting. Training accuracy is measured "
                "during the epoch, with augmentation.", "", _gap(study, setting, cols)]
    if number == 6:
        paired = _paired(study, setting, cols)
        if paired is None:
            return None
        return [f"Each model minus ResNet-18 on the same dataset and seeds: mean of the per-seed "
                f"differences [{LEVEL:.0%} t-interval]; an interval that spans 0 does not tell "
                "the two apart. Top-1 and F1 higher is better; ECE, gap (over-fitting) lower is "
                "better; a negative best epoch converged sooner.", "", paired]
    if not any(r.gradients for r in runs):
        return ["No gradient files (metrics/<dataset>/<model>.gradients.json) in these runs: "
                "run the `gradients` stage."]
    return [gradients_note(runs), "", _gradients(study, setting, cols)]


def gap_epoch_note(runs: list[Run]) -> str:
    """Which epoch Table 4's rows hold: the one whose weights were kept (train.weights)."""
    kept = {((r.provenance or {}).get("train_resolved") or {}).get("weights") for r in runs}
    if kept == {"last"}:
        return ("at the last epoch (whose weights are kept: train.weights last, the notebooks' "
                "recipe), not at the best one")
    if kept == {"best"}:
        return "at the epoch with the best validation accuracy (whose weights are kept)"
    return "at the epoch whose weights each run kept (the best one's, or the last one's)"


def markdown(study: Study, tables: Iterable[int] = TABLES, *, paper_columns: bool = True,
             bold_best: bool = False) -> str:
    """The tables of every setting, each with a line on what it shows. paper_columns: show the
    paper's four variants even where they did not run; bold_best: bold Table 1's best."""
    parts = []
    for s, setting in enumerate(study.settings):
        if len(study.settings) > 1:
            parts += _setting_heading(s + 1, study.setting_items[s])
        parts += [recipe_line(setting), ""]
        cols = study.columns(setting, paper_columns)
        for number in tables:
            lines = _section(number, study, setting, cols, bold_best)
            if lines is not None:
                parts += [f"## {TABLES[number].title}", "", *lines, ""]
    if not study.runs:
        parts += ["No runs found: no metrics/<dataset>/<model>.json in the workspace, the "
                  "experiments or the revisions asked for.", ""]
    parts.append(POOL_NOTE)
    return "\n".join(parts) + "\n"


def csv(study: Study, tables: Iterable[int] = TABLES) -> str:
    metrics = list(dict.fromkeys(m for t in tables for m in TABLES[t].metrics))
    return study.tidy(metrics).to_csv(index=False)
