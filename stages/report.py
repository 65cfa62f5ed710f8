"""Across datasets: plots/comparison.png, plots/results.md (Tables 1-5, built by
gradattn.reporting.table as `gradattn table` builds them) and metrics/summary.json, of the
workspace's runs.

The runs' files come from the plot stage's digests plotdata/<dataset>/runs.json (copies of
metrics/<dataset>/<model>{.json,.gradients.json,.history.json}, keyed by path): the stage
spans datasets, so it must depend on one folder that holds every dataset's inputs and none
of its own outputs, and metrics/ holds summary.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gradattn.core import paths
from gradattn.core.errors import GradattnError
from gradattn.core.io import read_json, write_json, write_with
from gradattn.core.settings import load_resolved, load_section
from gradattn.core.stage import run, stage_args
from gradattn.reporting.experiments import read_workspace, runs_of

if TYPE_CHECKING:
    from gradattn.reporting.table import Study

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


def environment_line(files: dict, study: Study) -> str:
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


def figure_links(study: Study) -> list[tuple[str, str]]:
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


def main() -> None:
    stage_args()
    # Imported once the arguments are checked: a wrong call answers at once (no pandas).
    from gradattn.reporting import plots as P
    from gradattn.reporting.report import results_markdown, summary_entries
    from gradattn.reporting.table import Study

    data = load_section("data")
    files = {}
    for dataset in data.datasets:
        digest = P.PLOTDATA / dataset / "runs.json"
        if not digest.exists():
            raise GradattnError(f"{digest} not found: run `dvc repro plot@{dataset}` first")
        files |= read_json(digest)
    study = Study(runs_of("workspace", read_workspace(Path("."))[0], files.get))

    histories, top1 = {}, {}
    for r in study.runs:
        label = study.label(r.model, r.options)
        histories.setdefault(r.dataset, {})[label] = files.get(
            paths.history_file(r.dataset, r.model).as_posix()) or []
        top1.setdefault(r.dataset, {})[label] = r.metrics.get("top1")
    P.plot_comparison(histories, top1, COMPARISON)

    # The protocol as the recipe resolved it (configure wrote each dataset's data protocol).
    t = load_resolved("train", data.datasets[0])
    protocols = {d: read_json(paths.prepare_config(d))["protocol"] for d in data.datasets}
    context = [
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
                        if set(data.datasets) == {"fashionmnist-mini"} else ""),
        "Per-run numbers: `metrics/<dataset>/<model>.json` (evaluate) and "
        "`metrics/<dataset>/<model>.gradients.json` (gradients); the headline (top-1, macro "
        "F1, ECE, GHS, epochs) in `metrics/summary.json`, the one DVC metrics file.",
    ]
    text = results_markdown(study, context=context, figures=figure_links(study))
    write_with(RESULTS, lambda tmp: tmp.write_text(text), suffix=".md")
    write_json(SUMMARY, summary_entries(study))
    best = []
    for dataset in top1:
        r = max((r for r in study.runs if r.dataset == dataset),
                key=lambda r: r.metrics.get("top1") or 0)
        best.append(f"{dataset}: {study.label(r.model, r.options)} "
                    f"{100 * (r.metrics.get('top1') or 0):.2f}%")
    print(f"report: {len(study.runs)} runs over {len(top1)} dataset(s) -> {RESULTS}, "
          f"{COMPARISON}, {SUMMARY} (best top-1 — {', '.join(best)})")


if __name__ == "__main__":
    run(main)
