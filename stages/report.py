"""Across datasets: plots/comparison.png, plots/results.md (Tables 1-5) and
metrics/summary.json, from the plot stage's digests plotdata/<dataset>/runs.json.

(A stage of its own because it spans datasets: it must depend on one folder that holds
every dataset's inputs and none of its own outputs; `metrics/` holds summary.json and
`plots/` holds results.md, so the digests live in `plotdata/`.)
"""

from gradattn import paths
from gradattn import plots as P
from gradattn.config import load_params
from gradattn.errors import GradattnError
from gradattn.io import read_json, write_json, write_with
from gradattn.report import results_markdown, runs_frame, summary_entries
from gradattn.stage import run

SUMMARY = paths.METRICS / "summary.json"
RESULTS = P.PLOTS / "results.md"
COMPARISON = P.PLOTS / "comparison.png"


def figure_links(records: list[dict]) -> list[tuple[str, str]]:
    """(description, path relative to plots/) of every figure, for results.md."""
    links = [("Training curves and test top-1 of every dataset (paper Figs. 3–4)",
              COMPARISON.name)]
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        links += [(f"{dataset}: sample images per class (Fig. 2)", f"{dataset}/overview.png"),
                  (f"{dataset}: loss and accuracy curves", f"{dataset}/curves.png")]
        for r in (r for r in records if r["dataset"] == dataset):
            m, label = r["model"], r["label"]
            for what, file in (("per-layer gradient norms", f"gradients_{m}.png"),
                               ("gradient norms over epochs (Fig. 5)",
                                f"gradients_over_epochs_{m}.png"),
                               ("reliability diagram", f"reliability_{m}.png"),
                               ("confusion matrix", f"confusion_{m}.png"),
                               ("attention over the taps", f"attention_{m}.png")):
                if (P.PLOTS / dataset / file).exists():
                    links.append((f"{dataset}, {label}: {what}", f"{dataset}/{file}"))
    return links


def main() -> None:
    params = load_params()
    records = []
    for dataset in params.data.datasets:
        digest = P.PLOTDATA / dataset / "runs.json"
        if not digest.exists():
            raise GradattnError(f"{digest} not found: run `dvc repro plot@{dataset}` first")
        records += [r for r in read_json(digest) if r["model"] in params.models]
    df = runs_frame(records)

    histories = {}
    top1 = {}
    for r in records:
        histories.setdefault(r["dataset"], {})[r["label"]] = r["history"]
        top1.setdefault(r["dataset"], {})[r["label"]] = r["metrics"].get("top1")
    P.plot_comparison(histories, top1, COMPARISON)

    t = params.train
    context = [
        f"Protocol: Adam (lr {t.lr:g}, weight decay {t.weight_decay:g}), batch {t.batch_size}, "
        f"at most {t.max_epochs} epochs with early stopping (patience "
        f"{t.early_stopping_patience}) on validation accuracy, best weights restored; "
        f"seed {t.seed}; one run per dataset and model.",
        f"Data split: {params.data.split}"
        + (" (with the notebooks' preprocessing defect)" if params.data.legacy_preprocessing
           else "") + ".",
        "Per-run numbers: `metrics/<dataset>/<model>.json` (evaluate) and "
        "`metrics/<dataset>/<model>.gradients.json` (gradients); all of them flat in "
        "`metrics/summary.json`.",
    ]
    text = results_markdown(df, context=context, figures=figure_links(records))
    write_with(RESULTS, lambda tmp: tmp.write_text(text), suffix=".md")
    summary = summary_entries(df)
    write_json(SUMMARY, summary)
    best = ", ".join(f"{d}: {g.loc[g['top1'].idxmax(), 'label']} {100 * g['top1'].max():.2f}%"
                     for d, g in df.groupby("dataset", sort=False) if g["top1"].notna().any())
    print(f"report: {len(records)} runs over {df['dataset'].nunique()} dataset(s) -> {RESULTS}, "
          f"{COMPARISON}, {SUMMARY} (best top-1 — {best})")


if __name__ == "__main__":
    run(main)
