"""Figures of one dataset -> plots/<dataset>/*.png, DVC plot data and the digest of its runs
-> plotdata/<dataset>/ (the report stage reads the digest; see stages/report.py).

Reads files only: metrics/<dataset>/ and predictions/<dataset>/ (which the evaluate stage
writes with what the figures need of the models and data; see gradattn.analysis.evaluation).
The work is gradattn.reporting.figures'."""

from gradattn.core.settings import parse_models, read_params
from gradattn.core.stage import stage_args, stage_entry


def main() -> None:
    (dataset,) = stage_args("dataset")
    # Imported once the arguments are checked: a wrong call answers at once (no matplotlib).
    from gradattn.reporting.figures import plot_dataset

    models = parse_models(read_params())
    print(plot_dataset(dataset, models))


if __name__ == "__main__":
    stage_entry(main)
