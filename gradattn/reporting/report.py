"""results.md and metrics/summary.json of the workspace's runs, and the report stage that
writes them with plots/comparison.png (`make_report`).

The tables are gradattn.reporting.table's (the same builder as `gradattn table`), laid out for one
run: only the models that ran, the best top-1 per dataset in bold.

The runs' files come from the plot stage's digests plotdata/<dataset>/runs.json (copies of
metrics/<dataset>/<model>{.json,.gradients.json,.history.json}, keyed by path): the stage
spans datasets, so it must depend on one folder that holds every dataset's inputs and none
of its own outputs, and metrics/ holds summary.json.
"""

from __future__ import annotations

import math
from pathlib import Path

from gradattn.core import paths
from gradattn.core.errors import GradattnError
from gradattn.core.io import read_json, write_json, write_with
from gradattn.core.settings import load_resolved
from gradattn.reporting import table
from gradattn.reporting.experiments import read_workspace, runs_of
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


SUMMARY = paths.METRICS / "summary.json"
RESULTS = paths.PLOTS / "results.md"
COMPARISON = paths.PLOTS / "comparison.png"

REPRODUCIBLE = ("Reproducible: bit for bit on the same machine with the same library versions "
                "(the environment above; `dvc repro -f` gives these very numbers); on another "
                "CPU or GPU, thread count or torch version only within seed noise (the winner "
                "of a close pair can flip), so compare runs made in one environment.")
SMOKE = (" This study on the bundled fashionmnist-mini (3,000 training images, at most {epochs} "
         "epoch(s), one seed) is a smoke test of the pipeline, not evidence about the models: "
         "the studies on real data, with several seeds, are in `results/` (docs/findings.md "
         "says what they show).")


def _short(commit) -> str:
    commit = str(commit)
    return commit[:12] + ("+modified" if commit.endswith("+modified") else "")


def environment_line(files: dict, study: table.Study) -> str:
    """Where the runs ran, as their train stages recorded it (gradattn.core.records)."""
    seen = []
    for r in study.runs:
        record = files.get(paths.run_record_file(r.dataset, r.model, "train").as_posix()) or {}
        env = record.get("environment")
        if not env:
            continue
        where = env.get("gpu") or f"{env.get('cpu')}, {env.get('threads')} threads"
        line = (f"{where}; Python {env.get('python')}, torch {env.get('torch')}, torchvision "
                f"{env.get('torchvision')}, numpy {env.get('numpy')}; {env.get('precision')}, "
                f"fast path {env.get('fast')}; gradattn {_short(env.get('gradattn_commit'))}")
        if line not in seen:
            seen.append(line)
    if not seen:
        return ("Environment: not recorded (runs older than environment records; "
                "`dvc repro -f train` records it).")
    return "Environment (train stage): " + " | ".join(seen) + "."


def figure_links(study: table.Study) -> list[tuple[str, str]]:
    """(description, path relative to plots/) of every figure, for results.md."""
    links = [("Training curves and test top-1 of every dataset (paper Figs. 3–4)",
              COMPARISON.name)]
    for dataset in dict.fromkeys(r.dataset for r in study.runs):
        links += [(f"{dataset}: sample images per class (Fig. 2)", f"{dataset}/overview.png"),
                  (f"{dataset}: loss and accuracy curves", f"{dataset}/curves.png")]
        for r in (r for r in study.runs if r.dataset == dataset):
            m, label = r.model, study.label(r.model, r.options)
            for what, file in (("per-layer gradient norms", f"gradients_{m}.png"),
                               ("gradient norms over epochs (Fig. 5)",
                                f"gradients_over_epochs_{m}.png"),
                               ("reliability diagram", f"reliability_{m}.png"),
                               ("confusion matrix", f"confusion_{m}.png"),
                               ("attention over the taps", f"attention_{m}.png")):
                if (paths.PLOTS / dataset / file).exists():
                    links.append((f"{dataset}, {label}: {what}", f"{dataset}/{file}"))
    return links


def read_digests(datasets: list[str], plotdata: Path) -> dict:
    """The runs' files, path -> content, from the plot stage's digest of each dataset."""
    files = {}
    for dataset in datasets:
        digest = plotdata / dataset / "runs.json"
        if not digest.exists():
            raise GradattnError(f"{digest} not found: run `dvc repro plot@{dataset}` first")
        files |= read_json(digest)
    return files


def context_lines(datasets: list[str], files: dict, study: table.Study) -> list[str]:
    """results.md's opening lines: the protocol as the recipe resolved it (configure wrote
    each dataset's data protocol), the data, where the runs ran, what is reproducible."""
    t = load_resolved("train", datasets[0])
    protocols = {d: read_json(paths.prepare_config(d))["protocol"] for d in datasets}
    return [
        f"Protocol: {'AdamW' if t.optimizer == 'adamw' else 'Adam'} (lr {t.lr:g}, "
        f"{'decoupled ' if t.optimizer == 'adamw' else ''}weight decay {t.weight_decay:g}), "
        f"batch {t.batch_size}, at most {t.max_epochs} epochs with early stopping (patience "
        f"{t.early_stopping_patience}) on validation accuracy, LR plateau rule {t.plateau}, "
        f"the {t.weights} epoch's weights evaluated; seed {t.seed}; one run per dataset and "
        "model.",
        "Data: " + "; ".join(
            f"{d}: {p['split']} split (seed {p['split_seed']}), {p['augment']} augmentation, "
            f"{p['normalise']} normalisation"
            + (", with the notebooks' double-normalisation defect" if p["legacy_defect"] else "")
            for d, p in protocols.items()) + ".",
        environment_line(files, study),
        REPRODUCIBLE + (SMOKE.format(epochs=t.max_epochs)
                        if set(datasets) == {"fashionmnist-mini"} else ""),
        "Per-run numbers: `metrics/<dataset>/<model>.json` (evaluate) and "
        "`metrics/<dataset>/<model>.gradients.json` (gradients); the headline (top-1, macro "
        "F1, ECE, GHS, epochs) in `metrics/summary.json`, the one DVC metrics file.",
    ]


def make_report(datasets: list[str]) -> str:
    """plots/comparison.png, plots/results.md and metrics/summary.json of the workspace's runs
    on `datasets` (the report stage); returns the stage's one-line summary."""
    # Imported here: results_markdown's other callers need no matplotlib.
    from gradattn.reporting import plots as P

    files = read_digests(datasets, P.PLOTDATA)
    study = table.Study(runs_of("workspace", read_workspace(Path("."))[0], files.get))

    histories, top1 = {}, {}
    for r in study.runs:
        label = study.label(r.model, r.options)
        histories.setdefault(r.dataset, {})[label] = files.get(
            paths.history_file(r.dataset, r.model).as_posix()) or []
        top1.setdefault(r.dataset, {})[label] = r.metrics.get("top1")
    P.plot_comparison(histories, top1, COMPARISON)

    text = results_markdown(study, context=context_lines(datasets, files, study),
                            figures=figure_links(study))
    write_with(RESULTS, lambda tmp: tmp.write_text(text), suffix=".md")
    write_json(SUMMARY, summary_entries(study))
    best = []
    for dataset in top1:
        r = max((r for r in study.runs if r.dataset == dataset),
                key=lambda r: r.metrics.get("top1") or 0)
        best.append(f"{dataset}: {study.label(r.model, r.options)} "
                    f"{100 * (r.metrics.get('top1') or 0):.2f}%")
    return (f"report: {len(study.runs)} runs over {len(top1)} dataset(s) -> {RESULTS}, "
            f"{COMPARISON}, {SUMMARY} (best top-1 — {', '.join(best)})")
