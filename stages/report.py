"""Across datasets: plots/comparison.png, plots/results.md (Tables 1-5, built by
gradattn.reporting.table as `gradattn table` builds them) and metrics/summary.json, of the
workspace's runs, read from the plot stage's digests plotdata/<dataset>/runs.json (why the
digests: gradattn.reporting.report). The work is gradattn.reporting.report's.
"""

from gradattn.core.settings import load_section
from gradattn.core.stage import stage_args, stage_entry


def main() -> None:
    stage_args()
    # Imported once the arguments are checked: a wrong call answers at once (no pandas).
    from gradattn.reporting.report import make_report

    print(make_report(load_section("data").datasets))


if __name__ == "__main__":
    stage_entry(main)
