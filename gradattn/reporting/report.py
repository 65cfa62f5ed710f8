"""results.md and metrics/summary.json of the workspace's runs.

The tables are gradattn.reporting.table's (the same builder as `gradattn table`), laid out for one
run: only the models that ran, the best top-1 per dataset in bold.
"""

from __future__ import annotations

import math

from gradattn.reporting import table
from gradattn.reporting.stats import mean_std

# The headline numbers of a run: metrics/summary.json holds only these, and it is the one DVC
# metrics file, so `dvc exp show` has five columns per dataset and model (the rest of a run's
# numbers are in its metrics/<dataset>/<model>{.json,.gradients.json} and `gradattn table`).
SUMMARY_KEYS = ("top1", "f1_macro", "ece", "ghs", "epochs")
COUNT_KEYS = ("epochs",)


def results_markdown(study: table.Study, *, title: str = "Results of this run",
                     context: list[str] | None = None,
                     figures: list[tuple[str, str]] | None = None) -> str:
    """results.md: a short intro, Tables 1-6 with a line each on what they show, figures."""
    datasets = ", ".join(dict.fromkeys(d for s in study.settings for d in study.datasets(s)))
    labels = ", ".join(study.label(*v) for v in study.variants)
    parts = [
        f"# {title}",
        "",
        f"Models **{labels}** trained and evaluated on **{datasets}**. Tables are numbered as in "
        "the GradAttn paper (Table 3 added for completeness). Accuracies are on each dataset's "
        "test split unless stated.",
    ]
    if context:
        parts += ["", *[f"- {line}" for line in context]]
    parts += ["", table.markdown(study, paper_columns=False, bold_best=True).rstrip()]
    if figures:
        parts += ["", "## Figures", "", *[f"- [{text}]({path})" for text, path in figures]]
    return "\n".join(parts) + "\n"


def _round(value: float, digits: int = 4):
    if math.isnan(value):
        return None
    if abs(value) < 0.01 and value != 0:
        return float(f"{value:.4g}")  # small norms keep 4 significant digits
    return round(value, digits)


def summary_entries(study: table.Study) -> dict[str, dict]:
    """metrics/summary.json: {"<dataset>/<model>": {top1, f1_macro, ece, ghs, epochs}}, flat,
    rounded, so `dvc exp show` and `dvc metrics diff` stay readable. One entry per (dataset,
    model); if several runs share one, their mean."""
    groups: dict[str, list] = {}
    for run in study.runs:
        groups.setdefault(f"{run.dataset}/{run.model}", []).append(run)
    out: dict[str, dict] = {}
    for key, runs in groups.items():
        entry = {}
        for name in SUMMARY_KEYS:
            n, mean, _ = mean_std(r.value(name) for r in runs)
            if n:
                entry[name] = int(mean) if name in COUNT_KEYS and n == 1 else _round(mean)
        out[key] = entry
    return out
